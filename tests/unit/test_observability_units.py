"""Request ids, the JSON log format and the local token buckets, without a server."""

from __future__ import annotations

import io
import json
import logging

import pytest

from server.admission.layer import append_bytes
from server.admission.local import LocalQuota
from server.admission.quota import Rate, Refusal
from server.observability.context import accept_request_id, request_id_var
from server.observability.logs import configure_logging


@pytest.mark.parametrize("given", ["abc", "A-1_b.c:d@e/f+g=", "x" * 128])
def test_safe_request_ids_are_kept(given: str) -> None:
    assert accept_request_id(given) == given


@pytest.mark.parametrize("given", [None, "", "x" * 129, "a b", "a\nb", "a;b", "é"])
def test_unsafe_request_ids_are_replaced(given: str | None) -> None:
    got = accept_request_id(given)
    assert got != given
    assert len(got) == 32 and int(got, 16) >= 0


def test_json_lines_carry_request_id_extra_fields_and_exceptions() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    out = io.StringIO()
    try:
        configure_logging("INFO", "json", stream=out)
        token = request_id_var.set("rid-1")
        try:
            logging.getLogger("t.one").info("hello %s", "there", extra={"method": "GetHistory", "n": 3})
            try:
                raise ValueError("boom")
            except ValueError:
                logging.getLogger("t.two").exception("failed")
        finally:
            request_id_var.reset(token)
        logging.getLogger("t.three").warning("outside")
        logging.getLogger("t.four").debug("below the level")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    first, second, third = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["msg"] == "hello there"
    assert (first["level"], first["logger"], first["request_id"]) == ("INFO", "t.one", "rid-1")
    assert (first["method"], first["n"]) == ("GetHistory", 3)
    assert first["ts"].endswith("+00:00")
    assert second["request_id"] == "rid-1"
    assert "ValueError: boom" in second["exc"]
    assert "request_id" not in third


def test_text_lines_show_the_request_id() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    out = io.StringIO()
    try:
        configure_logging("INFO", "text", stream=out)
        token = request_id_var.set("rid-2")
        try:
            logging.getLogger("t.text").info("inside")
        finally:
            request_id_var.reset(token)
        logging.getLogger("t.text").info("outside")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    inside, outside = out.getvalue().splitlines()
    assert inside.endswith("INFO t.text [rid-2]: inside")
    assert outside.endswith("INFO t.text [-]: outside")


def test_rate_defaults() -> None:
    assert Rate.of(0, 10) is None
    assert Rate.of(5, 0) == Rate(5, 5)
    assert Rate.of(0.2, 0) == Rate(0.2, 1)  # at least one request fits
    assert Rate.of(5, 20) == Rate(5, 20)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_local_bucket_refills_at_its_rate() -> None:
    clock = Clock()
    quota = LocalQuota(Rate(2, 3), None, clock)
    assert [quota.take("w", 0) for _ in range(3)] == [None, None, None]
    assert quota.take("w", 0) == Refusal("requests", 0.5)
    assert quota.take("other", 0) is None  # per workspace
    clock.now += 0.5
    assert quota.take("w", 0) is None
    clock.now += 100  # never above the burst
    assert [quota.take("w", 0) for _ in range(4)] == [None, None, None, Refusal("requests", 0.5)]


def test_local_buckets_charge_all_or_nothing_and_carry_a_debt() -> None:
    clock = Clock()
    quota = LocalQuota(Rate(10, 2), Rate(100, 1000), clock)
    assert quota.take("w", 3000) is None  # above the burst: passes on a full bucket, leaves 2000 of debt
    refusal = quota.take("w", 1)
    assert refusal is not None and refusal.kind == "bytes"
    assert refusal.retry_after_s == pytest.approx(20.01)
    # The refused call took no request token: two more requests (without bytes) still fit.
    assert quota.take("w", 0) is None
    assert quota.take("w", 0) == Refusal("requests", 0.1)
    clock.now += 20.01
    assert quota.take("w", 1) is None


def test_local_buckets_forget_full_ones_past_the_prune_size(monkeypatch: pytest.MonkeyPatch) -> None:
    import server.admission.local as local

    monkeypatch.setattr(local, "_PRUNE_AT", 10)
    clock = Clock()
    quota = LocalQuota(Rate(1, 1), None, clock)
    for i in range(11):
        assert quota.take(f"w{i}", 0) is None
    assert len(quota._buckets) == 11  # none is full again yet, so none is dropped; the next prune is at 22
    clock.now += 5
    for i in range(12):
        assert quota.take(f"late{i}", 0) is None
    # The prune at 23 buckets dropped every full one (the w's), and kept the fresh debts.
    assert set(quota._buckets) == {(f"late{i}", 0) for i in range(12)}
    assert quota.take("late0", 0) == Refusal("requests", 1.0)


def test_append_bytes_counts_utf8() -> None:
    class M:
        def __init__(self, content: str) -> None:
            self.content = content

    class R:
        messages = [M("ab"), M("é€")]

    assert append_bytes(R()) == 2 + 2 + 3
    assert append_bytes(object()) == 0


def test_local_buckets_stay_bounded_when_many_workspaces_keep_a_debt() -> None:
    from server.admission import local

    now = [0.0]
    quota = local.LocalQuota(Rate(per_s=1.0, burst=1.0), None, clock=lambda: now[0])
    for i in range(local._MAX_BUCKETS + 5_000):
        quota.take(f"ws{i}", 0)  # each takes its one token: a bucket that is not full, so not pruned
    assert len(quota._buckets) <= local._MAX_BUCKETS
