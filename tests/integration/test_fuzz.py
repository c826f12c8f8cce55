"""Hypothesis fuzzing of every chatmem RPC against a real server process on PostgreSQL + Redis (write_behind).

Each RPC of each chatmem.v1 service (found from the generated descriptors) gets ``EXAMPLES`` cases:
descriptor-built requests mixed with targeted values, and bytes that are not a valid request. Properties:
no call ends INTERNAL, UNKNOWN, UNAVAILABLE or DEADLINE_EXCEEDED (every call has a 5 s deadline); an
INVALID_ARGUMENT carries a BadRequest naming the bad fields, and every error the server makes an ErrorInfo;
where the answer is known from the request alone (bad ids, counts, seqs, foreign page tokens, unknown
threads) it is that answer; every OK response parses as the declared type; and afterwards the process is alive, healthy, and drains its outbox.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import concurrent.futures
import itertools
import json
import os
import pathlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import asyncpg
import grpc
import pytest
import redis
from google.protobuf import duration_pb2, message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings

from chatmem.v1 import preferences_service_pb2 as pp
from chatmem.v1 import resources_pb2 as r
from chatmem.v1 import thread_memory_service_pb2 as pb
from devtools.postgres import PostgresProcess
from devtools.redis import RedisProcess
from devtools.server import ServerProcess
from server.storage.redis.keys import BUCKETS, KeySpace
from tests.fuzz_strategies import (
    ID_FIELDS,
    MAX_CONTENT,
    MAX_MESSAGES,
    MAX_TITLE,
    MAX_TTL_S,
    Case,
    PlausibleStrategies,
    Pools,
    RequestStrategies,
    is_valid_id,
    requests,
)
from tests.rpccases import OPEN_ENDED
from tests.rpcs import Rpc, chatmem_methods

pytestmark = pytest.mark.integration

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Cases per RPC. CI runs the default; a larger value fuzzes longer.
EXAMPLES = int(os.environ.get("CHATMEM_FUZZ_EXAMPLES", "2000"))
CALL_DEADLINE_S = 5.0
# WatchThread never ends on its own: its calls get this deadline, at which an admitted watch counts as OK
# (allowed and served, with what it sent until then); fewer cases, as each valid one waits the deadline out.
WATCH_DEADLINE_S = 0.3
WATCH_EXAMPLES = max(1, EXAMPLES // 8)
MAX_RECEIVE = 8 * 1024 * 1024  # the server's GRPC__MAX_RECEIVE_MESSAGE_BYTES default

settings.register_profile(
    "chatmem-fuzz",
    derandomize=True,  # the same cases on every run, so CI is reproducible
    deadline=None,
    database=None,
    max_examples=EXAMPLES,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    print_blob=False,
)
PROFILE = settings.get_profile("chatmem-fuzz")

# Never an acceptable answer to any request while both tiers are up.
FORBIDDEN = {
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.DATA_LOSS,
}
COUNT_MAX = {"page_size": 1000, "limit": 1000, "max_messages": 1000, "chunk_size": 5000}
MAX_SEQ = 2**62

RPCS = chatmem_methods()


@dataclass
class Fuzzed:
    """The server under fuzz and what the fuzz knows about its data."""

    server: ServerProcess
    channel: grpc.Channel
    pools: Pools
    hostile: RequestStrategies
    plausible: RequestStrategies
    key_prefix: str
    redis_url: str
    created: set[tuple[str, str]] = field(default_factory=set)  # (workspace, thread) of every OK append


def _create_database(pg: PostgresProcess) -> str:
    name = f"fuzz_{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        conn = await asyncpg.connect(pg.url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    # In a thread of its own: asyncio.run must not replace the event loop of this (pytest-asyncio's) thread.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, create()).result(timeout=60)
    return pg.url.rsplit("/", 1)[0] + "/" + name


def _call(channel: grpc.Channel, rpc: Rpc, payload: bytes) -> tuple[grpc.StatusCode, list[bytes], grpc.RpcError | None]:
    """Send raw request bytes; return the status, the raw response messages, and the error if any."""
    received: list[bytes] = []
    try:
        if rpc.path in OPEN_ENDED:
            received.extend(channel.unary_stream(rpc.path)(payload, timeout=WATCH_DEADLINE_S))
            return grpc.StatusCode.OK, received, None
        if rpc.method.server_streaming:
            call = channel.unary_stream(rpc.path)(payload, timeout=CALL_DEADLINE_S)
            return grpc.StatusCode.OK, list(call), None
        return grpc.StatusCode.OK, [channel.unary_unary(rpc.path)(payload, timeout=CALL_DEADLINE_S)], None
    except grpc.RpcError as err:
        if rpc.path in OPEN_ENDED and err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return grpc.StatusCode.OK, received, None
        return err.code(), [], err


def _refill(channel: grpc.Channel, pools: Pools) -> None:
    """Append a few messages to every pool thread in every pool workspace (creating it again if deleted)."""
    append = channel.unary_unary("/chatmem.v1.ThreadMemoryService/AppendMessages")
    for ws in pools.workspaces:
        for thread in pools.threads:
            messages = [r.MessageInput(role=r.ROLE_USER + i % 2, content=f"refill {i}") for i in range(8)]
            append(pb.AppendMessagesRequest(workspace_id=ws, thread_id=thread, messages=messages).SerializeToString(),
                   timeout=30)  # fmt: skip


def _seed(channel: grpc.Channel, pools: Pools) -> None:
    """Threads, users, preferences and the page tokens issued for them, in every pool workspace."""
    append = channel.unary_unary("/chatmem.v1.ThreadMemoryService/AppendMessages")
    list_messages = channel.unary_unary("/chatmem.v1.ThreadMemoryService/ListMessages")
    list_threads = channel.unary_unary("/chatmem.v1.ThreadMemoryService/ListThreads")
    set_prefs = channel.unary_unary("/chatmem.v1.PreferencesService/SetPreferences")
    for ws in pools.workspaces:
        for t, thread in enumerate(pools.threads):
            user = pools.users[t % len(pools.users)]
            messages = [r.MessageInput(role=r.ROLE_USER + i % 2, content=f"m{i}") for i in range(7 + 5 * t)]
            req = pb.AppendMessagesRequest(workspace_id=ws, thread_id=thread, user_id=user, messages=messages)
            append(req.SerializeToString(), timeout=30)
        for user in pools.users:
            prefs = pp.SetPreferencesRequest(
                workspace_id=ws, user_id=user, preferences={k: f"{k} of {user}" for k in pools.pref_keys}
            )
            set_prefs(prefs.SerializeToString(), timeout=30)
            page = pb.ListThreadsResponse.FromString(
                list_threads(
                    pb.ListThreadsRequest(workspace_id=ws, user_id=user, page_size=1).SerializeToString(), timeout=30
                )
            )
            if page.next_page_token:
                pools.tokens[page.next_page_token] = ("ListThreads", f"{ws}/{user}")
        for thread in pools.threads:
            for reverse in (False, True):
                for start in (0, 3):
                    req = pb.ListMessagesRequest(
                        workspace_id=ws, thread_id=thread, page_size=2, reverse=reverse, start_seq=start
                    )
                    page = pb.ListMessagesResponse.FromString(list_messages(req.SerializeToString(), timeout=30))
                    if page.next_page_token:
                        pools.tokens[page.next_page_token] = ("ListMessages", f"{ws}/{thread}/{int(reverse)}")


def _healthy(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    services = {"", *(rpc.method.containing_service.full_name for rpc in RPCS)}
    for name in services:
        resp = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=CALL_DEADLINE_S)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING, name


@pytest.fixture(scope="module")
def fuzzed(
    redis_proc: RedisProcess, pg_proc: PostgresProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fuzzed]:
    """A server process on its own PostgreSQL database and Redis key prefix, in write_behind, seeded."""
    prefix = f"fz{uuid.uuid4().hex[:8]}"
    env = {
        "DATABASE__URL": _create_database(pg_proc),
        "REDIS__URL": redis_proc.url,
        "REDIS__KEY_PREFIX": prefix,
        "MEMORY__WRITE_MODE": "write_behind",
        "OUTBOX__BLOCK_MS": "20",
        "PYTHONPATH": str(ROOT),
    }
    server = ServerProcess(env, str(tmp_path_factory.mktemp("fuzz-server")))
    server.start()
    channel = grpc.insecure_channel(
        server.target,
        options=[("grpc.max_send_message_length", 64 * 1024 * 1024), ("grpc.max_receive_message_length", -1)],
    )
    try:
        health = health_pb2_grpc.HealthStub(channel)
        health.Check(health_pb2.HealthCheckRequest(), timeout=60, wait_for_ready=True)
        pools = Pools(
            workspaces=["fz-a", "fz-b", "default"],
            threads=["t1", "t2", "t-long"],
            users=["u1", "u2"],
            pref_keys=["lang", "tone", "a.b:c"],
            missing_threads=["missing-1", "missing-2", "missing.x"],
        )
        _seed(channel, pools)
        assert len(pools.tokens) >= 20, "the seed should issue page tokens of both kinds"
        fuzz = Fuzzed(
            server, channel, pools, RequestStrategies(pools), PlausibleStrategies(pools), prefix, redis_proc.url
        )
        fuzz.created.update((ws, t) for ws in pools.workspaces for t in pools.threads)
        yield fuzz
    finally:
        channel.close()
        code = server.stop()
        print(f"fuzz server exited with {code}; log at {server.log_path}")


# --- what the answer must be, from the request alone ----------------------------------------------


def _refused(fd: FieldDescriptor, value: object) -> bool:
    """Whether the server must refuse this value of a top-level field, by the documented rules."""
    name = fd.name
    if isinstance(value, duration_pb2.Duration):
        # A TTL is 0..366 days, and a Duration's nanos are 0..999,999,999 when it is not negative.
        return not 0 <= value.seconds <= MAX_TTL_S or not 0 <= value.nanos <= 999_999_999
    if name in ID_FIELDS:
        return isinstance(value, str) and bool(value) and not is_valid_id(value)
    if name == "title" and isinstance(value, str):
        return len(value.encode()) > MAX_TITLE or "\x00" in value
    if not isinstance(value, int):
        return False
    if name in COUNT_MAX:
        return not 0 <= value <= COUNT_MAX[name]
    if name in ("max_chars", "max_tokens"):
        return value < 0
    return name.endswith("_seq") and fd.type == fd.TYPE_INT64 and not 0 <= value <= MAX_SEQ


def _bad_fields(msg: Message) -> set[str]:
    """Top-level fields whose value the server must refuse, whatever else the request holds."""
    return {
        fd.name
        for fd in msg.DESCRIPTOR.fields
        if not fd.is_repeated
        and not (fd.has_presence and not msg.HasField(fd.name))
        and _refused(fd, getattr(msg, fd.name))
    }


def _bad_messages(msg: Message) -> list[str]:
    """Paths of bad messages[i] fields of an append (1..100 messages): unknown role, oversized or NUL text.

    A v2 message's content is checked as given (the server fills an empty one from the text parts, and
    refuses a given one that is oversized, holds NUL or differs from them).
    """
    if msg.DESCRIPTOR.name != "AppendMessagesRequest":
        return []
    messages = msg.messages  # type: ignore[attr-defined]
    if not 1 <= len(messages) <= MAX_MESSAGES:
        return []
    bad = []
    for i, m in enumerate(messages):
        if m.role not in (1, 2, 3, 4, 5):
            bad.append(f"messages[{i}].role")
        if len(m.content.encode()) > MAX_CONTENT or "\x00" in m.content:
            bad.append(f"messages[{i}].content")
    return bad


def _present(msg: Message, required: tuple[str, ...]) -> bool:
    """True if every named field is set (not empty)."""
    return all(getattr(msg, name) for name in required)


def _token_shape_ok(token: str) -> bool:
    """True if a token could be one the server issued: base64url of a JSON object."""
    try:
        body = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return False
    return isinstance(body, dict) and len(token) <= 1024


def _scope(msg: Message, name: str) -> str:
    ws = msg.workspace_id or "default"  # type: ignore[attr-defined]
    if name == "ListMessages":
        return f"{ws}/{msg.thread_id}/{int(msg.reverse)}"  # type: ignore[attr-defined]
    return f"{ws}/{msg.user_id}"  # type: ignore[attr-defined]


def expected_code(rpc: Rpc, msg: Message, fuzz: Fuzzed) -> grpc.StatusCode | None:
    """The one right status for a request, where the request alone decides it; None where it does not."""
    if _bad_fields(msg) or _bad_messages(msg):
        return grpc.StatusCode.INVALID_ARGUMENT
    name = rpc.method.name
    if rpc.method.containing_service.name != "ThreadMemoryService":
        return None
    ws = getattr(msg, "workspace_id", "") or "default"
    if name == "GetHistory" and _present(msg, ("thread_id",)):
        return grpc.StatusCode.OK  # an unknown thread has an empty window
    if name in ("GetThread", "UpdateThread", "DeleteThread") and _present(msg, ("thread_id",)):
        known = (ws, msg.thread_id) in fuzz.created  # type: ignore[attr-defined]
        if name == "DeleteThread" and msg.allow_missing:  # type: ignore[attr-defined]
            return grpc.StatusCode.OK
        # Every thread this server holds was created by an append the fuzz saw succeed.
        return None if known else grpc.StatusCode.NOT_FOUND
    if name in ("ListMessages", "ListThreads") and msg.page_token:  # type: ignore[attr-defined]
        required = ("thread_id",) if name == "ListMessages" else ("user_id",)
        if not _present(msg, required):
            return None
        token = msg.page_token  # type: ignore[attr-defined]
        issued = fuzz.pools.tokens.get(token)
        if issued is not None:
            ok = issued == (name, _scope(msg, name))
            return grpc.StatusCode.OK if ok else grpc.StatusCode.INVALID_ARGUMENT
        if not _token_shape_ok(token):
            return grpc.StatusCode.INVALID_ARGUMENT
    return None


def _violations(err: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, "INVALID_ARGUMENT without a google.rpc.Status"
    bad = error_details_pb2.BadRequest()
    found = [d for d in status.details if d.Is(bad.DESCRIPTOR)]
    assert found, "INVALID_ARGUMENT without a BadRequest detail"
    found[0].Unpack(bad)
    fields = [v.field for v in bad.field_violations]
    assert fields and all(fields), f"BadRequest with no field named: {bad}"
    assert all(v.description for v in bad.field_violations)
    return fields


def _walk(msg: Message) -> Iterator[Message]:
    yield msg
    for fd, value in msg.ListFields():
        if fd.type != fd.TYPE_MESSAGE or (fd.is_repeated and fd.message_type.GetOptions().map_entry):
            continue
        for sub in value if fd.is_repeated else [value]:
            yield from _walk(sub)


def _error_reason(err: grpc.RpcError) -> str:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    info = error_details_pb2.ErrorInfo()
    found = [d for d in (status.details if status else ()) if d.Is(info.DESCRIPTOR)]
    if not found:
        return ""
    found[0].Unpack(info)
    return info.reason if info.domain == "chatmem.dev" else ""


def check_response(rpc: Rpc, msg: Message, responses: list[Message]) -> None:
    """What every OK answer must hold: only the caller's workspace, thread and user; seqs in order; sizes."""
    asked = {name: getattr(msg, name) for name in ("workspace_id", "thread_id", "user_id") if hasattr(msg, name)}
    if "workspace_id" in asked:
        asked["workspace_id"] = asked["workspace_id"] or "default"
    if rpc.method.name == "AppendMessages":
        asked.pop("user_id")  # the owner of a new thread only; an existing thread keeps its own
    if rpc.method.name == "ForkThread":
        asked["thread_id"] = msg.new_thread_id  # type: ignore[attr-defined]  # the answer is the new thread
        asked.pop("user_id")  # empty keeps the source's owner
    seqs: list[int] = []
    for response in responses:
        for sub in _walk(response):
            for name, value in asked.items():
                if value and name in sub.DESCRIPTOR.fields_by_name:
                    assert getattr(sub, name) == value, f"{rpc.name}: {name} {getattr(sub, name)!r} in the answer"
            if sub.DESCRIPTOR.full_name == "chatmem.v1.Message":
                seqs.append(sub.seq)  # type: ignore[attr-defined]
    if seqs:
        descending = bool(getattr(msg, "reverse", False))
        pairs = list(itertools.pairwise(seqs))
        assert all((a > b) if descending else (a < b) for a, b in pairs), f"{rpc.name}: seqs out of order {seqs}"
        assert min(seqs) >= 1
    name = rpc.method.name
    if name == "GetHistory":
        budgeted = msg.HasField("max_tokens")  # type: ignore[attr-defined]
        assert len(seqs) <= (msg.limit or (1000 if budgeted else 50))  # type: ignore[attr-defined]
    elif name == "ListMessages":
        assert len(seqs) <= (msg.page_size or 100)  # type: ignore[attr-defined]
    elif name in ("StreamHistory", "WatchThread"):
        assert all(seq > msg.after_seq for seq in seqs)  # type: ignore[attr-defined]
    elif name == "AppendMessages":
        done = responses[0]
        if not done.replayed:  # type: ignore[attr-defined]
            got = list(done.seqs)  # type: ignore[attr-defined]
            assert len(got) == len(msg.messages), got  # type: ignore[attr-defined]
            assert got == list(range(got[0], got[0] + len(got))) and done.message_count == got[-1]  # type: ignore[attr-defined]


