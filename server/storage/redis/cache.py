"""The Redis tier (L1): thread windows and preference hashes, one script call per operation."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

from server.storage.codec import frame_item
from server.storage.models import (
    PreferenceChange,
    PreferenceSet,
    QueuedReply,
    QueuedRequest,
    Seed,
    ThreadInfo,
    ThreadKey,
    WindowRead,
)
from server.storage.protocols import CacheUnavailableError
from server.storage.redis import scripts
from server.storage.redis.connection import ConnectCounter, PipelinedRedis
from server.storage.redis.keys import KeySpace
from server.storage.redis.scripts import Script

log = logging.getLogger(__name__)

MAX_CACHED_PREFERENCES = 2000


_FORGET_BATCH = 500  # ids per HDEL, so that a huge truncate does not block Redis on one command


class RedisCache:
    """Cache Protocol over redis.asyncio (works with a Redis or a RedisCluster client).

    Args:
        client: a redis.asyncio client with decode_responses=False.
        keys: the key space.
        window: how many newest messages a thread window keeps.
        thread_ttl_s: default sliding TTL of a window.
        prefs_ttl_s: TTL of a preferences hash.
        tombstone_ttl_s: how long a deleted thread's tombstone fences out late writes.
        scripts_client: the client that runs the Lua scripts (default: ``client``), e.g. a PipelinedRedis.
        cluster: ``client`` is a Redis Cluster client (each bucket is degraded and repaired on its own).
        connects: counts the connections the clients open (see ConnectCounter).
    """

    def __init__(
        self,
        client: Any,
        keys: KeySpace,
        *,
        window: int,
        thread_ttl_s: int,
        prefs_ttl_s: int,
        tombstone_ttl_s: int = 120,
        scripts_client: Any = None,
        cluster: bool = False,
        connects: ConnectCounter | None = None,
    ) -> None:
        self._client = client
        self._cluster = cluster
        self._connects = connects
        # The scripts (every request's one command) may go through a lean pipelined connection.
        self._scripts_client = scripts_client if scripts_client is not None else client
        self._keys = keys
        self._window = window
        self._thread_ttl_s = thread_ttl_s
        self._prefs_ttl_s = prefs_ttl_s
        self._tombstone_ttl_s = tombstone_ttl_s
        self._read_window = Script(scripts.READ_WINDOW)
        self._read_window_or_pending = Script(scripts.READ_WINDOW_OR_PENDING)
        self._fill_window = Script(scripts.FILL_WINDOW)
        self._push_window = Script(scripts.PUSH_WINDOW)
        self._drop_thread = Script(scripts.DROP_THREAD)
        self._reconcile_thread = Script(scripts.RECONCILE_THREAD)
        self._trim_thread = Script(scripts.TRIM_THREAD)
        self._thread_incarnation = Script(scripts.THREAD_INCARNATION)
        self._append_queued = Script(scripts.APPEND_QUEUED)
        self._pending_seq = Script(scripts.PENDING_SEQ)
        self._retune_window = Script(scripts.RETUNE_WINDOW)
        self._read_prefs = Script(scripts.READ_PREFS)
        self._fill_prefs = Script(scripts.FILL_PREFS)
        self._apply_prefs = Script(scripts.APPLY_PREFS)

    @property
    def window(self) -> int:
        """The number of newest messages a cached window holds."""
        return self._window

    def _ttl(self, thread: ThreadInfo) -> int:
        if thread.pinned:
            return 0
        return thread.ttl_seconds or self._thread_ttl_s

    async def _run(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await script(self._scripts_client, keys, args)
        except ResponseError as exc:
            log.error("redis rejected a cache script: %s", exc)
            raise CacheUnavailableError(str(exc)) from exc
        except Exception as exc:
            # Any failure of the cache tier degrades; none may become INTERNAL (redis-py's cluster client
            # has raised AttributeError on a connection that a failover closed under it).
            raise CacheUnavailableError(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        """Close the clients and the pool."""
        if self._scripts_client is not self._client:
            await self._scripts_client.aclose()
        await self._client.aclose()

    def pool_stats(self) -> dict[str, int]:
        """Return the connection pool's counts (``created``, ``in_use``, ``available``, ``max``); {} for a cluster."""
        pool: Any = getattr(self._client, "connection_pool", None)
        # redis-py keeps these as private lists/sets; len() of them is all that is read.
        available = getattr(pool, "_available_connections", None)
        in_use = getattr(pool, "_in_use_connections", None)
        if available is None or in_use is None:
            return {}
        free, busy = len(available), len(in_use)
        return {"created": free + busy, "in_use": busy, "available": free, "max": int(pool.max_connections)}

    @property
    def in_process(self) -> bool:
        """False: Redis is shared, so writes may go around it and it is guarded by breakers and repairs."""
        return False

    @property
    def sharded(self) -> bool:
        """True on Redis Cluster: each bucket may fail (and is degraded and repaired) on its own."""
        return self._cluster

    @property
    def connects(self) -> int:
        """How many connections to Redis the clients opened so far."""
        return 0 if self._connects is None else self._connects.count

    async def ping(self, bucket: int | None = None, fresh: bool = False) -> None:
        """Round-trip to Redis (on Redis Cluster, to the master of the bucket's slot).

        With ``fresh`` (the probe of a breaker that is open), idle pooled connections are dropped first:
        after Redis restarts they are all dead, and a probe that succeeded on a new one would hand
        requests the old ones.
        """
        try:
            pool = getattr(self._client, "connection_pool", None)
            if fresh and pool is not None:
                await pool.disconnect(inuse_connections=False)
            if isinstance(self._scripts_client, PipelinedRedis):
                # The scripts' own connection, which tells a slow Redis from a silent one (REDIS__DEAD_AFTER_S):
                # a busy machine must not open the breaker by a socket timeout that the scripts would have waited out.
                await self._scripts_client.execute(b"PING")
            elif bucket is None or not self._cluster:
                await self._client.ping()
            else:
                await self._client.exists(self._keys.probe(bucket))
        except Exception as exc:
            raise CacheUnavailableError(f"{type(exc).__name__}: {exc}") from exc

    async def read_window(self, key: ThreadKey, limit: int) -> list[bytes] | None:
        """Return the newest ``limit`` messages of a valid window (framed items), refreshing its TTL."""
        k = self._keys.thread(key.workspace_id, key.thread_id)
        items = await self._run(self._read_window, (k.msgs, k.meta), (limit,))
        return list(items) if items else None

    async def read_window_or_pending(self, key: ThreadKey, limit: int) -> WindowRead:
        """Read the window as read_window does; on a miss, also return the thread's unflushed state."""
        k = self._keys.thread(key.workspace_id, key.thread_id)
        found = await self._run(self._read_window_or_pending, (k.msgs, k.meta, k.pending), (limit, k.field))
        if found and isinstance(found[0], bytes):
            return WindowRead(list(found))
        newest, flushed, fence = int(found[0]), int(found[1]), int(found[2])
        return WindowRead(None, (newest, flushed) if newest else None, fence)

    async def fill_window(self, thread: ThreadInfo, encoded: Sequence[bytes], fence: int | None = None) -> bool:
        """Replace the window with a store read unless fenced; True if it landed.

        ``fence`` is the trim generation the missed read saw (WindowRead.fence): a retention trim since
        then refuses the fill. None skips that check.
        """
        k = self._keys.thread(thread.workspace_id, thread.thread_id)
        framed = [frame_item(e) for e in encoded[-self._window :]]
        fence_arg = -1 if fence is None else fence
        args = (thread.incarnation, thread.last_seq, self._ttl(thread), self._window, fence_arg, *framed)
        return bool(await self._run(self._fill_window, (k.msgs, k.meta), args))

    async def push_window(self, thread: ThreadInfo, first_seq: int, encoded: Sequence[bytes]) -> bool:
        """Extend a contiguous window after a commit, else invalidate it; True if extended."""
        k = self._keys.thread(thread.workspace_id, thread.thread_id)
        last = first_seq + len(encoded) - 1
        # Only the newest `window` can survive the trim, and Lua's unpack() refuses ~8000 arguments.
        tail = [frame_item(e) for e in encoded[-self._window :]]
        args = (thread.incarnation, first_seq, last, self._ttl(thread), self._window, *tail)
        return bool(await self._run(self._push_window, (k.msgs, k.meta), args))

    async def drop_thread(self, key: ThreadKey, incarnation: int) -> None:
        """Forget a deleted thread (window, request ids, pending marker) and leave a tombstone."""
        k = self._keys.thread(key.workspace_id, key.thread_id)
        await self._run(
            self._drop_thread, (k.msgs, k.meta, k.reqs, k.pending), (incarnation, self._tombstone_ttl_s, k.field)
        )

    async def trim_thread(self, key: ThreadKey, incarnation: int, removed: int) -> None:
        """After retention deleted old messages of a live thread: drop its window, lower its counted length."""
        k = self._keys.thread(key.workspace_id, key.thread_id)
        args = (incarnation, removed, k.field, self._thread_ttl_s)
        await self._run(self._trim_thread, (k.msgs, k.meta, k.pending), args)

    async def forget_message_ids(self, key: ThreadKey, message_ids: Sequence[str]) -> None:
        """Forget queued message ids of a thread (scripts.APPEND_QUEUED keeps them as '#' + id in reqs)."""
        k = self._keys.thread(key.workspace_id, key.thread_id)
        for start in range(0, len(message_ids), _FORGET_BATCH):
            await self._client.hdel(k.reqs, *("#" + i for i in message_ids[start : start + _FORGET_BATCH]))

    async def reconcile_thread(self, key: ThreadKey, seed: Seed) -> None:
        """After writes went around Redis: drop the window and raise the counter to the store's."""
        k = self._keys.thread(key.workspace_id, key.thread_id)
        await self._run(self._reconcile_thread, (k.msgs, k.meta), (seed.incarnation, seed.last_seq, seed.message_count))

    async def reset_preferences(self, workspace_id: str, user_id: str) -> None:
        """Forget a user's cached preferences (they may be stale)."""
        try:
            await self._client.delete(self._keys.preferences(workspace_id, user_id))
        except Exception as exc:
            raise CacheUnavailableError(f"{type(exc).__name__}: {exc}") from exc

    async def thread_incarnation(self, key: ThreadKey) -> int | None:
        """Return the incarnation Redis holds for a live thread (queued or cached), or None."""
        k = self._keys.thread(key.workspace_id, key.thread_id)
        found = await self._run(self._thread_incarnation, (k.meta, k.pending), (k.field,))
        return int(found) if found else None

    async def pending_seq(self, key: ThreadKey) -> tuple[int, int] | None:
        """Return (newest queued seq, flushed mark) of the thread, or None when nothing is unflushed."""
        k = self._keys.thread(key.workspace_id, key.thread_id)
        found = await self._run(self._pending_seq, (k.pending, k.meta), (k.field,))
        return None if found is None else (int(found[0]), int(found[1]))

    async def append_queued(self, request: QueuedRequest) -> QueuedReply:
        """Run the write_behind append: one atomic script on the thread's slot (see scripts.APPEND_QUEUED)."""
        k = self._keys.thread(request.key.workspace_id, request.key.thread_id)
        seed = request.seed
        args: list[Any] = [
            k.field,
            request.request_id,
            -1 if request.expected_last_seq is None else request.expected_last_seq,
            request.new_ttl_s,
            self._window,
            request.request_ttl_s,
            request.max_unflushed,
            "1" if seed else "0",
            seed.last_seq if seed else 0,
            seed.message_count if seed else 0,
            seed.incarnation if seed else 0,
            request.options_json,
            request.key.workspace_id,
            request.key.thread_id,
            *(request.message_ids or ("",) * len(request.encoded)),
            *request.encoded,
        ]
        reply = await self._run(self._append_queued, (k.msgs, k.meta, k.reqs, k.outbox, k.pending), args)
        kind = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        if kind == "dup":
            first, n, count = (int(x) for x in reply[1].split(b":"))
            return QueuedReply("dup", first=first, count=n, message_count=count)
        if kind == "ok":
            return QueuedReply("ok", first=int(reply[1]), count=len(request.encoded), message_count=int(reply[2]),
                               incarnation=int(reply[3]))  # fmt: skip
        return QueuedReply(kind, value=int(reply[1]) if len(reply) > 1 else 0)

    async def aof_enabled(self) -> bool | None:
        """Tell whether Redis persists with AOF; None when CONFIG GET is not allowed (managed services)."""
        try:
            found = await self._client.config_get("appendonly")
        except Exception:  # noqa: BLE001 - only a start-up warning depends on it
            return None
        value = found.get("appendonly") or found.get(b"appendonly")
        if value is None:
            return None
        return (value.decode() if isinstance(value, bytes) else str(value)) == "yes"

    async def retune_window(self, thread: ThreadInfo) -> None:
        """Apply a changed TTL or pin to a cached window."""
        k = self._keys.thread(thread.workspace_id, thread.thread_id)
        await self._run(self._retune_window, (k.msgs, k.meta), (thread.incarnation, self._ttl(thread)))

    async def read_preferences(self, workspace_id: str, user_id: str) -> dict[str, tuple[str, int]] | None:
        """Return the cached preferences {key: (value, update_time_us)}, or None on a miss."""
        key = self._keys.preferences(workspace_id, user_id)
        flat = await self._run(self._read_prefs, (key,), (self._prefs_ttl_s,))
        if not flat:
            return None
        out: dict[str, tuple[str, int]] = {}
        for i in range(0, len(flat), 2):
            field = flat[i].decode()
            if field.startswith("#"):
                continue
            stamp, _, value = flat[i + 1].decode().partition(":")
            out[field] = (value, int(stamp))
        return out

    async def fill_preferences(self, workspace_id: str, user_id: str, prefs: PreferenceSet) -> bool:
        """Cache a store read of a user's preferences unless a newer write fenced it (or it is too big)."""
        if len(prefs.values) > MAX_CACHED_PREFERENCES:
            return False  # one script call could not carry it; such users read from the store
        key = self._keys.preferences(workspace_id, user_id)
        args: list[Any] = [prefs.version, self._prefs_ttl_s]
        for name, pv in prefs.values.items():
            args += [name, f"{pv.update_time_us}:{pv.value}"]
        return bool(await self._run(self._fill_prefs, (key,), args))

    async def apply_preferences(self, workspace_id: str, user_id: str, change: PreferenceChange) -> None:
        """Apply a committed change to the cached hash, or fence it if the cache is not one version behind."""
        key = self._keys.preferences(workspace_id, user_id)
        args: list[Any] = [change.version, self._prefs_ttl_s]
        if change.deleted_all:
            args.append("all")
        elif change.deleted_keys:
            args += ["del", *change.deleted_keys]
        else:
            args.append("set")
            for name, pv in change.set_values.items():
                args += [name, f"{pv.update_time_us}:{pv.value}"]
        await self._run(self._apply_prefs, (key,), args)


