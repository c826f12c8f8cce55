"""Page tokens."""

from __future__ import annotations

import pytest

from server.errors import InvalidArgumentError
from server.services import pagination


def test_round_trip() -> None:
    token = pagination.encode("messages", "w/t/0", {"next": 42})
    assert pagination.require_int(pagination.decode(token, "messages", "w/t/0"), "next") == 42


@pytest.mark.parametrize(
    ("token", "kind", "scope"),
    [
        (pagination.encode("messages", "w/t/0", {"next": 1}), "messages", "w/other/0"),
        (pagination.encode("messages", "w/t/0", {"next": 1}), "threads", "w/t/0"),
        ("!!!", "messages", "w/t/0"),
        ("e30", "messages", "w/t/0"),
        ("x" * 2000, "messages", "w/t/0"),
    ],
)
def test_foreign_or_damaged_tokens_are_invalid_argument(token: str, kind: str, scope: str) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        pagination.decode(token, kind, scope)
    assert err.value.violations[0].field == "page_token"


@pytest.mark.parametrize("value", [-1, "3", True, 2**63, None])
def test_damaged_positions_are_refused(value: object) -> None:
    with pytest.raises(InvalidArgumentError):
        pagination.require_int({"next": value}, "next")
