"""The watch relay over Redis pub/sub: append and removal notices between replicas, one channel per key prefix.

Notices of one event-loop tick go out as one PUBLISH, sent by a background task: an append never waits
for it. One subscriber connection per process receives the other replicas' notices; it pings to notice a
Redis that hangs, and reconnects with backoff. While it is down the hub's watchers poll the store.
On Redis Cluster classic PUBLISH reaches the subscribers of every node.

Every process hears every notice, its own included, so hearing one must be cheap: outside cluster mode
the subscription is a lean connection whose messages hiredis parses as they arrive (a few µs), not
redis-py's ``PubSub.get_message`` (about 150 µs a message, paid on every write_behind append).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from typing import Any

import hiredis

from server.storage.models import ThreadKey
from server.storage.redis.connection import PipelinedRedis
from server.storage.watch import WatchHub

log = logging.getLogger(__name__)

_PING_S = 1.0
_BACKOFF_S = (0.1, 0.2, 0.5, 1.0)
_STOP_ATTEMPTS = 50
_STOP_WAIT_S = 0.1


def _encode(origin: str, appended: dict[ThreadKey, int], removed: set[ThreadKey]) -> bytes:
    lines = [origin]
    lines += [f"a {k.workspace_id}/{k.thread_id} {seq}" for k, seq in appended.items()]
    lines += [f"d {k.workspace_id}/{k.thread_id}" for k in removed]
    return "\n".join(lines).encode()


def _key(name: str) -> ThreadKey:
    ws, _, thread = name.partition("/")
    return ThreadKey(ws, thread)


class RedisRelay:
    """Publishes this process's notices and feeds the other replicas' to the hub.

    Args:
        client: the redis.asyncio client (single node or cluster).
        prefix: the key prefix (REDIS__KEY_PREFIX): replicas sharing it share the channel.
        hub: the watch hub fed by the subscription.
        timeout_s: a subscription silent this long after a ping is deemed dead.
        publisher: a PipelinedRedis to PUBLISH through (a few µs a command instead of redis-py's ~40), or None.
        subscriber: a PipelinedRedis to subscribe through (see the module's docstring), or None for redis-py.
    """

    def __init__(
        self,
        client: Any,
        prefix: str,
        hub: WatchHub,
        *,
        timeout_s: float,
        publisher: PipelinedRedis | None = None,
        subscriber: PipelinedRedis | None = None,
    ) -> None:
        self._client = client
        self._publisher = publisher
        self._subscriber = subscriber
        self.channel = f"{prefix}:watch"
        self._hub = hub
        self._timeout_s = max(timeout_s, _PING_S) + _PING_S
        self._origin = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._appended: dict[ThreadKey, int] = {}
        self._removed: set[ThreadKey] = set()
        self._kick = asyncio.Event()
        self._live = False
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._warned_refusal = False

    @property
    def live(self) -> bool:
        """True while the subscription is up."""
        return self._live

    def publish_appended(self, key: ThreadKey, last_seq: int) -> None:
        """Queue an append notice for the next PUBLISH (only the newest seq per thread is kept)."""
        if last_seq > self._appended.get(key, 0):
            self._appended[key] = last_seq
        self._kick.set()

    def publish_removed(self, key: ThreadKey) -> None:
        """Queue a removal notice for the next PUBLISH."""
        self._removed.add(key)
        self._kick.set()

    def start(self) -> None:
        """Start the publisher and the subscriber."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._publish()), loop.create_task(self._subscribe())]

    async def stop(self) -> None:
        """Stop both tasks (notices still queued are dropped: watchers re-check on their own).

        A cancellation that lands while redis-py opens a connection can be lost inside it, so the tasks
        are cancelled again until they end, and their loops also check ``_stopping``.
        """
        self._stopping = True
        tasks, self._tasks = self._tasks, []
        for _ in range(_STOP_ATTEMPTS):
            pending = [t for t in tasks if not t.done()]
            if not pending:
                break
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=_STOP_WAIT_S)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.debug("a watch relay task ended with %r", task.exception())
        self._live = False
        if self._publisher is not None:
            await self._publisher.aclose()

    async def _publish(self) -> None:
        while not self._stopping:
            await self._kick.wait()
            self._kick.clear()
            appended, removed = self._appended, self._removed
            self._appended, self._removed = {}, set()
            payload = _encode(self._origin, appended, removed)
            try:
                if self._publisher is not None:
                    await self._publisher.execute(b"PUBLISH", self.channel, payload)
                else:
                    await self._client.publish(self.channel, payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a lost notice costs the other replicas one re-check interval
                log.debug("watch notices not published: %s", exc)

    async def _subscribe(self) -> None:
        if self._subscriber is not None:
            await self._subscribe_lean(self._subscriber)
            return
        failures = 0
        while not self._stopping:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                failures = 0
                await self._listen(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure of Redis means: poll the store, and reconnect
                self._lost(exc)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), 1.0)
            await asyncio.sleep(_BACKOFF_S[min(failures, len(_BACKOFF_S) - 1)])
            failures += 1

    async def _listen(self, pubsub: Any) -> None:
        loop = asyncio.get_running_loop()
        heard = loop.time()
        pinged = heard
        while not self._stopping:
            message = await pubsub.get_message(timeout=_PING_S)
            now = loop.time()
            if message is not None:
                heard = now
                kind = message.get("type")
                self._on_message(kind.encode() if isinstance(kind, str) else kind, message.get("data"))
            if now - heard > self._timeout_s:
                raise TimeoutError(f"no answer from redis for {now - heard:.1f}s")
            if now - pinged >= _PING_S:
                pinged = now
                await pubsub.ping()

    async def _subscribe_lean(self, subscriber: PipelinedRedis) -> None:
        failures = 0
        loop = asyncio.get_running_loop()
        while not self._stopping:
            heard = [loop.time()]
            refused: list[str] = []

            def on_push(message: Any, heard: list[float] = heard, refused: list[str] = refused) -> None:
                heard[0] = loop.time()
                if isinstance(message, list) and message:
                    self._on_message(message[0], message[2] if len(message) > 2 else b"")
                elif isinstance(message, hiredis.ReplyError):  # e.g. NOPERM: the ACL forbids the channel
                    refused.append(str(message))
                    if not self._warned_refusal:
                        self._warned_refusal = True
                        log.warning("redis refused the watch subscription (%s); watchers poll the store", message)

            subscription = None
            try:
                subscription = await subscriber.subscribe(self.channel, on_push)
                while not self._stopping:
                    await asyncio.sleep(_PING_S)
                    if not subscription.alive:
                        raise ConnectionError("the subscription's connection to redis was lost")
                    if refused:
                        raise ConnectionError(f"redis refused the subscription: {refused[0]}")
                    if loop.time() - heard[0] > self._timeout_s:
                        raise TimeoutError(f"no answer from redis for {loop.time() - heard[0]:.1f}s")
                    subscription.ping()
                    if self._live:
                        failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure of Redis means: poll the store, and reconnect
                self._lost(exc)
            finally:
                if subscription is not None:
                    subscription.close()
            await asyncio.sleep(_BACKOFF_S[min(failures, len(_BACKOFF_S) - 1)])
            failures += 1

    def _lost(self, exc: Exception) -> None:
        if self._live:
            log.warning("watch notices from other replicas stopped (%s); watchers poll the store", exc)
        self._live = False
        self._hub.wake_all()

    def _on_message(self, kind: bytes, data: Any) -> None:
        if kind == b"subscribe":
            if not self._live:
                self._live = True
                log.info("watch notices from other replicas flow (channel %s)", self.channel)
                self._hub.wake_all()  # what was missed while down is read now
        elif kind == b"message":
            self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        lines = data.decode().split("\n")
        if lines[0] == self._origin:
            return  # this process already woke its own watchers
        for line in lines[1:]:
            parts = line.split(" ")
            if parts[0] == "a" and len(parts) == 3:
                self._hub.note_appended(_key(parts[1]), int(parts[2]))
            elif parts[0] == "d" and len(parts) == 2:
                self._hub.note_removed(_key(parts[1]))
