"""SyncMemoryClient: the blocking client, a thin layer that runs MemoryClient on a private event loop thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Concatenate, Generic, Literal, ParamSpec, TypeVar, Unpack, overload

from chatmem._channel import DEFAULT_TARGET
from chatmem._client import ConnectOptions, MemoryClient, check_options
from chatmem._pager import AsyncPager, Page
from chatmem.types import Message, Preference, ServedDict, ServedList, Thread
from chatmem.v1 import preferences_service_pb2_grpc, thread_memory_service_pb2_grpc

P = ParamSpec("P")
T = TypeVar("T")


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def refuse_inside_event_loop(what: str) -> None:
    """Raise RuntimeError if the calling thread runs an event loop, which a blocking call would stall."""
    if not _in_event_loop():
        return
    raise RuntimeError(
        f"SyncMemoryClient.{what}() blocks, and was called inside a running event loop, which it would stall. "
        "In async code use chatmem.MemoryClient and await its methods (or run this call in a worker thread "
        "with asyncio.to_thread)."
    )


class _LoopThread:
    """A private event loop running in a daemon thread; the async client lives and runs on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="chatmem-sync-client", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the loop and wait for its result in the calling thread."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            # Ctrl-C in the caller must not leave the call running on the loop.
            future.cancel()
            raise

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start a coroutine on the loop without waiting."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def iterate(self, agen: AsyncIterator[T], what: str) -> Iterator[T]:
        """Drive an async iterator from the calling thread, one step per item; close it if abandoned."""
        try:
            while True:
                refuse_inside_event_loop(what)
                try:
                    item = self.run(_anext(agen))
                except StopAsyncIteration:
                    return
                yield item
        finally:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None and self.loop.is_running():
                closing = self.submit(aclose())
                if not _in_event_loop():  # never block a caller's loop, even to clean up
                    closing.result()

    def stop(self) -> None:
        """Finalize the loop's async generators, stop the loop and join its thread."""
        if self.loop.is_running():
            self.run(self.loop.shutdown_asyncgens())
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


async def _anext(agen: AsyncIterator[T]) -> T:
    return await agen.__anext__()


