"""Real redis-server and PostgreSQL processes for the session, and the API harness over every backend."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from devtools.cluster import RedisCluster
from devtools.postgres import PostgresProcess
from devtools.redis import RedisProcess
from server.storage.redis.keys import KeySpace
from tests.conftest import Harness, make_settings, start_harness

# "+redis" runs the default write mode with Redis (write_behind); ":wt" forces write_through.
BACKENDS = ["sqlite", "postgres", "sqlite+redis", "postgres+redis", "postgres+redis:wt"]
CACHED = ["postgres+redis", "sqlite+redis", "postgres+redis:wt"]


@pytest.fixture(scope="session")
def redis_proc() -> Iterator[RedisProcess]:
    """A redis-server on a free loopback port, for the whole session."""
    proc = RedisProcess()
    proc.start()
    yield proc
    proc.close()


@pytest.fixture(scope="session")
def pg_proc() -> Iterator[PostgresProcess]:
    """A PostgreSQL server on a free loopback port, for the whole session."""
    proc = PostgresProcess()
    proc.start()
    yield proc
    proc.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A Redis Cluster of 3 masters without replicas, for the whole session (tests must not kill its nodes)."""
    cluster = RedisCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def redis_cluster_replicas() -> Iterator[RedisCluster]:
    """A Redis Cluster of 3 masters with 1 replica each, for one module: its tests may kill and restart nodes."""
    cluster = RedisCluster(replicas=1)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    """A redis-server of the test's own, for tests that stop, freeze or reconfigure it."""
    proc = RedisProcess()
    proc.start()
    yield proc
    proc.close()


@pytest.fixture
def own_pg() -> Iterator[PostgresProcess]:
    """A PostgreSQL of the test's own, for tests that stop or freeze it."""
    proc = PostgresProcess()
    proc.start()
    yield proc
    proc.close()


def backend_settings(request: pytest.FixtureRequest, backend: str, tmp_path: pathlib.Path, **memory: Any) -> Any:
    """Settings for a backend name such as ``postgres+redis`` or ``postgres+redis:wt``."""
    backend, _, mode = backend.partition(":")
    if mode == "wt":
        memory.setdefault("write_mode", "write_through")
    db_url = request.getfixturevalue("pg_proc").url if backend.startswith("postgres") else None
    redis_url = request.getfixturevalue("redis_proc").url if backend.endswith("+redis") else None
    return make_settings(database_url=db_url, sqlite_path=str(tmp_path / "chatmem.db"), redis_url=redis_url, **memory)


@pytest.fixture(params=BACKENDS)
async def api(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[Harness]:
    """A started server on each backend in turn; each test gets its own workspace."""
    h = await start_harness(backend_settings(request, request.param, tmp_path))
    yield h
    await h.close()


@pytest.fixture(params=CACHED)
async def cached(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[Harness]:
    """A started server with the Redis cache, on each store."""
    h = await start_harness(backend_settings(request, request.param, tmp_path))
    yield h
    await h.close()


@pytest.fixture
async def redis_client(redis_proc: RedisProcess) -> AsyncIterator[aioredis.Redis]:
    """A direct client of the test Redis, to look at or damage the cache."""
    client = aioredis.Redis.from_url(redis_proc.url)
    yield client
    await client.aclose()


@pytest.fixture
def keys(request: pytest.FixtureRequest) -> KeySpace:
    """The key space of the test's server (the ``cached`` or ``api`` harness)."""
    for name in ("cached", "api"):
        if name in request.fixturenames:
            harness = request.getfixturevalue(name)
            return KeySpace(harness.app.settings.redis.key_prefix)
    return KeySpace()
