"""Entry point: ``chatmem-server [serve|migrate|keys ...|health]`` (or ``python -m server``); builds Settings once."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from server import healthcheck
from server.app import open_store, serve
from server.auth import cli as keys_cli
from server.config import Settings
from server.observability.logs import configure_logging

log = logging.getLogger("server")


async def _migrate(settings: Settings) -> None:
    store = await open_store(settings)
    try:
        applied = await store.migrate()
    finally:
        await store.close()
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))


async def _auto_workers(settings: Settings) -> Settings:
    """Resolve GRPC__WORKERS=auto: one worker per core, fewer when their pools would not fit in PostgreSQL.

    Each worker opens up to DATABASE__POOL_MAX_SIZE connections; more workers than PostgreSQL has
    connections for would fail their queries under load ("too many clients"), so auto stays within the
    connections free at start-up.
    """
    from server.storage.sql.postgres.capacity import free_connections

    cores = settings.worker_count
    db = settings.database
    assert db.url is not None  # worker_count is 1 without PostgreSQL
    try:
        # Half of what is free: replicas starting together each see the same free count, and other
        # clients (migrations, operators, a second deployment) need connections too.
        fit = max(1, await free_connections(db.url, db.connect_timeout_s) // 2 // db.pool_max_size)
    except Exception as exc:  # noqa: BLE001 - whatever the reason, unknown room means one pool, as before auto
        log.warning("GRPC__WORKERS=auto: could not read PostgreSQL's free connections (%s); one worker", exc)
        fit = 1
    count = min(cores, fit)
    if count < cores:
        log.warning(
            "GRPC__WORKERS=auto: %d workers, not one per core (%d): PostgreSQL has connections for %d pools of "
            "DATABASE__POOL_MAX_SIZE=%d",
            count, cores, fit, db.pool_max_size,
        )  # fmt: skip
    else:
        log.info("GRPC__WORKERS=auto: %d workers, one per core", count)
    return settings.model_copy(update={"grpc": settings.grpc.model_copy(update={"workers": count})})


async def _keys(settings: Settings, args: argparse.Namespace) -> int:
    store = await open_store(settings)
    try:
        await store.migrate()
        return await keys_cli.run(args, store.keys)
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the server or a subcommand."""
    parser = argparse.ArgumentParser(prog="chatmem-server", description="chatmem gRPC memory server")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the server (the default)")
    commands.add_parser("migrate", help="apply the store's migrations and exit")
    keys_cli.add_parser(commands)
    healthcheck.add_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "health":
        # Before logging is configured and Settings built: a probe prints one word and its exit code says the rest.
        sys.exit(healthcheck.run(args))
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    if args.command == "migrate":
        asyncio.run(_migrate(settings))
        return
    if args.command == "keys":
        sys.exit(asyncio.run(_keys(settings, args)))
    if settings.worker_count > 1:
        asyncio.run(_migrate(settings))  # once, before the workers race to it
        if settings.grpc.workers == "auto":
            settings = asyncio.run(_auto_workers(settings))
    if settings.worker_count > 1:
        from server.workers import run_workers

        sys.exit(run_workers(settings))
    try:
        import uvloop
    except ImportError:  # uvloop is optional (it does not run on Windows)
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))


if __name__ == "__main__":
    main()