def check(rpc: Rpc, case: Case, fuzz: Fuzzed, seen: collections.Counter[str]) -> None:
    """Send one case and assert the properties; count what was seen (codes, exact expectations, big requests)."""
    code, responses, err = _call(fuzz.channel, rpc, case.payload)
    seen[code.name] += 1
    if len(case.payload) >= 512 * 1024:
        seen["requests >= 512 KiB"] += 1
    details = err.details() if err is not None else ""  # type: ignore[union-attr]
    assert code not in FORBIDDEN, f"{rpc.name} answered {code.name}: {details}"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        assert len(case.payload) > MAX_RECEIVE, f"{rpc.name}: RESOURCE_EXHAUSTED for a request within limits: {details}"
        return
    if err is not None:
        # Every status the server's code makes carries ErrorInfo (RESOURCE_EXHAUSTED above is gRPC's own).
        reason = _error_reason(err)
        assert reason, f"{rpc.name}: {code.name} without a chatmem.dev ErrorInfo: {details}"
        seen[f"reason {reason}"] += 1
    named = _violations(err) if code == grpc.StatusCode.INVALID_ARGUMENT and err is not None else []
    try:
        # Raw bytes get the same oracle as messages once parsed here the way the server parses them.
        msg = case.message or rpc.request_cls.FromString(case.payload)
    except DecodeError:
        seen["expected INVALID_ARGUMENT"] += 1
        assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{rpc.name}: undecodable bytes answered {code.name}"
        assert named == ["request"], named
        return
    expected = expected_code(rpc, msg, fuzz)
    if expected is not None:
        seen[f"expected {expected.name}"] += 1
        assert code == expected, f"{rpc.name}: expected {expected.name}, got {code.name}: {details}"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        must = _bad_fields(msg)
        assert must <= set(named), f"{rpc.name}: BadRequest names {named}, not all of {sorted(must)}"
        nested = _bad_messages(msg)
        # The server reports at most 20 violations, so only some of many bad messages may be named.
        assert not nested or set(nested) & set(named), f"{rpc.name}: BadRequest names {named}, none of {nested}"
    if code == grpc.StatusCode.OK:
        response_cls = message_factory.GetMessageClass(rpc.method.output_type)
        # FromString also proves the pass-through bytes (GetHistory, StreamHistory) are a valid response.
        check_response(rpc, msg, [response_cls.FromString(raw) for raw in responses])
        if rpc.method.name in ("AppendMessages", "ForkThread"):
            created = msg.new_thread_id if rpc.method.name == "ForkThread" else msg.thread_id  # type: ignore[attr-defined]
            fuzz.created.add((getattr(msg, "workspace_id", "") or "default", created))


