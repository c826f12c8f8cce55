"""Composition root: settings -> pools -> stores -> repository -> services -> grpc.aio server; shutdown order."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import uuid
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chatmem.v1 import (
    admin_service_pb2,
    preferences_service_pb2,
    thread_memory_service_pb2,
)
from server.admission.layer import AdmissionLayer, build_admission
from server.auth.layer import build_auth_layer
from server.config import Settings
from server.interceptors import Layer, Pipeline
from server.observability.context import RequestContextLayer
from server.observability.endpoint import MetricsEndpoint
from server.observability.metrics import Metrics, MetricsLayer
from server.observability.sampler import Sampler, build_sampler
from server.observability.tracing import build_tracing_layer
from server.services.admin import AdminService
from server.services.admin import register as register_admin
from server.services.preferences import PreferencesService
from server.services.preferences import register as register_preferences
from server.services.thread_memory import ThreadMemoryService
from server.services.thread_memory import register as register_thread_memory
from server.standard_services import HealthService, enable_reflection
from server.storage.erasure import Eraser
from server.storage.file_claim import FileClaim
from server.storage.local_cache import LocalCache
from server.storage.protocols import Cache, RetentionStore, Stores
from server.storage.redis.cache import RedisCache, build_redis_client
from server.storage.redis.connection import PATIENCE, ConnectCounter, PipelinedRedis
from server.storage.redis.keys import KeySpace
from server.storage.redis.notify import RedisRelay
from server.storage.redis.outbox import Flusher
from server.storage.repository import Policy, Repository
from server.storage.retention import Sweeper
from server.storage.sql.postgres.store import PostgresStore
from server.storage.sql.sqlite.store import SqliteStore
from server.storage.watch import WatchHub
from server.tls import CertificateReloader

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    thread_memory_service_pb2.DESCRIPTOR.services_by_name["ThreadMemoryService"].full_name,
    preferences_service_pb2.DESCRIPTOR.services_by_name["PreferencesService"].full_name,
    admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)


async def open_store(settings: Settings) -> Stores:
    """Open the durable store: PostgreSQL when DATABASE__URL is set, else the embedded SQLite file."""
    db = settings.database
    if db.url:
        return await PostgresStore.connect(
            db.url,
            min_size=db.pool_min_size,
            max_size=db.pool_max_size,
            command_timeout_s=db.command_timeout_s,
            connect_timeout_s=db.connect_timeout_s,
        )
    return SqliteStore(db.sqlite_path)


def open_redis(settings: Settings, connects: ConnectCounter | None = None) -> Any:
    """Build the redis.asyncio client (it connects lazily), or None when no Redis is configured."""
    r = settings.redis
    if not r.enabled:
        return None
    return build_redis_client(
        r.resolved_url(),
        max_connections=r.max_connections,
        socket_timeout_s=r.socket_timeout_s,
        connect_timeout_s=r.connect_timeout_s,
        cluster=r.cluster,
        ssl=r.ssl_options(),
        connects=connects,
    )


def open_cache(settings: Settings, client: Any, connects: ConnectCounter | None = None) -> RedisCache:
    """Build the Redis cache over a client (its scripts auto-pipelined unless REDIS__AUTOPIPELINE is off)."""
    r = settings.redis
    scripts_client = None
    if r.autopipeline and not r.cluster:
        scripts_client = PipelinedRedis.like(
            client,
            timeout_s=r.dead_after_s,
            connect_timeout_s=r.connect_timeout_s,
            on_connect=None if connects is None else connects.bump,
        )
    return RedisCache(
        client,
        KeySpace(r.key_prefix),
        window=settings.memory.max_thread_messages,
        thread_ttl_s=int(settings.memory.thread_ttl_hours * 3600),
        prefs_ttl_s=int(settings.memory.user_ttl_days * 86400),
        scripts_client=scripts_client,
        cluster=r.cluster,
        connects=connects,
    )


def open_local_cache(settings: Settings, store: Stores) -> LocalCache | None:
    """Build the in-process window cache of the embedded mode (SQLite, no Redis), or None when it does not apply.

    Only there does one process own the store (GRPC__WORKERS > 1 is refused with SQLite), so only there can
    a cache in process memory be exact. The file is claimed (``<file>.lock``) so that a second server on
    it refuses to start instead of changing windows behind this one's cache.

    Raises:
        FileInUseError: another server already serves the file.
    """
    m = settings.memory
    if settings.redis.enabled or not isinstance(store, SqliteStore) or m.local_cache_threads == 0:
        return None
    path = settings.database.sqlite_path
    claim = None if path == ":memory:" or path.startswith("file::memory:") else FileClaim(path)
    return LocalCache(
        claim=claim,
        window=m.max_thread_messages,
        max_threads=m.local_cache_threads,
        thread_ttl_s=int(m.thread_ttl_hours * 3600),
        prefs_ttl_s=int(m.user_ttl_days * 86400),
    )


def policy_of(settings: Settings) -> Policy:
    """Build the repository's policy from the settings."""
    m = settings.memory
    return Policy(
        window=m.max_thread_messages,
        write_behind=settings.write_mode == "write_behind",
        default_ttl_s=int(m.thread_ttl_hours * 3600),
        request_ttl_s=int(m.request_id_ttl_hours * 3600),
        max_unflushed=settings.outbox.max_unflushed_per_thread,
        probe_interval_s=settings.redis.probe_interval_s,
        # The shortest stall after which any replica may give up on Redis and write around it.
        silence_s=min(settings.redis.socket_timeout_s, settings.redis.dead_after_s),
        # A redis-py call ends within its socket timeout; a script call within a connect and two commands
        # (EVALSHA, then EVAL after a NOSCRIPT) of PATIENCE silences each (connection.py); plus room for
        # a late event loop.
        call_bound_s=max(
            2 * settings.redis.socket_timeout_s,
            settings.redis.connect_timeout_s + 2 * (PATIENCE * settings.redis.dead_after_s + 0.05),
        )
        + 0.5,
        max_group=m.group_commit_max,
    )


