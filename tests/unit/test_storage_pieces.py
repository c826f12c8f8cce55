"""Keys, codec, validation and settings: the small pieces storage and services share."""

from __future__ import annotations

import pathlib

import pytest

from chatmem.v1 import resources_pb2, thread_memory_service_pb2
from server.config import LimitSettings, Settings
from server.errors import InvalidArgumentError
from server.storage.codec import (
    decode_framed,
    encode_message,
    encode_messages,
    frame_item,
    frame_repeated,
    split_framed,
)
from server.storage.models import Role, StoredMessage
from server.storage.redis.keys import BUCKETS, KeySpace, bucket_of
from server.validation import DEFAULT_WORKSPACE, Checker


def test_thread_keys_share_one_stable_hash_tag() -> None:
    k = KeySpace().thread("ws", "thread-1")
    assert k.msgs.split(":t:")[0] == k.meta.split(":t:")[0] == f"chatmem:{{b:{bucket_of('ws', 'thread-1')}}}"
    assert bucket_of("ws", "thread-1") == bucket_of("ws", "thread-1")
    assert {bucket_of("ws", f"t{i}") for i in range(5000)} == set(range(BUCKETS))
    assert KeySpace("other").preferences("ws", "u").startswith("other:{b:")


def test_framed_messages_parse_as_the_original_list() -> None:
    stored = [
        StoredMessage(i, Role.ASSISTANT, "é" * i * 40, "n", {"k": str(i)}, 1_700_000_000_123_456) for i in range(1, 30)
    ]
    encoded = encode_messages("w", "t", stored)
    resp = thread_memory_service_pb2.GetHistoryResponse.FromString(frame_repeated(1, encoded))
    assert [m.SerializeToString() for m in resp.messages] == encoded
    first = resp.messages[0]
    assert (first.seq, first.role, first.create_time.seconds, first.create_time.nanos) == (
        1, resources_pb2.ROLE_ASSISTANT, 1_700_000_000, 123_456_000,
    )  # fmt: skip


@pytest.mark.parametrize("good", ["a", "A-1", "user@example.com", "ns:thread.7_x", "0" * 128])
def test_good_ids_pass(good: str) -> None:
    check = Checker(LimitSettings())
    check.ident("thread_id", good)
    check.done()


@pytest.mark.parametrize("bad", ["", "-a", "a b", "a/b", "{x}", "x" * 129, "ü", "a\n", "a*"])
def test_bad_ids_fail(bad: str) -> None:
    check = Checker(LimitSettings())
    check.ident("thread_id", bad)
    with pytest.raises(InvalidArgumentError) as err:
        check.done()
    assert err.value.violations[0].field == "thread_id"


def test_empty_workspace_is_the_default_one() -> None:
    assert Checker(LimitSettings()).workspace("") == DEFAULT_WORKSPACE


def test_settings_use_the_seed_environment_names(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.setenv("REDIS__HOST", "cache.internal")
    monkeypatch.setenv("REDIS__PORT", "6380")
    monkeypatch.setenv("REDIS__PASSWORD", "p@ss")
    monkeypatch.setenv("REDIS__DB", "2")
    monkeypatch.setenv("MEMORY__MAX_THREAD_MESSAGES", "20")
    monkeypatch.setenv("MEMORY__THREAD_TTL_HOURS", "2")
    monkeypatch.setenv("GRPC__ADDRESS", "0.0.0.0:6000")
    (tmp_path / ".env").write_text("DATABASE__URL=postgresql://u@db/chatmem\nMEMORY__USER_TTL_DAYS=7\n")
    monkeypatch.chdir(tmp_path)
    s = Settings()
    assert s.redis.enabled and s.redis.resolved_url() == "redis://:p%40ss@cache.internal:6380/2"
    assert (s.memory.max_thread_messages, s.memory.thread_ttl_hours, s.memory.user_ttl_days) == (20, 2, 7)
    assert s.database.url == "postgresql://u@db/chatmem"
    assert s.grpc.address == "0.0.0.0:6000"


def test_defaults_are_the_embedded_server(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.chdir(tmp_path)
    s = Settings()
    assert not s.redis.enabled and s.database.url is None and s.database.sqlite_path == "./chatmem.db"
    assert s.grpc.address == "127.0.0.1:50051"
    assert (s.memory.max_thread_messages, s.memory.thread_ttl_hours, s.memory.user_ttl_days) == (50, 24, 30)


def test_split_framed_returns_each_message_and_refuses_a_broken_buffer() -> None:
    messages = [StoredMessage(i, Role(1 + i % 2), "x" * (i * 37), "", {"k": str(i)}, 1_790_000_000_000_000 + i)
                for i in range(1, 200)]  # fmt: skip
    encoded = [encode_message("ws", "t", m) for m in messages]
    framed = b"".join(frame_item(e) for e in encoded)
    assert split_framed(framed) == encoded  # lengths above 127 take two varint bytes
    decoded = decode_framed(framed)
    assert decoded == messages and [m.encoded for m in decoded] == encoded
    with pytest.raises(ValueError, match="past the end"):
        split_framed(framed[:-1])
    with pytest.raises(ValueError, match="not a framed message"):
        split_framed(b"\x12" + framed[1:])