@pytest.mark.parametrize("rpc", RPCS, ids=lambda rpc: rpc.name)
def test_fuzz_rpc(fuzzed: Fuzzed, rpc: Rpc) -> None:
    kinds: collections.Counter[str] = collections.Counter()
    seen: collections.Counter[str] = collections.Counter()
    started = time.monotonic()

    examples = WATCH_EXAMPLES if rpc.path in OPEN_ENDED else EXAMPLES
    # The RPCs fuzzed earlier (DeleteThread, TruncateThread) may have emptied or removed the pool's
    # threads; those that need a thread with messages must still reach their success path.
    _refill(fuzzed.channel, fuzzed.pools)

    @settings(PROFILE, max_examples=examples)
    @given(case=requests(rpc, fuzzed.hostile, fuzzed.plausible))
    def fuzz(case: Case) -> None:
        kinds[case.kind] += 1
        check(rpc, case, fuzzed, seen)

    fuzz()
    elapsed = time.monotonic() - started
    print(f"{rpc.name}: {sum(kinds.values())} cases in {elapsed:.1f}s; kinds {dict(kinds)}; seen {dict(seen)}")
    assert sum(kinds.values()) >= examples, f"only {sum(kinds.values())} cases ran"
    # The mix reaches both the handler's refusals and its success path, and the oracle decided some cases.
    assert seen["OK"] > 0 and seen["INVALID_ARGUMENT"] > 0, dict(seen)
    assert seen["reason INVALID_ARGUMENT"] == seen["INVALID_ARGUMENT"], dict(seen)
    assert seen["expected INVALID_ARGUMENT"] > 0, dict(seen)
    if examples >= 1000:  # a short run may not draw every kind
        assert set(kinds) == {"message", "random-bytes", "damaged", "wire-trap"}, dict(kinds)
    assert fuzzed.server.proc is not None and fuzzed.server.proc.poll() is None, "the server process died"