@dataclass
class App:
    """A built server and everything it owns, in the order shutdown releases them."""

    settings: Settings
    server: grpc.aio.Server
    health: HealthService
    repository: Repository
    store: Stores
    cache: Cache | None
    flusher: Flusher | None
    port: int
    sweeper: Sweeper | None = None
    health_server: grpc.aio.Server | None = None
    health_port: int | None = None
    metrics: MetricsEndpoint | None = None
    sampler: Sampler | None = None
    admission: AdmissionLayer | None = None
    watch: WatchHub | None = None
    relay: RedisRelay | None = None

    async def start(self) -> None:
        """Start the metrics endpoint, the flusher and the server; warn about a Redis that does not persist."""
        if self.metrics is not None:
            self.metrics.start()
        if self.sampler is not None:
            self.sampler.start()
        if self.admission is not None:
            self.admission.start()
        if self.flusher is not None:
            assert self.cache is not None
            if await self.cache.aof_enabled() is not True:
                log.warning(
                    "WRITE_BEHIND WITH A REDIS WITHOUT AOF (or AOF not verifiable): appends acknowledged as QUEUED "
                    "are lost if Redis restarts before they are flushed. Run Redis with appendonly yes."
                )
            await self.flusher.start()
        if self.relay is not None:
            self.relay.start()
        await self.server.start()
        if self.sweeper is not None:
            await self.sweeper.start()
        if self.health_server is not None:
            await self.health_server.start()
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "chatmem listening on port %d (store=%s, cache=%s, write_mode=%s)",
            self.port,
            type(self.store).__name__,
            type(self.cache).__name__ if self.cache else "none",
            self.settings.write_mode,
        )

    async def stop(self, grace_s: float | None = None) -> None:
        """Graceful shutdown: NOT_SERVING, drain in-flight RPCs, finish commits, close pools."""
        grace = self.settings.grpc.shutdown_grace_s if grace_s is None else grace_s
        await self.health.enter_graceful_shutdown()
        if self.watch is not None:
            self.watch.close()  # open watches end with UNAVAILABLE now: they would hold the drain to its end
        await self.server.stop(grace)
        if self.relay is not None:
            await self.relay.stop()
        if self.sweeper is not None:
            await self.sweeper.stop()
        if self.health_server is not None:
            await self.health_server.stop(0)
        if self.sampler is not None:
            await self.sampler.stop()
        if self.admission is not None:
            await self.admission.stop()
        await self.repository.close()
        if self.flusher is not None:
            await self.flusher.stop(self.settings.outbox.drain_on_shutdown_s)
        if self.cache is not None:
            await self.cache.close()
        await self.store.close()
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)  # last: scrapes still work while RPCs drain
        log.info("chatmem stopped")


