"""Database and outbox chores around a run: create and vacuum databases, wait for chatmem's outbox to drain."""

from __future__ import annotations

import time
from collections.abc import Sequence


async def create_databases(url: str, names: Sequence[str]) -> None:
    """CREATE DATABASE each name on the server of ``url``."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        for name in names:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def vacuum(urls: Sequence[str]) -> None:
    """VACUUM ANALYZE every database after the preload, so no target pays for hint bits or statistics."""
    import asyncpg

    for url in urls:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("VACUUM ANALYZE")
        finally:
            await conn.close()


def db_url(server_url: str, name: str) -> str:
    """The URL of database ``name`` on the server of ``server_url`` (a ``.../postgres`` URL)."""
    return server_url.rsplit("/", 1)[0] + "/" + name


def outbox_depth(redis_url: str, prefix: str) -> int:
    """Entries in all outbox streams of a chatmem key prefix."""
    import redis

    from server.storage.redis.keys import BUCKETS, KeySpace

    keys = KeySpace(prefix)
    client = redis.Redis.from_url(redis_url)
    try:
        pipe = client.pipeline(transaction=False)
        for b in range(BUCKETS):
            pipe.xlen(keys.outbox(b))
        return sum(int(n) for n in pipe.execute())
    finally:
        client.close()


def wait_drained(redis_url: str, prefix: str, timeout_s: float) -> float:
    """Wait until chatmem's outbox is empty (its flusher has written everything); return the seconds."""
    started = time.monotonic()
    while outbox_depth(redis_url, prefix):
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"the {prefix} outbox still holds entries after {timeout_s}s")
        time.sleep(0.05)
    return time.monotonic() - started
