"""How many more connections PostgreSQL accepts: what GRPC__WORKERS=auto may spend on its workers' pools."""

from __future__ import annotations

import asyncpg

# Client connections PostgreSQL still accepts from an ordinary role: max_connections less the slots kept
# for superusers and the client backends already open (this one included).
FREE_SQL = """
SELECT current_setting('max_connections')::int
     - current_setting('superuser_reserved_connections')::int
     - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int
"""


async def free_connections(dsn: str, timeout_s: float) -> int:
    """Return the client connections PostgreSQL at ``dsn`` accepts now, besides the one this asks on.

    Args:
        dsn: the DATABASE__URL.
        timeout_s: connect timeout.
    """
    conn = await asyncpg.connect(dsn, timeout=timeout_s)
    try:
        free = await conn.fetchval(FREE_SQL)
    finally:
        await conn.close()
    return max(0, int(free) + 1)  # this connection closes before the workers open theirs