async def create_server(
    settings: Settings,
    *,
    store: Stores | None = None,
    cache: Cache | None = None,
    use_configured_cache: bool = True,
    tracer_provider: Any = None,
) -> App:
    """Build (but do not start) the server. Tests bind GRPC__ADDRESS to port 0 and read App.port.

    Args:
        settings: the settings, built once by the caller.
        store: a store to use instead of the configured one (already open).
        cache: a cache to use instead of the configured one.
        use_configured_cache: build the configured cache when ``cache`` is None.
        tracer_provider: an OpenTelemetry tracer provider for TRACING__ENABLED (default: the global one).

    Returns:
        The App, with migrations applied.
    """
    store = store or await open_store(settings)
    applied = await store.migrate()
    if applied:
        log.info("applied migrations: %s", ", ".join(applied))
    connects = ConnectCounter()
    client = open_redis(settings, connects) if cache is None and use_configured_cache else None
    if client is not None:
        cache = open_cache(settings, client, connects)
    elif cache is None and use_configured_cache:
        cache = open_local_cache(settings, store)
    metrics = Metrics() if settings.metrics.address else None
    hub = WatchHub(
        max_per_workspace=settings.limits.max_watchers_per_workspace,
        poll_s=settings.watch.poll_interval_s,
        recheck_s=settings.watch.recheck_interval_s,
        shared_store=bool(settings.database.url),
    )
    repository = Repository(store, cache, policy_of(settings), observer=metrics, events=hub)
    relay = None
    if client is not None:
        r = settings.redis
        # PUBLISH through a pipelined connection of its own: a few µs per command instead of redis-py's ~40.
        publisher = subscriber = None
        if r.autopipeline and not r.cluster:
            publisher = PipelinedRedis.like(client, timeout_s=r.socket_timeout_s, connect_timeout_s=r.connect_timeout_s)
            subscriber = PipelinedRedis.like(
                client, timeout_s=r.socket_timeout_s, connect_timeout_s=r.connect_timeout_s
            )
        relay = RedisRelay(
            client, r.key_prefix, hub, timeout_s=r.socket_timeout_s, publisher=publisher, subscriber=subscriber
        )
        hub.relay = relay
    flusher = None
    if client is not None and repository.write_behind:
        o = settings.outbox
        flusher = Flusher(
            client,
            KeySpace(settings.redis.key_prefix),
            store.outbox,
            consumer=f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
            batch_size=o.batch_size,
            block_ms=o.block_ms,
            linger_ms=o.linger_ms,
            claim_idle_ms=o.claim_idle_ms,
            claim_interval_s=o.claim_interval_s,
            cluster=settings.redis.cluster,
            store_health=repository.store_health,
            reader=PipelinedRedis.like(
                client, timeout_s=settings.redis.socket_timeout_s, connect_timeout_s=settings.redis.connect_timeout_s
            )
            if settings.redis.autopipeline and not settings.redis.cluster
            else None,
        )
    g = settings.grpc
    # Off unless workers share the port on purpose: otherwise a second server on the same port would start
    # silently and steal traffic.
    # Only a count the process was started with (``auto`` is resolved to one in __main__ before the
    # workers start): a server built in process from GRPC__WORKERS=auto is one server, not a worker.
    reuse_port = 1 if isinstance(g.workers, int) and g.workers > 1 else 0
    sampler = None
    if metrics is not None:
        interval = settings.metrics.sample_interval_s
        sampler = build_sampler(metrics, interval, repository=repository, flusher=flusher, cache=cache, store=store)
    redis_health = repository.redis_health
    admission = build_admission(
        settings.quota,
        redis_client=client,
        keys=KeySpace(settings.redis.key_prefix),
        redis_usable=lambda: redis_health is not None and not redis_health.down,
        retry_redis_s=settings.redis.probe_interval_s,
        observer=metrics,
    )
    # Outermost first: request context and metrics, then authentication, then admission.
    layers: list[Layer] = [RequestContextLayer(echo=settings.echo_request_id)]
    if metrics is not None:
        layers.append(MetricsLayer(metrics))
    tracing = build_tracing_layer(settings.tracing.enabled, tracer_provider)
    if tracing is not None:
        layers.append(tracing)
    auth = build_auth_layer(settings.auth, store.keys)
    if auth is not None:
        layers.append(auth)
    if admission is not None:
        layers.append(admission)
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", reuse_port),
            ("grpc.max_receive_message_length", g.max_receive_message_bytes),
            ("grpc.max_send_message_length", g.max_send_message_bytes),
            ("grpc.keepalive_time_ms", g.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", g.keepalive_timeout_ms),
            ("grpc.http2.min_ping_interval_without_data_ms", g.min_ping_interval_ms),
            ("grpc.keepalive_permit_without_calls", 1),
        ],
    )
    pipeline = Pipeline(layers)
    register_thread_memory(ThreadMemoryService(repository, settings, hub), server, pipeline)
    register_preferences(PreferencesService(repository, settings), server, pipeline)
    register_admin(AdminService(Eraser(repository, store.retention), settings), server, pipeline)
    health = HealthService()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    if settings.reflection_enabled:
        enable_reflection((*SERVICE_NAMES, "grpc.health.v1.Health"), server)
    if g.tls_cert_file and g.tls_key_file:
        reloader = CertificateReloader(
            g.tls_cert_file, g.tls_key_file, g.tls_client_ca_file, require_client_auth=g.tls_require_client_auth
        )
        port = server.add_secure_port(g.address, reloader.credentials())
    else:
        port = server.add_insecure_port(g.address)
    if port == 0:
        raise OSError(f"cannot bind {g.address}")
    health_server, health_port = None, None
    if g.health_address:
        # Plaintext and health only, for probes that cannot present a client certificate or a credential.
        health_server = grpc.aio.server(options=[("grpc.so_reuseport", reuse_port)])
        health_pb2_grpc.add_HealthServicer_to_server(health, health_server)
        health_port = health_server.add_insecure_port(g.health_address)
        if health_port == 0:
            raise OSError(f"cannot bind {g.health_address}")
    return App(
        settings,
        server,
        health,
        repository,
        store,
        cache,
        flusher,
        port,
        metrics=MetricsEndpoint(metrics.registry, settings.metrics.address)
        if metrics is not None and settings.metrics.address
        else None,
        sampler=sampler,
        admission=admission,
        watch=hub,
        relay=relay,
        sweeper=sweeper_of(settings, Eraser(repository, store.retention), store.retention),
        health_server=health_server,
        health_port=health_port,
    )


def sweeper_of(settings: Settings, eraser: Eraser, retention: RetentionStore) -> Sweeper | None:
    """Build the retention sweeper, or None when MEMORY__RETENTION_DAYS is unset (keep forever)."""
    m = settings.memory
    if m.retention_days is None:
        return None
    return Sweeper(
        eraser,
        retention,
        retention_s=m.retention_days * 86400,
        interval_s=m.retention_sweep_interval_s,
        batch=m.retention_sweep_batch,
    )


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    app = await create_server(settings)
    await app.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("signal received; draining for up to %.1fs", settings.grpc.shutdown_grace_s)
    await app.stop()
