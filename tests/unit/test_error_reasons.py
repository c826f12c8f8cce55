"""Every server error class has one stable ErrorInfo reason in the chatmem domain, listed in the README."""

from __future__ import annotations

import inspect
import pathlib

from google.rpc import error_details_pb2

from server import errors

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _instance(cls: type[errors.ChatmemError]) -> errors.ChatmemError:
    params = inspect.signature(cls).parameters
    if "violations" in params:
        return cls([errors.FieldViolation("thread_id", "is empty")])  # type: ignore[call-arg]
    if "message_id" in params:
        return cls(0, "m1", "t1")  # type: ignore[call-arg]
    if "thread_id" in params:
        return cls("t1")  # type: ignore[call-arg]
    if "field" in params:
        return cls("new_thread_id", "exists")  # type: ignore[call-arg]
    if "retry_after_s" in params and params["retry_after_s"].default is inspect.Parameter.empty:
        return cls("refused", 0.5)  # type: ignore[call-arg]
    return cls("boom")


def _every_class() -> list[type[errors.ChatmemError]]:
    found, todo = [], [errors.ChatmemError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return [c for c in found if c.__module__ == errors.__name__ and c is not errors.ChatmemError]


def test_every_error_class_sends_its_reason_first_in_the_details() -> None:
    classes = _every_class()
    assert len(classes) >= 15
    for cls in classes:
        status = _instance(cls).to_status()
        info = error_details_pb2.ErrorInfo()
        assert status.details[0].Unpack(info), cls.__name__
        assert info.reason == cls.reason and info.domain == "chatmem.dev", cls.__name__
        assert status.code == cls.code


def test_reasons_are_unique_upper_snake_and_each_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    reasons = [cls.reason for cls in _every_class()]
    assert len(reasons) == len(set(reasons)) == len(errors.REASONS)
    for reason in reasons:
        assert reason.isupper() and reason.replace("_", "").isalpha() and len(reason) <= 63, reason
        assert f"| `{reason}` |" in readme, f"README's reasons table misses {reason}"


def test_a_subclass_that_reuses_a_reason_is_refused() -> None:
    try:

        class Copy(errors.NotFoundError):
            reason = "THREAD_NOT_FOUND"

    except TypeError as exc:
        assert "reuses the reason THREAD_NOT_FOUND" in str(exc)
    else:
        raise AssertionError("a duplicate reason was accepted")


def test_thread_not_found_and_quota_carry_metadata_and_the_retry_hint_follows() -> None:
    status = errors.ThreadNotFoundError("t9").to_status()
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    assert dict(info.metadata) == {"thread_id": "t9"}
    quota = errors.QuotaExceededError("slow down", 0.25, {"limit": "requests"}).to_status()
    retry = error_details_pb2.RetryInfo()
    assert quota.details[1].Unpack(retry) and retry.retry_delay.ToMilliseconds() == 250