def build_redis_client(
    url: str,
    *,
    max_connections: int,
    socket_timeout_s: float,
    connect_timeout_s: float,
    cluster: bool,
    ssl: dict[str, str] | None = None,
    connects: ConnectCounter | None = None,
) -> Any:
    """Build a redis.asyncio client (single node or cluster) with bounded pool and timeouts.

    ``ssl`` holds redis-py's TLS options (``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``) for a
    ``rediss://`` URL.

    Retries are off: every script is safe to re-run, but a retry inside the client would multiply a
    dead Redis's cost per request; the repository falls back to the store instead.
    """
    hook: dict[str, Any] = {} if connects is None else {"redis_connect_func": connects.redis_py_hook}
    if cluster:
        client = aioredis.RedisCluster.from_url(
            url,
            decode_responses=False,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=connect_timeout_s,
            max_connections=max_connections,
            retry=Retry(NoBackoff(), 0),
            **(ssl or {}),
        )
        if connects is not None:
            # RedisCluster takes no redis_connect_func argument; the nodes' connections read it from the
            # connection kwargs that every ClusterNode (startup or discovered) is built from.
            client.nodes_manager.connection_kwargs["redis_connect_func"] = connects.redis_py_hook
            for node in client.startup_nodes:
                node.connection_kwargs["redis_connect_func"] = connects.redis_py_hook
        return client
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        decode_responses=False,
        max_connections=max_connections,
        timeout=socket_timeout_s,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=connect_timeout_s,
        health_check_interval=30,
        retry=Retry(NoBackoff(), 0),
        **hook,
        **(ssl or {}),
    )
    return aioredis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))
