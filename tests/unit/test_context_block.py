"""The GetContext prompt block."""

from __future__ import annotations

import pytest

from server.services.context_block import render
from server.storage.models import Role

MESSAGES = [(Role.USER, "hello"), (Role.ASSISTANT, "hi there"), (Role.USER, "what's up?")]


def test_the_seed_format() -> None:
    block, n, p = render(MESSAGES, {"name": "Ada", "lang": "fr"})
    assert block == (
        "Previous conversation:\nuser: hello\nassistant: hi there\nuser: what's up?\n\n"
        "User preferences:\nlang: fr\nname: Ada"
    )
    assert (n, p) == (3, 2)


def test_sections_are_left_out_when_empty() -> None:
    assert render([], {}) == ("", 0, 0)
    assert render([], {"a": "b"})[0] == "User preferences:\na: b"
    assert render(MESSAGES[:1], {})[0] == "Previous conversation:\nuser: hello"


@pytest.mark.parametrize("budget", range(1, 140, 3))
def test_the_budget_is_never_exceeded_and_lines_are_never_cut(budget: int) -> None:
    block, n, _p = render(MESSAGES, {"name": "Ada"}, max_chars=budget)
    assert len(block) <= budget
    full_lines = {"user: hello", "assistant: hi there", "user: what's up?", "name: Ada"}
    for line in block.splitlines():
        assert line in full_lines or line.endswith(":") or line == ""
    if n:
        assert block.rstrip().split("\n\n")[0].endswith(MESSAGES[-1][1])  # newest kept first


@pytest.mark.parametrize("prefs", [{}, {"name": "Ada"}], ids=["messages", "with-preferences"])
@pytest.mark.parametrize("kept", [1, 2, 3])
def test_a_block_of_exactly_max_chars_fits_and_one_less_does_not(prefs: dict[str, str], kept: int) -> None:
    block, n, _p = render(MESSAGES[-kept:], prefs)
    assert render(MESSAGES, prefs, max_chars=len(block)) == (block, n, len(prefs))
    assert render(MESSAGES, prefs, max_chars=len(block) - 1)[1] == kept - 1