def _blocking(
    fn: Callable[Concatenate[MemoryClient, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[SyncMemoryClient, P], T]:
    """Make a blocking method of SyncMemoryClient from a coroutine method of MemoryClient."""

    @functools.wraps(fn)
    def method(self: SyncMemoryClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        refuse_inside_event_loop(fn.__name__)
        return self._portal.run(fn(self._client, *args, **kwargs))

    return method


@dataclass(frozen=True, slots=True)
class SyncRawStubs:
    """The generated stubs on a blocking channel to the same server, with the same credentials and metadata.

    Attributes:
        channel: the blocking ``grpc.Channel``.
        threads: ``chatmem.v1.ThreadMemoryService``.
        preferences: ``chatmem.v1.PreferencesService``.
    """

    channel: Any
    threads: thread_memory_service_pb2_grpc.ThreadMemoryServiceStub
    preferences: preferences_service_pb2_grpc.PreferencesServiceStub


class SyncPager(Generic[T]):
    """The items of a List RPC, fetched a page at a time, for blocking code.

    ``for item in pager`` walks every item of every page; ``pager.pages()`` walks the pages.
    """

    def __init__(self, pager: AsyncPager[T], portal: _LoopThread, what: str) -> None:
        self._pager = pager
        self._portal = portal
        self._what = what

    def pages(self) -> Iterator[Page[T]]:
        """Yield the pages in order, fetching each one when the previous one is used up."""
        return self._portal.iterate(self._pager.pages(), self._what)

    def __iter__(self) -> Iterator[T]:
        for page in self.pages():
            yield from page.items

    def collect(self) -> list[T]:
        """Return every item of every page, in order."""
        return list(self)


class SyncMemoryClient:
    """The blocking client of a chatmem server: the methods of ``MemoryClient``, without ``await``.

    It runs a ``MemoryClient`` on a private event loop in a background thread, so it behaves exactly
    like the async client (deadlines, retries, errors) and is safe to share between threads. Its
    methods refuse to run inside a running event loop, where blocking would stall every other task:
    use ``MemoryClient`` there.

    Open it with ``SyncMemoryClient.connect(...)``; use it in a ``with`` block or call ``close()``.
    """

    def __init__(self, client: MemoryClient, portal: _LoopThread) -> None:
        self._client = client
        self._portal = portal
        self._raw: SyncRawStubs | None = None
        self._closed = False
        self._lock = threading.Lock()

    @classmethod
    def connect(cls, target: str = DEFAULT_TARGET, **options: Unpack[ConnectOptions]) -> SyncMemoryClient:
        """Connect to a server; the options are those of ``MemoryClient.connect`` (see ``ConnectOptions``).

        Args:
            target: ``host:port`` of the server (default ``127.0.0.1:50051``).
            **options: ``credentials``, ``tls``, ``root_certificates``, ``private_key``,
                ``certificate_chain``, ``api_key``, ``metadata``, ``timeout``, ``workspace_id``, ``retry``,
                ``stream_idle_timeout``, ``options``.

        Returns:
            The client. The channel connects lazily, as with ``MemoryClient``.

        Raises:
            TypeError: an unknown option.
        """
        check_options(options)
        portal = _LoopThread()

        async def open_client() -> MemoryClient:
            return MemoryClient._open(target, options)

        try:
            client = portal.run(open_client())
        except BaseException:
            portal.stop()
            raise
        return cls(client, portal)

    @property
    def workspace_id(self) -> str:
        """The workspace of every call (``""`` is the server's ``default``)."""
        return self._client.workspace_id

    @property
    def aio(self) -> MemoryClient:
        """The async client underneath; it runs on this client's private loop, never on the caller's."""
        return self._client

    @property
    def raw(self) -> SyncRawStubs:
        """The generated stubs on a blocking channel with the same target, credentials and metadata.

        The channel is opened on first use and closed by ``close``.
        """
        with self._lock:
            if self._raw is None:
                spec = self._client._spec
                if spec is None:
                    raise RuntimeError("this client was built on a channel, not by connect(); it has no target")
                channel = spec.open_blocking()
                self._raw = SyncRawStubs(
                    channel,
                    thread_memory_service_pb2_grpc.ThreadMemoryServiceStub(channel),
                    preferences_service_pb2_grpc.PreferencesServiceStub(channel),
                )
            return self._raw

    def close(self) -> None:
        """Close the channels and stop the private loop; calling it again does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._raw is not None:
                self._raw.channel.close()
        try:
            self._portal.run(self._client.close())
        finally:
            self._portal.stop()

    def __enter__(self) -> SyncMemoryClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Sync{self._client!r}"

    def _submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start a coroutine of the async client on the private loop (for async callers in other loops)."""
        return self._portal.submit(coro)

    append = _blocking(MemoryClient.append)
    append_messages = _blocking(MemoryClient.append_messages)
    get_context = _blocking(MemoryClient.get_context)
    get_thread = _blocking(MemoryClient.get_thread)
    count = _blocking(MemoryClient.count)
    update_thread = _blocking(MemoryClient.update_thread)
    delete_thread = _blocking(MemoryClient.delete_thread)
    fork_thread = _blocking(MemoryClient.fork_thread)
    truncate_thread = _blocking(MemoryClient.truncate_thread)
    pop_message = _blocking(MemoryClient.pop_message)
    compact_thread = _blocking(MemoryClient.compact_thread)
    clear = _blocking(MemoryClient.clear)
    set_preferences = _blocking(MemoryClient.set_preferences)
    delete_preferences = _blocking(MemoryClient.delete_preferences)
    delete_user = _blocking(MemoryClient.delete_user)

    @overload
    def get_history(
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
    def get_history(
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
    def get_history(
        self,
        thread_id: str,
        *,
        limit: int = ...,
        typed: bool,
        max_tokens: int | None = ...,
        keep_system_prefix: bool = ...,
        timeout: float | None = ...,
    ) -> ServedList[dict[str, str]] | ServedList[Message]: ...

    def get_history(
        self,
        thread_id: str,
        *,
        limit: int = 0,
        typed: bool = False,
        max_tokens: int | None = None,
        keep_system_prefix: bool = False,
        timeout: float | None = None,
    ) -> ServedList[dict[str, str]] | ServedList[Message]:
        """Return the recent window of a thread, oldest first; see ``MemoryClient.get_history``.

        Args:
            thread_id: the thread; an unknown one has an empty history.
            limit: how many of the newest messages; 0 means the server's window.
            typed: return ``Message`` objects instead of ``{"role", "content"}`` dicts.
            max_tokens: at most this many tokens, the newest messages that fit; None means no token budget.
            keep_system_prefix: with ``max_tokens``, always return the leading system and developer messages.
            timeout: the deadline in seconds, retries included.

        Returns:
            The seeds' chat-config history, or ``Message`` objects with ``typed=True``; a list with ``.serving``.
        """
        refuse_inside_event_loop("get_history")
        return self._portal.run(
            self._client.get_history(
                thread_id,
                limit=limit,
                typed=typed,
                max_tokens=max_tokens,
                keep_system_prefix=keep_system_prefix,
                timeout=timeout,
            )
        )

    @overload
    def get_preferences(
        self, user_id: str, *, keys: Iterable[str] = ..., typed: Literal[False] = ..., timeout: float | None = ...
    ) -> ServedDict: ...

    @overload
    def get_preferences(
        self, user_id: str, *, keys: Iterable[str] = ..., typed: Literal[True], timeout: float | None = ...
    ) -> ServedList[Preference]: ...

    @overload
    def get_preferences(
        self, user_id: str, *, keys: Iterable[str] = ..., typed: bool, timeout: float | None = ...
    ) -> ServedDict | ServedList[Preference]: ...

    def get_preferences(
        self, user_id: str, *, keys: Iterable[str] = (), typed: bool = False, timeout: float | None = None
    ) -> ServedDict | ServedList[Preference]:
        """Return some or all preferences of a user; see ``MemoryClient.get_preferences``.

        Args:
            user_id: the user.
            keys: only these keys; empty means all.
            typed: return ``Preference`` objects instead of a dict.
            timeout: the deadline in seconds, retries included.

        Returns:
            ``{key: value}``, or ``Preference`` objects with ``typed=True``; with ``.serving``.
        """
        refuse_inside_event_loop("get_preferences")
        return self._portal.run(self._client.get_preferences(user_id, keys=keys, typed=typed, timeout=timeout))

    def list_messages(
        self,
        thread_id: str,
        *,
        page_size: int = 0,
        start_seq: int = 0,
        reverse: bool = False,
        page_token: str = "",
        timeout: float | None = None,
    ) -> SyncPager[Message]:
        """Page through a whole thread; see ``MemoryClient.list_messages``.

        Args:
            thread_id: the thread.
            page_size: messages per page; 0 means the server's default.
            start_seq: start at this seq (inclusive); 0 means the oldest (or, with ``reverse``, the newest).
            reverse: newest first.
            page_token: resume from a page's ``next_page_token``.
            timeout: the deadline of each page's call.

        Returns:
            A pager: ``for message in pager``, or ``pager.pages()``.
        """
        pager = self._client.list_messages(
            thread_id, page_size=page_size, start_seq=start_seq, reverse=reverse, page_token=page_token, timeout=timeout
        )
        return SyncPager(pager, self._portal, "list_messages")

    def list_threads(
        self, user_id: str, *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> SyncPager[Thread]:
        """Page through a user's threads, newest first; see ``MemoryClient.list_threads``.

        Args:
            user_id: the user.
            page_size: threads per page; 0 means the server's default.
            page_token: resume from a page's ``next_page_token``.
            timeout: the deadline of each page's call.

        Returns:
            A pager: ``for thread in pager``, or ``pager.pages()``.
        """
        pager = self._client.list_threads(user_id, page_size=page_size, page_token=page_token, timeout=timeout)
        return SyncPager(pager, self._portal, "list_threads")

    def stream_history(
        self,
        thread_id: str,
        *,
        after_seq: int = 0,
        chunk_size: int = 0,
        timeout: float | None = None,
        idle_timeout: float | None = None,
    ) -> Iterator[Message]:
        """Stream a whole thread, oldest first, resuming by itself; see ``MemoryClient.stream_history``.

        Args:
            thread_id: the thread.
            after_seq: start after this seq (0: from the first message).
            chunk_size: messages per chunk; 0 means the server's default.
            timeout: the whole stream's deadline in seconds; None for none.
            idle_timeout: the longest wait for one chunk; None means the client's ``stream_idle_timeout``.

        Yields:
            Each message.
        """
        # One hop to the loop per chunk, not per message, so that a long thread streams at full speed.
        chunks = self._client._history_chunks(thread_id, after_seq, chunk_size, timeout, idle_timeout)
        for chunk in self._portal.iterate(chunks, "stream_history"):
            yield from chunk

    def watch(
        self, thread_id: str, *, after_seq: int = 0, timeout: float | None = None, max_failures: int | None = None
    ) -> Iterator[Message]:
        """Follow a thread live, resuming by itself; see ``MemoryClient.watch``.

        Args:
            thread_id: the thread.
            after_seq: start after this seq (0: the whole thread first).
            timeout: stop after this many seconds (no error); None to watch until you stop iterating.
            max_failures: consecutive failed reconnections before the error is raised; None to keep trying.

        Yields:
            Each message.
        """
        messages = self._client.watch(thread_id, after_seq=after_seq, timeout=timeout, max_failures=max_failures)
        yield from self._portal.iterate(messages, "watch")
