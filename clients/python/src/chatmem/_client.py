"""MemoryClient: the asyncio client, one method per RPC, with deadlines, retries and typed results."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import AsyncIterator, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypedDict, Unpack, overload

import grpc

from chatmem import _convert
from chatmem._channel import DEFAULT_TARGET, ChannelSpec
from chatmem._pager import AsyncPager, Page
from chatmem._reshape import ReshapeCalls
from chatmem._retry import DEFAULT_RETRY, RetryPolicy, call_with_retry
from chatmem._stream import resumable_chunks
from chatmem._watch import watch_thread
from chatmem.errors import NotFoundError
from chatmem.types import (
    AppendResult,
    Context,
    Message,
    MessageInput,
    Preference,
    ServedDict,
    ServedList,
    Thread,
    UserDeletion,
)
from chatmem.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    preferences_service_pb2,
    preferences_service_pb2_grpc,
    thread_memory_service_pb2,
    thread_memory_service_pb2_grpc,
)

DEFAULT_TIMEOUT_S = 10.0
"""The default deadline of a unary call, retries included."""

DEFAULT_STREAM_IDLE_TIMEOUT_S = 30.0
"""The default longest wait for one chunk of a stream (a stream as a whole has no default deadline)."""


class ConnectOptions(TypedDict, total=False):
    """The keyword options of ``MemoryClient.connect`` and ``SyncMemoryClient.connect``.

    Attributes:
        credentials: ``grpc.ChannelCredentials`` for TLS or mTLS (``grpc.ssl_channel_credentials(...)``).
        tls: connect with TLS and the system's root certificates (ignored when ``credentials`` is given).
        root_certificates: PEM CA bundle that verifies the server (implies TLS; e.g. a private CA).
        private_key: PEM private key of a client certificate, for mTLS (with ``certificate_chain``).
        certificate_chain: PEM client certificate chain, for mTLS (with ``private_key``).
        api_key: sent as ``authorization: Bearer <api_key>`` with every call.
        metadata: more metadata sent with every call, as a mapping or ``(key, value)`` pairs.
        timeout: the default deadline of a unary call in seconds, retries included (10).
        workspace_id: the workspace of every call; ``""`` is the server's ``default`` workspace.
        retry: the retry policy (``chatmem.NO_RETRY`` turns retries off).
        stream_idle_timeout: the longest wait for one chunk of ``stream_history`` (30 s; None for no limit).
        options: extra gRPC channel options; they override the client's defaults.
    """

    credentials: grpc.ChannelCredentials | None
    tls: bool
    root_certificates: bytes | None
    private_key: bytes | None
    certificate_chain: bytes | None
    api_key: str | None
    metadata: Mapping[str, str] | Sequence[tuple[str, str]] | None
    timeout: float
    workspace_id: str
    retry: RetryPolicy
    stream_idle_timeout: float | None
    options: Sequence[tuple[str, Any]]


@dataclass(frozen=True, slots=True)
class RawStubs:
    """The generated stubs on the client's channel, for what the typed methods do not cover.

    Calls made through them carry the connect-time metadata (the API key), but get no default
    deadline, no retries and no error mapping.

    Attributes:
        channel: the channel.
        threads: ``chatmem.v1.ThreadMemoryService``.
        preferences: ``chatmem.v1.PreferencesService``.
    """

    channel: Any
    threads: thread_memory_service_pb2_grpc.ThreadMemoryServiceStub
    preferences: preferences_service_pb2_grpc.PreferencesServiceStub


def new_request_id() -> str:
    """Return a fresh request id: one per logical call, sent again by each retry of it."""
    return uuid.uuid4().hex


def _seconds(value: float | None, default: float | None) -> float | None:
    return default if value is None else value


class MemoryClient(ReshapeCalls):
    """The asyncio client of a chatmem server.

    Open it with ``connect`` (``async with MemoryClient.connect() as memory: ...``, or
    ``memory = await MemoryClient.connect()`` and later ``await memory.close()``). Every unary call has a
    deadline (``timeout``, 10 s unless set) and is retried on UNAVAILABLE with backoff; mutating calls
    carry a ``request_id`` the client generates, so a retry never stores anything twice. Failures raise
    subclasses of ``chatmem.errors.ChatmemError``.

    Args:
        channel: an open ``grpc.aio`` channel; the client closes it on ``close``.
        workspace_id: the workspace of every call; ``""`` is the ``default`` workspace.
        timeout: the default deadline of a unary call in seconds.
        retry: the retry policy.
        stream_idle_timeout: the longest wait for one chunk of a stream; None for no limit.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        workspace_id: str = "",
        timeout: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy = DEFAULT_RETRY,
        stream_idle_timeout: float | None = DEFAULT_STREAM_IDLE_TIMEOUT_S,
    ) -> None:
        self._channel = channel
        self._threads = thread_memory_service_pb2_grpc.ThreadMemoryServiceStub(channel)
        self._prefs = preferences_service_pb2_grpc.PreferencesServiceStub(channel)
        self._admin = admin_service_pb2_grpc.AdminServiceStub(channel)
        self._workspace_id = workspace_id
        self._timeout = timeout
        self._retry = retry
        self._stream_idle_timeout = stream_idle_timeout
        self._spec: ChannelSpec | None = None

    @classmethod
    def connect(cls, target: str = DEFAULT_TARGET, **options: Unpack[ConnectOptions]) -> _Connecting:
        """Connect to a server.

        The channel connects lazily: an unreachable server shows up as ``UnavailableError`` on the
        first call, not here. Keepalive follows the server's limits (a ping a minute at most).

        Args:
            target: ``host:port`` of the server (default ``127.0.0.1:50051``).
            **options: see ``ConnectOptions``: ``credentials``, ``tls``, ``root_certificates``,
                ``private_key``, ``certificate_chain``, ``api_key``, ``metadata``, ``timeout``,
                ``workspace_id``, ``retry``, ``stream_idle_timeout``, ``options``.

        Returns:
            An object to ``await`` (giving the client) or to use in ``async with`` (closing it at the end).

        Raises:
            TypeError: an unknown option.
        """
        check_options(options)
        return _Connecting(cls, target, options)

    @classmethod
    def _open(cls, target: str, options: ConnectOptions) -> MemoryClient:
        spec = ChannelSpec.build(
            target,
            credentials=options.get("credentials"),
            tls=options.get("tls", False),
            root_certificates=options.get("root_certificates"),
            private_key=options.get("private_key"),
            certificate_chain=options.get("certificate_chain"),
            api_key=options.get("api_key"),
            metadata=options.get("metadata"),
            options=options.get("options", ()),
        )
        client = cls(
            spec.open_async(),
            workspace_id=options.get("workspace_id", ""),
            timeout=options.get("timeout", DEFAULT_TIMEOUT_S),
            retry=options.get("retry", DEFAULT_RETRY),
            stream_idle_timeout=options.get("stream_idle_timeout", DEFAULT_STREAM_IDLE_TIMEOUT_S),
        )
        client._spec = spec
        return client

    @property
    def workspace_id(self) -> str:
        """The workspace of every call (``""`` is the server's ``default``)."""
        return self._workspace_id

    @property
    def raw(self) -> RawStubs:
        """The generated stubs on this client's channel."""
        return RawStubs(self._channel, self._threads, self._prefs)

    async def close(self) -> None:
        """Close the channel; calls still in flight are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> MemoryClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        target = self._spec.target if self._spec else "<channel>"
        return f"MemoryClient({target!r}, workspace_id={self._workspace_id!r})"

    async def _unary(self, rpc: Any, request: Any, timeout: float | None) -> Any:
        async def attempt(remaining: float | None) -> Any:
            return await rpc(request, timeout=remaining)

        return await call_with_retry(attempt, self._retry, _seconds(timeout, self._timeout))

    # Thread history

    async def append(
        self,
        thread_id: str,
        role: str,
        content: str,
        *,
        name: str = "",
        metadata: Mapping[str, str] | None = None,
        user_id: str = "",
        title: str = "",
        ttl: datetime.timedelta | float | None = None,
        expected_last_seq: int | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> AppendResult:
        """Append one message to a thread, creating the thread on its first append.

        Args:
            thread_id: the thread (the seeds' conversation id).
            role: ``user``, ``assistant``, ``system``, ``tool`` or ``developer``.
            content: the text.
            name: optional author name, such as a tool's.
            metadata: optional string metadata.
            user_id: the owner of a new thread (ignored once the thread exists).
            title: the title of a new thread (ignored once the thread exists).
            ttl: the cache TTL of a new thread, as a timedelta or seconds (ignored once it exists).
            expected_last_seq: append only if the thread's last seq is this (0: the thread is new);
                otherwise ``ConflictError``.
            request_id: the idempotency key; by default a fresh one. Reuse one to retry an append
                across processes: the server then replays the first result.
            timeout: the deadline in seconds, retries included (default: the client's).

        Returns:
            The assigned seq, the thread's length and the durability.
        """
        return await self.append_messages(
            thread_id,
            [{"role": role, "content": content, "name": name, "metadata": metadata or {}}],
            user_id=user_id,
            title=title,
            ttl=ttl,
            expected_last_seq=expected_last_seq,
            request_id=request_id,
            timeout=timeout,
        )

    async def append_messages(
        self,
        thread_id: str,
        messages: Iterable[MessageInput | Mapping[str, Any]],
        *,
        user_id: str = "",
        title: str = "",
        ttl: datetime.timedelta | float | None = None,
        expected_last_seq: int | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> AppendResult:
        """Append messages to a thread atomically and in order (AppendMessages).

        Args:
            thread_id: the thread.
            messages: ``MessageInput`` objects (with parts, an envelope, an id and a token count when
                given; ``chatmem.formats`` builds them from OpenAI, Anthropic and LangChain messages) or
                seeds-style dicts with ``role`` and ``content`` (and optionally ``name`` and ``metadata``).
            user_id: the owner of a new thread.
            title: the title of a new thread.
            ttl: the cache TTL of a new thread.
            expected_last_seq: optimistic concurrency, as in ``append``.
            request_id: the idempotency key; by default a fresh one.
            timeout: the deadline in seconds, retries included.

        Returns:
            The assigned seqs, in order.

        Raises:
            InvalidArgumentError: a message has an unknown role or non-text content (checked before
                sending), or the server rejected a field.
            ConflictError: a ``message_id`` the thread already holds (ALREADY_EXISTS; the ``BadRequest``
                in ``details`` names ``messages[i].message_id``), or ``expected_last_seq`` did not match.
        """
        request = thread_memory_service_pb2.AppendMessagesRequest(
            workspace_id=self._workspace_id,
            thread_id=thread_id,
            messages=_convert.message_inputs(messages),
            request_id=request_id or new_request_id(),
            user_id=user_id,
            title=title,
        )
        if ttl is not None:
            request.ttl.CopyFrom(_convert.duration_to_pb(ttl))
        if expected_last_seq is not None:
            request.expected_last_seq = expected_last_seq
        resp: thread_memory_service_pb2.AppendMessagesResponse = await self._unary(
            self._threads.AppendMessages, request, timeout
        )
        return _convert.append_result(resp, request.request_id)

    @overload
    async def get_history(
        self,
        thread_id: str,
        *,
        limit: int = ...,
        typed: Literal[False] = ...,
        max_tokens: int | None = ...,
        keep_system_prefix: bool = ...,
        timeout: float | None = ...,
    ) -> ServedList[dict[str, str]]: ...

    @overload
    async def get_history(
        self,
        thread_id: str,
        *,
        limit: int = ...,
        typed: Literal[True],
        max_tokens: int | None = ...,
        keep_system_prefix: bool = ...,
        timeout: float | None = ...,
    ) -> ServedList[Message]: ...

    @overload
    async def get_history(
        self,
        thread_id: str,
        *,
        limit: int = ...,
        typed: bool,
        max_tokens: int | None = ...,
        keep_system_prefix: bool = ...,
        timeout: float | None = ...,
    ) -> ServedList[dict[str, str]] | ServedList[Message]: ...

    async def get_history(
        self,
        thread_id: str,
        *,
        limit: int = 0,
        typed: bool = False,
        max_tokens: int | None = None,
        keep_system_prefix: bool = False,
        timeout: float | None = None,
    ) -> ServedList[dict[str, str]] | ServedList[Message]:
        """Return the recent window of a thread, oldest first (GetHistory).

        Args:
            thread_id: the thread; an unknown one has an empty history.
            limit: how many of the newest messages; 0 means the server's window (50 by default).
            typed: return ``Message`` objects (with seq, name, metadata, time, parts, envelope, id and
                token count) instead of dicts.
            max_tokens: at most this many tokens in all; None (the default) means no token budget. The
                newest messages that fit are returned, oldest first, and a tool call never comes without
                its results nor a result without its call. A message counts its ``token_count``, or when
                that is 0 the server's estimate: ceil(UTF-8 bytes of its text-bearing fields / 4), at least 1.
            keep_system_prefix: with ``max_tokens``, the thread's leading system and developer
                messages always come first, and count against the budget.
            timeout: the deadline in seconds, retries included.

        Returns:
            ``[{"role": ..., "content": ...}, ...]``, the seeds' chat-config history; or, with
            ``typed=True``, ``Message`` objects. Either is a plain list whose ``.serving`` says which
            tier answered and whether the server was degraded.
        """
        request = thread_memory_service_pb2.GetHistoryRequest(
            workspace_id=self._workspace_id, thread_id=thread_id, limit=limit, keep_system_prefix=keep_system_prefix
        )
        if max_tokens is not None:
            # Only when given: the field has presence, and a budget of 0 tokens returns nothing.
            request.max_tokens = max_tokens
        resp: thread_memory_service_pb2.GetHistoryResponse = await self._unary(
            self._threads.GetHistory, request, timeout
        )
        serving = _convert.serving(resp.serving)
        if typed:
            return ServedList([_convert.message(m) for m in resp.messages], serving)
        return ServedList([_convert.history_dict(m) for m in resp.messages], serving)

    def list_messages(
        self,
        thread_id: str,
        *,
        page_size: int = 0,
        start_seq: int = 0,
        reverse: bool = False,
        page_token: str = "",
        timeout: float | None = None,
    ) -> AsyncPager[Message]:
        """Page through a whole thread (ListMessages).

        Args:
            thread_id: the thread.
            page_size: messages per page; 0 means the server's default (100).
            start_seq: start at this seq (inclusive); 0 means the oldest, or with ``reverse`` the newest.
            reverse: newest first.
            page_token: resume from a page's ``next_page_token``.
            timeout: the deadline of each page's call.

        Returns:
            A pager: ``async for message in pager``, or ``pager.pages()`` for pages and their tokens.
        """

        async def fetch(token: str) -> Page[Message]:
            request = thread_memory_service_pb2.ListMessagesRequest(
                workspace_id=self._workspace_id,
                thread_id=thread_id,
                page_size=page_size,
                page_token=token,
                start_seq=start_seq,
                reverse=reverse,
            )
            resp: thread_memory_service_pb2.ListMessagesResponse = await self._unary(
                self._threads.ListMessages, request, timeout
            )
            return Page([_convert.message(m) for m in resp.messages], resp.next_page_token)

        return AsyncPager(fetch, page_token)

    async def stream_history(
        self,
        thread_id: str,
        *,
        after_seq: int = 0,
        chunk_size: int = 0,
        timeout: float | None = None,
        idle_timeout: float | None = None,
    ) -> AsyncIterator[Message]:
        """Stream a whole thread, oldest first, resuming by itself after a transient failure (StreamHistory).

        When the stream breaks with UNAVAILABLE (a server restart, a dropped connection) it is reopened
        after the last seq received, so every message arrives exactly once and in order. Memory stays
        flat at any thread length: messages are read in chunks.

        Args:
            thread_id: the thread.
            after_seq: start after this seq (0: from the first message).
            chunk_size: messages per chunk; 0 means the server's default (500).
            timeout: the whole stream's deadline in seconds; None (the default) for none.
            idle_timeout: the longest wait for one chunk; None means the client's ``stream_idle_timeout``.

        Yields:
            Each message.
        """
        async for chunk in self._history_chunks(thread_id, after_seq, chunk_size, timeout, idle_timeout):
            for m in chunk:
                yield m

    async def _history_chunks(
        self, thread_id: str, after_seq: int, chunk_size: int, timeout: float | None, idle_timeout: float | None
    ) -> AsyncIterator[list[Message]]:
        def open_stream(after: int, remaining: float | None) -> Any:
            request = thread_memory_service_pb2.StreamHistoryRequest(
                workspace_id=self._workspace_id, thread_id=thread_id, after_seq=after, chunk_size=chunk_size
            )
            return self._threads.StreamHistory(request, timeout=remaining)

        chunks = resumable_chunks(
            open_stream,
            after_seq=after_seq,
            policy=self._retry,
            timeout=timeout,
            idle_timeout=_seconds(idle_timeout, self._stream_idle_timeout),
        )
        async for chunk in chunks:
            yield [_convert.message(m) for m in chunk]

    def watch(
        self, thread_id: str, *, after_seq: int = 0, timeout: float | None = None, max_failures: int | None = None
    ) -> AsyncIterator[Message]:
        """Follow a thread live (WatchThread): each message after ``after_seq``, then each new one, in seq order.

        A dropped stream (a server restart, a lost connection) is reopened after the last seq received,
        with backoff, so every message arrives exactly once. The thread need not exist yet. Deleting it
        ends the iteration with ``NotFoundError``.

        Args:
            thread_id: the thread.
            after_seq: start after this seq (0: the whole thread first).
            timeout: stop after this many seconds (no error); None (the default) to watch until you stop.
            max_failures: consecutive failed reconnections before the error is raised; None to keep trying.

        Returns:
            An async iterator of messages.
        """
        return watch_thread(
            self._threads,
            self._workspace_id,
            thread_id,
            after_seq=after_seq,
            policy=self._retry,
            timeout=timeout,
            max_failures=max_failures,
        )

    async def get_context(
        self,
        *,
        thread_id: str | None = None,
        user_id: str | None = None,
        max_messages: int = 0,
        max_chars: int = 0,
        max_tokens: int | None = None,
        timeout: float | None = None,
    ) -> Context:
        """Return the prompt block for a thread and a user (GetContext).

        Args:
            thread_id: the thread; None means no ``Previous conversation:`` section.
            user_id: the user; None means no ``User preferences:`` section.
            max_messages: at most this many recent messages; 0 means the server's window.
            max_chars: at most this many characters in the whole block (whole lines only); 0: no limit.
            max_tokens: at most this many tokens of messages, chosen as ``get_history``'s ``max_tokens``
                chooses them; None (the default) means no token budget.
            timeout: the deadline in seconds, retries included.

        Returns:
            The block (``str(context)``) and what it holds.
        """
        request = thread_memory_service_pb2.GetContextRequest(
            workspace_id=self._workspace_id,
            thread_id=thread_id or "",
            user_id=user_id or "",
            max_messages=max_messages,
            max_chars=max_chars,
        )
        if max_tokens is not None:
            request.max_tokens = max_tokens
        resp: thread_memory_service_pb2.GetContextResponse = await self._unary(
            self._threads.GetContext, request, timeout
        )
        return _convert.context(resp)

    # Threads

    async def get_thread(self, thread_id: str, *, timeout: float | None = None) -> Thread:
        """Return a thread's metadata (GetThread).

        Args:
            thread_id: the thread.
            timeout: the deadline in seconds, retries included.

        Returns:
            The thread.

        Raises:
            NotFoundError: the thread does not exist.
        """
        request = thread_memory_service_pb2.GetThreadRequest(workspace_id=self._workspace_id, thread_id=thread_id)
        resp: thread_memory_service_pb2.GetThreadResponse = await self._unary(self._threads.GetThread, request, timeout)
        return _convert.thread(resp.thread)

    async def count(self, thread_id: str, *, timeout: float | None = None) -> int:
        """Return the number of messages in a thread; 0 when it does not exist.

        Args:
            thread_id: the thread.
            timeout: the deadline in seconds, retries included.

        Returns:
            The thread's length.
        """
        try:
            return (await self.get_thread(thread_id, timeout=timeout)).message_count
        except NotFoundError:
            return 0

    def list_threads(
        self, user_id: str, *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> AsyncPager[Thread]:
        """Page through a user's threads, newest first (ListThreads).

        Args:
            user_id: the user.
            page_size: threads per page; 0 means the server's default (100).
            page_token: resume from a page's ``next_page_token``.
            timeout: the deadline of each page's call.

        Returns:
            A pager: ``async for thread in pager``, or ``pager.pages()``.
        """

        async def fetch(token: str) -> Page[Thread]:
            request = thread_memory_service_pb2.ListThreadsRequest(
                workspace_id=self._workspace_id, user_id=user_id, page_size=page_size, page_token=token
            )
            resp: thread_memory_service_pb2.ListThreadsResponse = await self._unary(
                self._threads.ListThreads, request, timeout
            )
            return Page([_convert.thread(t) for t in resp.threads], resp.next_page_token)

        return AsyncPager(fetch, page_token)

    async def update_thread(
        self,
        thread_id: str,
        *,
        title: str | None = None,
        ttl: datetime.timedelta | float | None = None,
        pinned: bool | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Thread:
        """Change a thread's title, cache TTL or pin; only what is given changes (UpdateThread).

        Args:
            thread_id: the thread.
            title: the new title.
            ttl: the new cache TTL (timedelta or seconds); 0 restores the server's default.
            pinned: pin (True) or unpin (False) the cached window.
            request_id: the idempotency key; by default a fresh one.
            timeout: the deadline in seconds, retries included.

        Returns:
            The thread after the change.

        Raises:
            NotFoundError: the thread does not exist.
        """
        request = thread_memory_service_pb2.UpdateThreadRequest(
            workspace_id=self._workspace_id, thread_id=thread_id, request_id=request_id or new_request_id()
        )
        if title is not None:
            request.title = title
        if ttl is not None:
            request.ttl.CopyFrom(_convert.duration_to_pb(ttl))
        if pinned is not None:
            request.pinned = pinned
        resp: thread_memory_service_pb2.UpdateThreadResponse = await self._unary(
            self._threads.UpdateThread, request, timeout
        )
        return _convert.thread(resp.thread)

    async def delete_thread(
        self,
        thread_id: str,
        *,
        allow_missing: bool = False,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> int:
        """Delete a thread and all its messages from every tier (DeleteThread).

        Args:
            thread_id: the thread.
            allow_missing: succeed (returning 0) when the thread does not exist.
            request_id: the idempotency key; by default a fresh one.
            timeout: the deadline in seconds, retries included.

        Returns:
            How many messages were deleted from the durable store. A server in ``write_behind`` mode
            deletes the messages still queued for the store too, but does not count them.

        Raises:
            NotFoundError: the thread does not exist and ``allow_missing`` is False. A retry after a
                lost reply can see this too, since the first attempt already deleted the thread;
                ``clear`` does not have that ambiguity.
        """
        request = thread_memory_service_pb2.DeleteThreadRequest(
            workspace_id=self._workspace_id,
            thread_id=thread_id,
            request_id=request_id or new_request_id(),
            allow_missing=allow_missing,
        )
        resp: thread_memory_service_pb2.DeleteThreadResponse = await self._unary(
            self._threads.DeleteThread, request, timeout
        )
        return resp.deleted_messages

    async def clear(self, thread_id: str, *, timeout: float | None = None) -> int:
        """Forget a thread, as the seeds' ``memory.clear(conv_id)``: delete it if it exists.

        Args:
            thread_id: the thread.
            timeout: the deadline in seconds, retries included.

        Returns:
            How many messages were deleted from the durable store (0 if the thread did not exist);
            see ``delete_thread``.
        """
        return await self.delete_thread(thread_id, allow_missing=True, timeout=timeout)

    # Preferences

    @overload
    async def get_preferences(
        self, user_id: str, *, keys: Iterable[str] = ..., typed: Literal[False] = ..., timeout: float | None = ...
    ) -> ServedDict: ...

    @overload
    async def get_preferences(
        self, user_id: str, *, keys: Iterable[str] = ..., typed: Literal[True], timeout: float | None = ...
    ) -> ServedList[Preference]: ...

    @overload
    async def get_preferences(
        self, user_id: str, *, keys: Iterable[str] = ..., typed: bool, timeout: float | None = ...
    ) -> ServedDict | ServedList[Preference]: ...

    async def get_preferences(
        self, user_id: str, *, keys: Iterable[str] = (), typed: bool = False, timeout: float | None = None
    ) -> ServedDict | ServedList[Preference]:
        """Return some or all preferences of a user (GetPreferences).

        Args:
            user_id: the user.
            keys: only these keys; empty means all.
            typed: return ``Preference`` objects (with their update time) instead of a dict.
            timeout: the deadline in seconds, retries included.

        Returns:
            ``{key: value}`` sorted by key; or, with ``typed=True``, ``Preference`` objects. Either is a
            plain dict or list whose ``.serving`` says how the server answered.
        """
        request = preferences_service_pb2.GetPreferencesRequest(
            workspace_id=self._workspace_id, user_id=user_id, keys=list(keys)
        )
        resp: preferences_service_pb2.GetPreferencesResponse = await self._unary(
            self._prefs.GetPreferences, request, timeout
        )
        serving = _convert.serving(resp.serving)
        if typed:
            return ServedList([_convert.preference(p) for p in resp.preferences], serving)
        return ServedDict({p.key: p.value for p in resp.preferences}, serving)

    async def set_preferences(
        self,
        user_id: str,
        preferences: Mapping[str, str],
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> int:
        """Set (upsert) some preferences of a user (SetPreferences).

        Args:
            user_id: the user.
            preferences: the keys to set and their values; at least one.
            request_id: the idempotency key; by default a fresh one.
            timeout: the deadline in seconds, retries included.

        Returns:
            How many keys were written.
        """
        request = preferences_service_pb2.SetPreferencesRequest(
            workspace_id=self._workspace_id,
            user_id=user_id,
            preferences=dict(preferences),
            request_id=request_id or new_request_id(),
        )
        resp: preferences_service_pb2.SetPreferencesResponse = await self._unary(
            self._prefs.SetPreferences, request, timeout
        )
        return resp.updated_count

    async def delete_preferences(
        self,
        user_id: str,
        keys: Iterable[str] = (),
        *,
        all_keys: bool = False,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> int:
        """Delete some preferences of a user, or all of them (DeletePreferences).

        Args:
            user_id: the user.
            keys: the keys to delete; must be empty when ``all_keys`` is True.
            all_keys: delete every preference of the user.
            request_id: the idempotency key; by default a fresh one.
            timeout: the deadline in seconds, retries included.

        Returns:
            How many keys were deleted.
        """
        request = preferences_service_pb2.DeletePreferencesRequest(
            workspace_id=self._workspace_id,
            user_id=user_id,
            keys=list(keys),
            all=all_keys,
            request_id=request_id or new_request_id(),
        )
        resp: preferences_service_pb2.DeletePreferencesResponse = await self._unary(
            self._prefs.DeletePreferences, request, timeout
        )
        return resp.deleted_count

    # Administration

    async def delete_user(
        self, user_id: str, *, request_id: str | None = None, timeout: float | None = None
    ) -> UserDeletion:
        """Delete every thread (with its messages) and every preference of a user in the client's workspace.

        This is AdminService.DeleteUser: with authentication on, it needs an admin credential. It
        deletes from every tier, and nothing still queued for the store in ``write_behind`` mode is
        written back later. It deletes the threads that exist when it begins: an append that arrives
        after its thread was deleted starts a new thread, which survives, so stop the user's clients
        first (or call it again). It is idempotent, so the client retries it on UNAVAILABLE.

        Args:
            user_id: the user.
            request_id: an id for the server's audit record; by default a fresh one.
            timeout: the deadline in seconds, retries included.

        Returns:
            The counts of deleted threads, messages and preference keys.

        Raises:
            PermissionDeniedError: the credential is not an admin's.
            UnavailableError: the durable store is down (some threads may already be deleted; call again).
        """
        request = admin_service_pb2.DeleteUserRequest(
            workspace_id=self._workspace_id, user_id=user_id, request_id=request_id or new_request_id()
        )
        resp: admin_service_pb2.DeleteUserResponse = await self._unary(self._admin.DeleteUser, request, timeout)
        return UserDeletion(
            threads=resp.deleted_threads,
            messages=resp.deleted_messages,
            preferences=resp.deleted_preferences,
            serving=_convert.serving(resp.serving),
        )


def check_options(options: Mapping[str, Any]) -> None:
    """Raise TypeError naming any key that ``ConnectOptions`` does not define."""
    unknown = sorted(set(options) - set(ConnectOptions.__annotations__))
    if unknown:
        raise TypeError(f"unknown connect option(s): {', '.join(unknown)}")


class _Connecting:
    """What ``MemoryClient.connect`` returns: await it for the client, or ``async with`` it to also close it."""

    def __init__(self, cls: type[MemoryClient], target: str, options: ConnectOptions) -> None:
        self._cls = cls
        self._target = target
        self._options = options
        self._client: MemoryClient | None = None

    async def _open(self) -> MemoryClient:
        # The channel binds to the running loop, so it is created here and not in connect().
        self._client = self._cls._open(self._target, self._options)
        return self._client

    def __await__(self) -> Generator[Any, None, MemoryClient]:
        return self._open().__await__()

    async def __aenter__(self) -> MemoryClient:
        return await self._open()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._client is not None:
            await self._client.close()
