"""A lean, auto-pipelined Redis connection for the cache scripts: few writes, replies matched in order.

redis-py spends about 40 µs of CPU per command here (connection pool, retry wrapper, streams and a
timeout per read), and every command of every concurrent request pays a write and a read of its own.
The cache scripts are one command per request on the hot path, so they go through this instead:
one connection on which the commands issued during one event-loop tick leave in one write, and
replies are matched to their callers in order (Redis answers a connection's commands in order).
While earlier commands still wait for their replies, new ones are held and leave in one write when
those replies arrive (or when the batch is full): under load, many requests share each write and
each read, and an idle connection still writes at once, so a lone request waits for nothing.

It speaks just enough RESP2 for EVALSHA/EVAL (hiredis parses and packs), and raises redis-py's
exception classes, so the callers' error handling is the same for both clients. Everything else
(the flusher's blocking stream reads, probes, cluster mode) stays on redis-py.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from collections.abc import Callable
from typing import Any, cast

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

# How long a watchdog that found Redis silent waits before it gives up on the connection: long enough
# for the event loop to poll for I/O once in between (uvloop runs due timers before it reads sockets, so
# on a busy loop a reply can be waiting unread when the timer fires).
_CONFIRM_S = 0.02
# However steadily Redis answers, a command that waited this many timeouts fails the connection: a Redis
# that slow is as good as down, and it bounds how long any call can stay in flight (which a write around
# Redis waits out first: Tiers.settle).
PATIENCE = 3


def _retrieve(attempt: asyncio.Future[Any]) -> None:
    # A connect attempt whose callers all gave up: take its error so that asyncio does not log it.
    if not attempt.cancelled():
        attempt.exception()


# Commands held while replies are due leave at once when this many have gathered.
MAX_HELD = 256


def _pack(args: tuple[Any, ...]) -> bytes:
    # hiredis packs in C (its stub returns Any).
    return hiredis.pack_command(args)  # type: ignore[no-any-return]


def pack(*args: Any) -> bytes:
    """Return a command in RESP form, for a caller that sends the same command many times."""
    return _pack(args)


class _Link(asyncio.Protocol):
    """One TCP (or TLS, or Unix socket) connection: a write buffer flushed once per tick, replies in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        self._loop = loop
        self._timeout_s = timeout_s
        self._reader = hiredis.Reader()
        # (caller, when its command was queued)
        self._waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._heard = loop.time()  # when Redis last sent anything
        self._suspect = False
        self._outgoing: list[bytes] = []
        self._flush_scheduled = False
        self._watchdog: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None
        self._on_push: Callable[[Any], None] | None = None
        self.alive = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport (uvloop's transports do not subclass asyncio's, hence the cast)."""
        self._transport = cast(asyncio.Transport, transport)
        self.alive = True

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail every caller still waiting: their replies will never come."""
        self._fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    def data_received(self, data: bytes) -> None:
        """Parse replies and hand each to the oldest waiting caller, then send what was held meanwhile."""
        self._heard = self._loop.time()
        self._reader.feed(data)
        if self._on_push is not None:
            while (pushed := self._reader.gets()) is not False:
                self._on_push(pushed)
            return
        while (reply := self._reader.gets()) is not False:
            if not self._waiting:
                self._fail(RedisConnectionError("Redis sent a reply nobody asked for"))
                return
            future, _ = self._waiting.popleft()
            if future.done():  # the caller gave up (its deadline passed); the reply is dropped
                continue
            if isinstance(reply, hiredis.ReplyError):
                message = str(reply)
                future.set_exception(
                    NoScriptError(message) if message.startswith("NOSCRIPT") else ResponseError(message)
                )
            else:
                future.set_result(reply)
        if self._outgoing and not self._flush_scheduled:
            self._flush()

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        """Queue a packed command for the next write; the future gets its reply."""
        if not self.alive:
            raise RedisConnectionError("connection to Redis is closed")
        future: asyncio.Future[Any] = self._loop.create_future()
        # Without a write scheduled, every command in _waiting has been sent: its replies are due, and
        # data_received sends this one with the others that gather meanwhile.
        held = bool(self._waiting) and not self._flush_scheduled
        self._waiting.append((future, self._loop.time()))
        self._outgoing.append(packed)
        if not self._flush_scheduled and (not held or len(self._outgoing) >= MAX_HELD):
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        if self._watchdog is None:
            self._watchdog = self._loop.call_later(self._timeout_s, self._check)
        return future

    def push_mode(self, on_push: Callable[[Any], None], packed: bytes) -> None:
        """Send ``packed`` (a SUBSCRIBE) and hand every message from now on to ``on_push``, in order."""
        self._on_push = on_push
        self.write(packed)

    def write(self, packed: bytes) -> None:
        """Send a command whose reply nobody waits for (a PING on a subscribed connection)."""
        if self._transport is not None and self.alive:
            self._transport.write(packed)

    def close(self) -> None:
        """Close the connection; waiting callers fail."""
        if self._transport is not None:
            self._transport.close()
        self._fail(RedisConnectionError("connection to Redis closed"))

    def _flush(self) -> None:
        self._flush_scheduled = False
        outgoing, self._outgoing = self._outgoing, []
        if not outgoing or self._transport is None or not self.alive:
            return
        # The unsent commands are the newest callers in _waiting. One whose caller gave up before it left
        # (a deadline, a cancel) is not sent at all: nobody counts it as in flight any more (Tiers.settle),
        # so Redis must not run it after a write that went around Redis meanwhile.
        unsent = [self._waiting.pop() for _ in outgoing]
        unsent.reverse()
        sending = []
        for entry, packed in zip(unsent, outgoing, strict=True):
            if not entry[0].done():
                self._waiting.append(entry)
                sending.append(packed)
        if sending:
            self._transport.writelines(sending)

    def _check(self) -> None:
        # Redis answers a connection's commands in order, so while bytes arrive it is working through
        # them however deep the queue (a slow Redis, or one starved of CPU): only silence counts, from the
        # later of the oldest command's queueing and the last byte heard. Silent for timeout_s, checked
        # again after one poll for I/O, the connection is stuck (a frozen or partitioned Redis): give up
        # on all of it, as redis-py does on a socket timeout.
        self._watchdog = None
        if not self._waiting:
            self._suspect = False
            return
        oldest = self._waiting[0][1]
        now = self._loop.time()
        left = min(max(oldest, self._heard) + self._timeout_s, oldest + PATIENCE * self._timeout_s) - now
        if left > 0:
            self._suspect = False
            self._watchdog = self._loop.call_later(left, self._check)
            return
        if not self._suspect:
            self._suspect = True
            self._watchdog = self._loop.call_later(_CONFIRM_S, self._check)
            return
        if self._transport is not None:
            self._transport.abort()
        self._fail(RedisTimeoutError(f"Redis sent nothing for {self._timeout_s}s (or took {PATIENCE}x that)"))

    def _fail(self, exc: Exception) -> None:
        self.alive = False
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        while self._waiting:
            future, _ = self._waiting.popleft()
            if not future.done():
                future.set_exception(exc)
        self._outgoing = []


