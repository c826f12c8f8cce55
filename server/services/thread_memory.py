"""ThreadMemoryService: conversation history per thread."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.protobuf import duration_pb2

from chatmem.v1 import thread_memory_service_pb2 as pb
from chatmem.v1 import thread_memory_service_pb2_grpc as pb_grpc
from server.config import Settings
from server.errors import ThreadNotFoundError
from server.interceptors import Pipeline
from server.services import budgeted, context_block, convert, message_input, pagination, registry
from server.services.handler import server_stream, unary
from server.services.watch import WatchLoop, live_stream
from server.storage.codec import frame_repeated
from server.storage.models import (
    AppendCommand,
    NewMessage,
    NewThreadOptions,
    Role,
    ThreadCursor,
    ThreadKey,
    ThreadPatch,
    Tier,
)
from server.storage.repository import Repository
from server.storage.results import Served
from server.storage.watch import WatchHub
from server.validation import MAX_SEQ, Checker

_MAX_TTL_S = 366 * 24 * 3600
_MAX_NANOS = 999_999_999
# Methods whose handlers return pre-serialised bytes.
_BYTES_METHODS = {"GetHistory", "StreamHistory", "WatchThread"}
# The serving field (field 2 of GetHistoryResponse and of StreamHistoryResponse) for every
# (tier, degraded), serialised once.
_SERVING_FIELD = {
    (tier, degraded): pb.GetHistoryResponse(serving=convert.serving(Served(tier, degraded))).SerializeToString()
    for tier in Tier
    for degraded in (False, True)
}


def register(servicer: ThreadMemoryService, server: grpc.aio.Server, pipeline: Pipeline) -> None:
    """Add the service to a server, with GetHistory's and StreamHistory's responses passed through as bytes."""
    registry.register(
        server,
        servicer,
        pb.DESCRIPTOR.services_by_name["ThreadMemoryService"],
        bytes_methods=_BYTES_METHODS,
        pipeline=pipeline,
    )


class ThreadMemoryService(pb_grpc.ThreadMemoryServiceServicer):
    """The servicer: validate, call the repository, convert.

    Args:
        repository: the consistency policy over cache and store.
        settings: the server settings.
        hub: the process's watch hub (None: one of its own, which hears only this servicer's repository).
    """

    def __init__(self, repository: Repository, settings: Settings, hub: WatchHub | None = None) -> None:
        self._repo = repository
        if hub is None:
            hub = WatchHub(
                max_per_workspace=settings.limits.max_watchers_per_workspace,
                poll_s=settings.watch.poll_interval_s,
                recheck_s=settings.watch.recheck_interval_s,
                shared_store=bool(settings.database.url),
            )
            repository.events = hub
        self._hub = hub
        self._limits = settings.limits
        self._default_ttl_s = int(settings.memory.thread_ttl_hours * 3600)
        self.default_timeout_s = settings.grpc.default_timeout_s
        self.default_stream_timeout_s = settings.grpc.default_timeout_s

    def _thread_key(self, check: Checker, workspace_id: str, thread_id: str) -> ThreadKey:
        return ThreadKey(check.workspace(workspace_id), check.ident("thread_id", thread_id))

    def _ttl(self, check: Checker, field: str, ttl: duration_pb2.Duration, *, allow_zero: bool) -> int:
        seconds = ttl.seconds
        if seconds < 0 or seconds > _MAX_TTL_S or (seconds == 0 and not allow_zero):
            low = 0 if allow_zero else 1
            check.fail(field, f"must be between {low}s and {_MAX_TTL_S}s")
        elif not 0 <= ttl.nanos <= _MAX_NANOS:
            # Whole seconds are kept; nanos outside this range make the Duration itself malformed.
            check.fail(field, f"must be a valid duration (nanos between 0 and {_MAX_NANOS})")
        return seconds

    @unary
    async def AppendMessages(  # noqa: N802 - gRPC method name
        self, request: pb.AppendMessagesRequest, context: grpc.aio.ServicerContext
    ) -> pb.AppendMessagesResponse:
        """Append 1..N messages atomically and in order."""
        check = Checker(self._limits)
        key = self._thread_key(check, request.workspace_id, request.thread_id)
        check.ident("request_id", request.request_id, required=False)
        check.ident("user_id", request.user_id, required=False)
        check.text("title", request.title, 1024)
        ttl_s = self._ttl(check, "ttl", request.ttl, allow_zero=False) if request.HasField("ttl") else None
        if request.HasField("expected_last_seq"):
            check.seq("expected_last_seq", request.expected_last_seq)
        n = len(request.messages)
        messages: list[NewMessage] = []
        if n == 0:
            check.fail("messages", "must hold at least one message")
        elif n > self._limits.max_messages_per_append:
            check.fail("messages", f"holds more than {self._limits.max_messages_per_append} messages")
        else:
            ids: set[str] = set()
            for i, m in enumerate(request.messages):
                messages.append(message_input.to_new_message(check, f"messages[{i}]", m))
                if m.message_id in ids:
                    check.fail(f"messages[{i}].message_id", "repeats the id of an earlier message of this request")
                elif m.message_id:
                    ids.add(m.message_id)
        check.done()
        command = AppendCommand(
            key=key,
            messages=tuple(messages),
            request_id=request.request_id,
            expected_last_seq=request.expected_last_seq if request.HasField("expected_last_seq") else None,
            new_thread=NewThreadOptions(request.user_id, request.title, ttl_s),
        )
        outcome = await self._repo.append(command)
        return pb.AppendMessagesResponse(
            seqs=outcome.seqs,
            message_count=outcome.message_count,
            durability=int(outcome.durability),  # type: ignore[arg-type]
            replayed=outcome.replayed,
            serving=convert.serving(outcome.served),
        )

    @unary
    async def GetHistory(  # type: ignore[override]  # noqa: N802
        self, request: pb.GetHistoryRequest, context: grpc.aio.ServicerContext
    ) -> bytes:
        """Return the last N messages, oldest first; an unknown thread has an empty window.

        The response leaves as bytes (see ``register``): the cached window is already a serialised
        ``messages`` field, so only the small ``serving`` field is appended; nothing is parsed.
        """
        check = Checker(self._limits)
        key = self._thread_key(check, request.workspace_id, request.thread_id)
        budgeted_read = request.HasField("max_tokens")
        default = self._limits.max_page_size if budgeted_read else self._repo.window
        limit = check.page_size(request.limit, default, self._limits.max_page_size, "limit")
        if request.max_tokens < 0:
            check.fail("max_tokens", "must not be negative")
        check.done()
        if budgeted_read:
            chosen = await budgeted.read(
                self._repo, key, limit, request.max_tokens, keep_prefix=request.keep_system_prefix
            )
            return frame_repeated(1, chosen.items) + _SERVING_FIELD[(chosen.served.tier, chosen.served.degraded)]
        window = await self._repo.history(key, limit)
        return window.framed + _SERVING_FIELD[(window.served.tier, window.served.degraded)]

    @unary
    async def ListMessages(  # noqa: N802
        self, request: pb.ListMessagesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListMessagesResponse:
        """Page through the whole history, forward or backward."""
        check = Checker(self._limits)
        key = self._thread_key(check, request.workspace_id, request.thread_id)
        size = check.page_size(request.page_size, self._limits.default_page_size, self._limits.max_page_size)
        check.seq("start_seq", request.start_seq)
        check.done()
        scope = f"{key.workspace_id}/{key.thread_id}/{int(request.reverse)}"
        start = request.start_seq
        if request.page_token:
            start = pagination.require_int(pagination.decode(request.page_token, "messages", scope), "next", low=0)
            if request.reverse and start == 0:
                return pb.ListMessagesResponse(serving=convert.serving(self._repo.served_by_store(key)))
        page = await self._repo.list_messages(key, start, request.reverse, size + 1)
        more = len(page) > size
        page = page[:size]
        token = ""
        if more:
            nxt = page[-1].seq - 1 if request.reverse else page[-1].seq + 1
            token = pagination.encode("messages", scope, {"next": nxt})
        return pb.ListMessagesResponse(
            messages=[convert.message(key.workspace_id, key.thread_id, m) for m in page],
            next_page_token=token,
            serving=convert.serving(self._repo.served_by_store(key)),
        )

    @server_stream
    async def StreamHistory(  # type: ignore[override]  # noqa: N802
        self, request: pb.StreamHistoryRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """Stream the thread after after_seq in chunks bounded by count and bytes.

        Each chunk leaves as bytes (see ``register``): the stored messages framed and joined by the store
        (by PostgreSQL itself), with nothing parsed, copied or serialised per message here.
        """
        check = Checker(self._limits)
        key = self._thread_key(check, request.workspace_id, request.thread_id)
        chunk = check.page_size(
            request.chunk_size, self._limits.default_stream_chunk, self._limits.max_stream_chunk, "chunk_size"
        )
        check.seq("after_seq", request.after_seq)
        check.done()
        async for run in self._repo.stream_framed(key, request.after_seq, chunk, self._limits.stream_frame_bytes):
            served = self._repo.served_by_store()
            yield run + _SERVING_FIELD[(served.tier, served.degraded)]

    @unary
    async def GetContext(  # noqa: N802
        self, request: pb.GetContextRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetContextResponse:
        """Build the prompt block from the recent window and the user's preferences."""
        check = Checker(self._limits)
        workspace = check.workspace(request.workspace_id)
        check.ident("thread_id", request.thread_id, required=False)
        check.ident("user_id", request.user_id, required=False)
        budgeted_read = request.HasField("max_tokens")
        default = self._limits.max_page_size if budgeted_read else self._repo.window
        limit = check.page_size(request.max_messages, default, self._limits.max_page_size, "max_messages")
        if request.max_chars < 0:
            check.fail("max_chars", "must not be negative")
        if request.max_tokens < 0:
            check.fail("max_tokens", "must not be negative")
        check.done()
        messages: list[tuple[Role, str]] = []
        prefs: dict[str, str] = {}
        tiers = []
        if request.thread_id:
            key = ThreadKey(workspace, request.thread_id)
            if budgeted_read:
                chosen = await budgeted.read(self._repo, key, limit, request.max_tokens)
                parsed, window_served = chosen.messages, chosen.served
            else:
                window = await self._repo.history(key, limit)
                parsed, window_served = list(pb.GetHistoryResponse.FromString(window.framed).messages), window.served
            messages = [(Role(m.role), context_block.line_text(m)) for m in parsed]
            tiers.append(window_served)
        if request.user_id:
            found = await self._repo.preferences.get(workspace, request.user_id)
            prefs = {k: v.value for k, v in found.values.items()}
            tiers.append(found.served)
        block, n_messages, n_prefs = context_block.render(messages, prefs, request.max_chars)
        served = max(tiers, key=lambda s: s.tier) if tiers else None
        degraded = any(s.degraded for s in tiers)
        response = pb.GetContextResponse(context=block, message_count=n_messages, preference_count=n_prefs)
        if served is not None:
            response.serving.tier = int(served.tier)  # type: ignore[assignment]
            response.serving.degraded = degraded
        return response

    @live_stream
    async def WatchThread(  # type: ignore[override]  # noqa: N802
        self, request: pb.WatchThreadRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """Send the messages after after_seq, then each new one, until the client cancels or its deadline ends.

        Responses leave as bytes (see ``register``) framed from the stored messages, as in StreamHistory.
        """
        check = Checker(self._limits)
        key = self._thread_key(check, request.workspace_id, request.thread_id)
        check.seq("after_seq", request.after_seq)
        check.done()
        loop = WatchLoop(
            self._repo,
            self._hub,
            key,
            request.after_seq,
            chunk=self._limits.default_stream_chunk,
            frame_bytes=self._limits.stream_frame_bytes,
            read_timeout_s=self.default_timeout_s,
        )
        async for response in loop.run():
            yield response

    @unary
    async def GetThread(  # noqa: N802
        self, request: pb.GetThreadRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetThreadResponse:
        """Return a thread's metadata or NOT_FOUND."""
        check = Checker(self._limits)
        key = self._thread_key(check, request.workspace_id, request.thread_id)
        check.done()
        thread = await self._repo.get_thread(key)
        return pb.GetThreadResponse(
            thread=convert.thread(thread, self._default_ttl_s), serving=convert.serving(self._repo.served_by_store(key))
        )

    @unary
    async def ListThreads(  # noqa: N802
        self, request: pb.ListThreadsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListThreadsResponse:
        """List a user's threads, newest first."""
        check = Checker(self._limits)
        workspace = check.workspace(request.workspace_id)
        check.ident("user_id", request.user_id)
        size = check.page_size(request.page_size, self._limits.default_page_size, self._limits.max_page_size)
        check.done()
        scope = f"{workspace}/{request.user_id}"
        after = None
        if request.page_token:
            pos = pagination.decode(request.page_token, "threads", scope)
            after = ThreadCursor(
                pagination.require_int(pos, "t", high=pagination.MAX_TIME_US), pagination.require_id(pos, "id")
            )
        threads = await self._repo.list_threads(workspace, request.user_id, after, size + 1)
        token = ""
        if len(threads) > size:
            threads = threads[:size]
            last = threads[-1]
            token = pagination.encode("threads", scope, {"t": last.create_time_us, "id": last.thread_id})
        return pb.ListThreadsResponse(
            threads=[convert.thread(t, self._default_ttl_s) for t in threads],
            next_page_token=token,
            serving=convert.serving(self._repo.served_by_store()),
        )

    @unary
    async def UpdateThread(  # noqa: N802
        self, request: pb.UpdateThreadRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateThreadResponse:
        """Change title, cache TTL or pin; only the fields that are set."""
        check = Checker(self._limits)
        key = self._thread_key(check, request.workspace_id, request.thread_id)
        check.ident("request_id", request.request_id, required=False)
        if request.HasField("title"):
            check.text("title", request.title, 1024)
        ttl = self._ttl(check, "ttl", request.ttl, allow_zero=True) if request.HasField("ttl") else None
        check.done()
        patch = ThreadPatch(
            title=request.title if request.HasField("title") else None,
            ttl_seconds=ttl,
            pinned=request.pinned if request.HasField("pinned") else None,
        )
        thread, served = await self._repo.update_thread(key, patch)
        return pb.UpdateThreadResponse(
            thread=convert.thread(thread, self._default_ttl_s), serving=convert.serving(served)
        )

    @unary
    async def DeleteThread(  # noqa: N802
        self, request: pb.DeleteThreadRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteThreadResponse:
        """Delete a thread from every tier."""
        check = Checker(self._limits)
        key = self._thread_key(check, request.workspace_id, request.thread_id)
        check.ident("request_id", request.request_id, required=False)
        check.done()
        deleted = await self._repo.delete_thread(key)
        if deleted is None:
            if request.allow_missing:
                return pb.DeleteThreadResponse(serving=convert.serving(self._repo.served_by_store(key)))
            raise ThreadNotFoundError(key.thread_id)
        count, served = deleted
        return pb.DeleteThreadResponse(deleted_messages=count, serving=convert.serving(served))

    @unary
    async def ForkThread(  # noqa: N802
        self, request: pb.ForkThreadRequest, context: grpc.aio.ServicerContext
    ) -> pb.ForkThreadResponse:
        """Copy a thread's messages up to a seq into a new thread."""
        check = Checker(self._limits)
        source = self._thread_key(check, request.workspace_id, request.thread_id)
        target = ThreadKey(source.workspace_id, check.ident("new_thread_id", request.new_thread_id))
        through = request.through_seq if request.HasField("through_seq") else None
        if through is not None:
            check.seq("through_seq", through)
        check.ident("request_id", request.request_id, required=False)
        check.ident("user_id", request.user_id, required=False)
        check.text("title", request.title, 1024)
        if request.new_thread_id == request.thread_id:
            check.fail("new_thread_id", "must differ from thread_id")
        check.done()
        options = NewThreadOptions(request.user_id, request.title)
        result, served = await self._repo.reshape.fork(source, target, through, options)
        return pb.ForkThreadResponse(
            thread=convert.thread(result.thread, self._default_ttl_s),
            copied_messages=result.copied,
            replayed=result.replayed,
            serving=convert.serving(served),
        )

    @unary
    async def TruncateThread(  # noqa: N802
        self, request: pb.TruncateThreadRequest, context: grpc.aio.ServicerContext
    ) -> pb.TruncateThreadResponse:
        """Remove the messages after a seq; seqs are never reused."""
        check = Checker(self._limits)
        key = self._thread_key(check, request.workspace_id, request.thread_id)
        check.seq("after_seq", request.after_seq)
        expected = request.expected_last_seq if request.HasField("expected_last_seq") else None
        if expected is not None:
            check.seq("expected_last_seq", expected)
        check.ident("request_id", request.request_id, required=False)
        check.done()
        result, served = await self._repo.reshape.truncate(key, request.after_seq, expected, self._limits.max_page_size)
        return pb.TruncateThreadResponse(
            removed=[convert.message(key.workspace_id, key.thread_id, m) for m in result.removed],
            removed_count=result.removed_count,
            thread=convert.thread(result.thread, self._default_ttl_s),
            serving=convert.serving(served),
        )

    @unary
    async def CompactThread(  # noqa: N802
        self, request: pb.CompactThreadRequest, context: grpc.aio.ServicerContext
    ) -> pb.CompactThreadResponse:
        """Record a summary that stands in for the messages up to a seq."""
        check = Checker(self._limits)
        key = self._thread_key(check, request.workspace_id, request.thread_id)
        if request.through_seq < 1 or request.through_seq > MAX_SEQ:
            check.fail("through_seq", f"must be between 1 and {MAX_SEQ}")
        check.ident("request_id", request.request_id, required=False)
        if not request.HasField("summary"):
            check.fail("summary", "is required")
        summary = message_input.to_new_message(check, "summary", request.summary)
        check.done()
        result, served = await self._repo.reshape.compact(key, request.through_seq, summary, request.request_id)
        return pb.CompactThreadResponse(
            thread=convert.thread(result.thread, self._default_ttl_s),
            replayed=result.replayed,
            serving=convert.serving(served),
        )
