"""A redis-server and a PostgreSQL started together for a test, and stopped together after it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from devtools.postgres import PostgresProcess
from devtools.redis import RedisProcess


@contextlib.contextmanager
def redis_and_postgres(*, appendonly: bool = False) -> Iterator[tuple[RedisProcess, PostgresProcess]]:
    """Start both (Redis with AOF when ``appendonly``, so a kill -9 loses nothing); close both on exit."""
    redis = RedisProcess(appendonly=appendonly)
    pg = PostgresProcess()
    redis.start()
    pg.start()
    try:
        yield redis, pg
    finally:
        redis.close()
        pg.close()