class Subscription:
    """A subscribed connection: ping it, check it is alive, close it."""

    def __init__(self, link: _Link) -> None:
        self._link = link

    @property
    def alive(self) -> bool:
        """False once the connection is lost or closed."""
        return self._link.alive

    def ping(self) -> None:
        """Send a PING; its ``[b"pong", b""]`` comes through ``on_push``."""
        self._link.write(_pack((b"PING",)))

    def close(self) -> None:
        """Close the connection."""
        self._link.close()


class ConnectCounter:
    """Counts the connections opened to Redis: a new one may follow a Redis restart, which repairs must see."""

    def __init__(self) -> None:
        self.count = 0

    def bump(self) -> None:
        """Count one connection opened."""
        self.count += 1

    async def redis_py_hook(self, connection: Any) -> None:
        """Do the usual handshake, then count the connection (a redis-py ``redis_connect_func``)."""
        await connection.on_connect()
        self.count += 1


class PipelinedRedis:
    """A Redis client for scripts whose concurrent commands share one connection and one write per tick.

    Args:
        host: the server's host (ignored with ``path``).
        port: the server's port.
        path: a Unix socket path, instead of host and port.
        db: the database to SELECT.
        username: the ACL user, if any.
        password: the password to AUTH with, if any.
        ssl_context: TLS settings for ``rediss://``, or None.
        server_hostname: the name to check the TLS certificate against.
        timeout_s: how long Redis may stay silent while a command waits before the connection is declared
            stuck (a Redis that keeps answering, however slowly, is waited for).
        connect_timeout_s: how long connecting (and AUTH/SELECT) may take.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 6379,
        path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        timeout_s: float,
        connect_timeout_s: float,
        on_connect: Callable[[], None] | None = None,
    ) -> None:
        self._on_connect = on_connect
        self._host, self._port, self._path, self._db = host, port, path, db
        self._username, self._password = username, password
        self._ssl, self._server_hostname = ssl_context, server_hostname
        self._timeout_s, self._connect_timeout_s = timeout_s, connect_timeout_s
        self._link: _Link | None = None
        self._connecting: asyncio.Future[_Link] | None = None

    @classmethod
    def like(
        cls, client: Any, *, timeout_s: float, connect_timeout_s: float, on_connect: Callable[[], None] | None = None
    ) -> PipelinedRedis | None:
        """Build one that connects as a redis.asyncio client's pool does, or None if that is not possible.

        A cluster client, or a connection class this does not know, keeps using redis-py alone.
        """
        pool = getattr(client, "connection_pool", None)
        if pool is None:
            return None
        kwargs = dict(pool.connection_kwargs)
        kind = pool.connection_class.__name__
        context = None
        if kind == "SSLConnection":
            try:
                # redis-py's own TLS settings (CA, client certificate, verification) from the same URL.
                context = pool.make_connection().ssl_context.get()
            except Exception:
                log.warning("TLS settings not understood; cache scripts use redis-py", exc_info=True)
                return None
        elif kind not in ("Connection", "UnixDomainSocketConnection"):
            return None
        return cls(
            host=kwargs.get("host", "127.0.0.1"),
            port=int(kwargs.get("port", 6379)),
            path=kwargs.get("path"),
            db=int(kwargs.get("db", 0) or 0),
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            ssl_context=context,
            server_hostname=kwargs.get("host") if context is not None else None,
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            on_connect=on_connect,
        )

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        """Run a loaded script (raises NoScriptError when Redis does not have it)."""
        return await self.execute(b"EVALSHA", sha, numkeys, *keys_and_args)

    async def eval(self, script: str, numkeys: int, *keys_and_args: Any) -> Any:
        """Run (and load) a script."""
        return await self.execute(b"EVAL", script, numkeys, *keys_and_args)

    async def execute(self, *args: Any) -> Any:
        """Send one command with this tick's others and return its reply."""
        return await self.execute_packed(_pack(args))

    async def execute_packed(self, packed: bytes) -> Any:
        """Send a command already in RESP form (see ``pack``) and return its reply."""
        link = self._link
        if link is None or not link.alive:
            link = await self._connect()
        return await link.send(packed)

    async def subscribe(self, channel: str, on_push: Callable[[Any], None]) -> Subscription:
        """Open a connection subscribed to ``channel``; every message it brings goes to ``on_push``.

        The subscription has a connection of its own (a subscribed connection runs no other commands);
        ``on_push`` gets replies as hiredis parses them: ``[b"subscribe", channel, n]``,
        ``[b"message", channel, data]``, ``[b"pong", b""]``.
        """
        link = await self._open_link()
        link.push_mode(on_push, _pack((b"SUBSCRIBE", channel)))
        return Subscription(link)

    async def aclose(self) -> None:
        """Close the connection."""
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        if self._link is not None:
            self._link.close()
            self._link = None

    async def _connect(self) -> _Link:
        # One attempt at a time, shared by every caller that needs it: when Redis is frozen or
        # unreachable, the callers waiting on it all fail together after one connect timeout, instead
        # of queueing for one attempt each.
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._open())
            self._connecting.add_done_callback(_retrieve)
        return await asyncio.shield(self._connecting)

    async def _open(self) -> _Link:
        link = await self._open_link()
        self._link = link
        if self._on_connect is not None:
            self._on_connect()
        return link

    async def _open_link(self) -> _Link:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                if self._path:
                    _, link = await loop.create_unix_connection(lambda: _Link(loop, self._timeout_s), self._path)
                else:
                    _, link = await loop.create_connection(
                        lambda: _Link(loop, self._timeout_s),
                        self._host,
                        self._port,
                        ssl=self._ssl,
                        server_hostname=self._server_hostname,
                    )
                await self._handshake(link)
        except TimeoutError as exc:
            raise RedisTimeoutError(f"connecting to Redis took over {self._connect_timeout_s}s") from exc
        except OSError as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
        return link

    async def _handshake(self, link: _Link) -> None:
        try:
            if self._password:
                auth = (self._username, self._password) if self._username else (self._password,)
                await link.send(_pack((b"AUTH", *auth)))
            if self._db:
                await link.send(_pack((b"SELECT", self._db)))
        except BaseException:
            link.close()
            raise
