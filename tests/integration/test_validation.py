"""Bad input gets INVALID_ARGUMENT naming the field in a google.rpc.BadRequest, and never reaches storage."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from chatmem.v1 import preferences_service_pb2 as pp
from chatmem.v1 import resources_pb2 as r
from chatmem.v1 import thread_memory_service_pb2 as pb
from server.services import pagination
from tests.conftest import Harness, msg

pytestmark = pytest.mark.integration

LONG_ID = "x" * 129


def forged_threads_token(create_us: int, thread_id: str) -> str:
    """A page token with the right shape for ListThreads(user "u") but forged positions."""
    return pagination.encode("threads", "default/u", {"t": create_us, "id": thread_id})


MiB = 1024 * 1024

CASES: list[tuple[str, str, Any, str]] = [
    ("threads", "AppendMessages", pb.AppendMessagesRequest(thread_id="", messages=[msg("x")]), "thread_id"),
    ("threads", "AppendMessages", pb.AppendMessagesRequest(thread_id=LONG_ID, messages=[msg("x")]), "thread_id"),
    ("threads", "AppendMessages", pb.AppendMessagesRequest(thread_id="a b", messages=[msg("x")]), "thread_id"),
    ("threads", "AppendMessages", pb.AppendMessagesRequest(thread_id="{tag}", messages=[msg("x")]), "thread_id"),
    ("threads", "AppendMessages", pb.AppendMessagesRequest(thread_id="t'; DROP TABLE", messages=[msg("x")]), "thread_id"),
    ("threads", "AppendMessages", pb.AppendMessagesRequest(workspace_id="w/x", thread_id="t", messages=[msg("x")]), "workspace_id"),
    ("threads", "AppendMessages", pb.AppendMessagesRequest(thread_id="t", messages=[]), "messages"),
    ("threads", "AppendMessages", pb.AppendMessagesRequest(thread_id="t", messages=[msg("x")] * 101), "messages"),
    ("threads", "AppendMessages", pb.AppendMessagesRequest(thread_id="t", messages=[msg("x", role=0)]), "messages[0].role"),
    ("threads", "AppendMessages", pb.AppendMessagesRequest(thread_id="t", messages=[msg("x"), msg("y", role=9)]), "messages[1].role"),
    ("threads", "AppendMessages", pb.AppendMessagesRequest(thread_id="t", messages=[msg("é" * (MiB // 2 + 1))]), "messages[0].content"),
    ("threads", "AppendMessages", pb.AppendMessagesRequest(thread_id="t", messages=[msg("x", metadata={f"k{i}": "v" for i in range(65)})]), "messages[0].metadata"),
    ("threads", "AppendMessages", pb.AppendMessagesRequest(thread_id="t", messages=[msg("x", metadata={"k": "v" * 20000})]), "messages[0].metadata"),
    ("threads", "AppendMessages", pb.AppendMessagesRequest(thread_id="t", messages=[msg("x")], request_id=LONG_ID), "request_id"),
    ("threads", "AppendMessages", pb.AppendMessagesRequest(thread_id="t", messages=[msg("x")], user_id="bad user"), "user_id"),
    ("threads", "AppendMessages", pb.AppendMessagesRequest(thread_id="t", messages=[msg("x")], ttl=duration_pb2.Duration(seconds=-5)), "ttl"),
    ("threads", "AppendMessages", pb.AppendMessagesRequest(thread_id="t", messages=[msg("x")], expected_last_seq=-1), "expected_last_seq"),
    ("threads", "GetHistory", pb.GetHistoryRequest(thread_id=""), "thread_id"),
    ("threads", "GetHistory", pb.GetHistoryRequest(thread_id="t", limit=-1), "limit"),
    ("threads", "GetHistory", pb.GetHistoryRequest(thread_id="t", limit=100_000), "limit"),
    ("threads", "ListMessages", pb.ListMessagesRequest(thread_id="t", page_size=-1), "page_size"),
    ("threads", "ListMessages", pb.ListMessagesRequest(thread_id="t", page_size=5000), "page_size"),
    ("threads", "ListMessages", pb.ListMessagesRequest(thread_id="t", page_token="%%%"), "page_token"),
    ("threads", "ListMessages", pb.ListMessagesRequest(thread_id="t", page_token="eyJrIjoxfQ"), "page_token"),
    ("threads", "ListMessages", pb.ListMessagesRequest(thread_id="t", start_seq=-3), "start_seq"),
    ("threads", "GetContext", pb.GetContextRequest(thread_id="t", max_chars=-1), "max_chars"),
    ("threads", "GetContext", pb.GetContextRequest(user_id="bad user"), "user_id"),
    ("threads", "GetThread", pb.GetThreadRequest(thread_id=LONG_ID), "thread_id"),
    ("threads", "ListThreads", pb.ListThreadsRequest(user_id=""), "user_id"),
    ("threads", "ListThreads", pb.ListThreadsRequest(user_id="u", page_size=-2), "page_size"),
    ("threads", "ListThreads", pb.ListThreadsRequest(user_id="u", page_token="bm9wZQ"), "page_token"),
    ("threads", "UpdateThread", pb.UpdateThreadRequest(thread_id="t", ttl=duration_pb2.Duration(seconds=10**9)), "ttl"),
    ("threads", "DeleteThread", pb.DeleteThreadRequest(thread_id="../t"), "thread_id"),
    ("threads", "UpdateThread", pb.UpdateThreadRequest(thread_id="t", ttl=duration_pb2.Duration(seconds=60, nanos=-1)), "ttl"),
    ("threads", "UpdateThread", pb.UpdateThreadRequest(thread_id="t", ttl=duration_pb2.Duration(nanos=-(2**31))), "ttl"),
    ("threads", "AppendMessages", pb.AppendMessagesRequest(thread_id="t", messages=[msg("x")], ttl=duration_pb2.Duration(seconds=1, nanos=10**9)), "ttl"),
    ("threads", "AppendMessages", pb.AppendMessagesRequest(thread_id="t", messages=[msg("a\x00b")]), "messages[0].content"),
    ("threads", "AppendMessages", pb.AppendMessagesRequest(thread_id="t", messages=[msg("x", name="n\x00")]), "messages[0].name"),
    ("threads", "AppendMessages", pb.AppendMessagesRequest(thread_id="t", messages=[msg("x", metadata={"k": "\x00"})]), "messages[0].metadata"),
    ("threads", "AppendMessages", pb.AppendMessagesRequest(thread_id="t", messages=[msg("x")], title="\x00"), "title"),
    ("threads", "AppendMessages", pb.AppendMessagesRequest(thread_id="t", messages=[msg("x")], expected_last_seq=2**63 - 1), "expected_last_seq"),
    ("threads", "StreamHistory-unary-check", pb.StreamHistoryRequest(thread_id="t", after_seq=2**63 - 1), "after_seq"),
    ("threads", "ListMessages", pb.ListMessagesRequest(thread_id="t", start_seq=2**63 - 1), "start_seq"),
    ("threads", "ListThreads", pb.ListThreadsRequest(user_id="u", page_token=forged_threads_token(2**63 - 1, "t")), "page_token"),
    ("threads", "ListThreads", pb.ListThreadsRequest(user_id="u", page_token=forged_threads_token(1, "\x00")), "page_token"),
    ("prefs", "SetPreferences", pp.SetPreferencesRequest(user_id="u", preferences={"k": "v\x00"}), 'preferences["k"]'),
    ("prefs", "GetPreferences", pp.GetPreferencesRequest(user_id=""), "user_id"),
    ("prefs", "GetPreferences", pp.GetPreferencesRequest(user_id="u", keys=["#v"]), "keys[0]"),
    ("prefs", "SetPreferences", pp.SetPreferencesRequest(user_id="u"), "preferences"),
    ("prefs", "SetPreferences", pp.SetPreferencesRequest(user_id="u", preferences={"bad key": "v"}), 'preferences["bad key"]'),
    ("prefs", "SetPreferences", pp.SetPreferencesRequest(user_id="u", preferences={"k": "v" * (64 * 1024 + 1)}), 'preferences["k"]'),
    ("prefs", "DeletePreferences", pp.DeletePreferencesRequest(user_id="u"), "keys"),
    ("prefs", "DeletePreferences", pp.DeletePreferencesRequest(user_id="u", keys=["a"], all=True), "keys"),
]  # fmt: skip


def violations(err: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, "INVALID_ARGUMENT must carry a google.rpc.Status"
    fields: list[str] = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields += [v.field for v in bad.field_violations]
    return fields


@pytest.mark.parametrize(
    ("service", "method", "request_", "field"), CASES, ids=[f"{c[1]}-{c[3]}-{i}" for i, c in enumerate(CASES)]
)
async def test_bad_input_is_invalid_argument_with_the_field(
    sqlite_api: Harness, service: str, method: str, request_: Any, field: str
) -> None:
    stub = sqlite_api.threads if service == "threads" else sqlite_api.prefs

    async def call() -> None:
        if method == "StreamHistory-unary-check":
            async for _ in stub.StreamHistory(request_):
                pass
        else:
            await getattr(stub, method)(request_)

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations(err.value)
    assert field in (err.value.details() or "")


async def test_a_stream_with_bad_input_fails_with_invalid_argument(sqlite_api: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in sqlite_api.threads.StreamHistory(pb.StreamHistoryRequest(thread_id="t", chunk_size=-1)):
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err.value) == ["chunk_size"]


async def test_an_oversized_request_is_refused_by_grpc_not_the_process(sqlite_api: Harness) -> None:
    big = pb.AppendMessagesRequest(thread_id="t", messages=[msg("x" * (MiB - 10)) for _ in range(9)])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sqlite_api.threads.AppendMessages(big)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    ok = await sqlite_api.threads.AppendMessages(pb.AppendMessagesRequest(thread_id="t", messages=[msg("fine")]))
    assert list(ok.seqs) == [1]


async def test_several_violations_are_reported_together(sqlite_api: Harness) -> None:
    bad = pb.AppendMessagesRequest(
        thread_id="", messages=[msg("x", role=0), msg("y", role=r.ROLE_USER)], request_id="a b"
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sqlite_api.threads.AppendMessages(bad)
    assert set(violations(err.value)) == {"thread_id", "request_id", "messages[0].role"}


async def test_too_many_violations_are_capped_so_the_status_fits_its_trailer(sqlite_api: Harness) -> None:
    bad = [r.MessageInput(role=0, content="\x00", name="\x00", metadata={"": "\x00"}) for _ in range(100)]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sqlite_api.threads.AppendMessages(pb.AppendMessagesRequest(thread_id="t", messages=bad))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(violations(err.value)) == 20
    assert "more" in (err.value.details() or "")