def test_server_survives_the_fuzz(fuzzed: Fuzzed) -> None:
    """After every RPC was fuzzed: alive, SERVING, a round trip works, the outbox drains, nothing crashed."""
    assert fuzzed.server.proc is not None and fuzzed.server.proc.poll() is None, "the server process died"
    _healthy(fuzzed.channel)
    append = fuzzed.channel.unary_unary("/chatmem.v1.ThreadMemoryService/AppendMessages")
    history = fuzzed.channel.unary_unary("/chatmem.v1.ThreadMemoryService/GetHistory")
    list_messages = fuzzed.channel.unary_unary("/chatmem.v1.ThreadMemoryService/ListMessages")
    thread = f"after-{uuid.uuid4().hex[:8]}"
    req = pb.AppendMessagesRequest(
        workspace_id="fz-a", thread_id=thread, messages=[r.MessageInput(role=r.ROLE_USER, content="still here?")]
    )
    done = pb.AppendMessagesResponse.FromString(append(req.SerializeToString(), timeout=CALL_DEADLINE_S))
    assert list(done.seqs) == [1]
    got = pb.GetHistoryResponse.FromString(
        history(
            pb.GetHistoryRequest(workspace_id="fz-a", thread_id=thread).SerializeToString(), timeout=CALL_DEADLINE_S
        )
    )
    assert [m.content for m in got.messages] == ["still here?"]
    # A full-history read waits for the flush of what was queued: the flusher is not wedged.
    page = pb.ListMessagesResponse.FromString(
        list_messages(pb.ListMessagesRequest(workspace_id="fz-a", thread_id=thread).SerializeToString(), timeout=30)
    )
    assert [m.content for m in page.messages] == ["still here?"]
    keys = KeySpace(fuzzed.key_prefix)
    client = redis.Redis.from_url(fuzzed.redis_url)
    try:
        deadline = time.monotonic() + 30
        depth = -1
        for _ in range(600):  # bounded: 30 s at most
            pipe = client.pipeline(transaction=False)
            for b in range(BUCKETS):
                pipe.xlen(keys.outbox(b))
            depth = sum(int(n) for n in pipe.execute())
            if depth == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert depth == 0, f"{depth} outbox entries never flushed"
    finally:
        client.close()
    log = fuzzed.server.log()
    assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]
