"""Entry point: ``chatmem-server [serve|migrate]`` (or ``python -m server``); builds Settings once."""

from __future__ import annotations

import argparse
import asyncio
import sys

from server.app import open_store, serve
from server.config import Settings
from server.observability.logs import configure_logging


async def _migrate(settings: Settings) -> None:
    store = await open_store(settings)
    try:
        applied = await store.migrate()
    finally:
        await store.close()
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the server or a subcommand."""
    parser = argparse.ArgumentParser(prog="chatmem-server", description="chatmem gRPC memory server")
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "migrate"])
    args = parser.parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    if args.command == "migrate":
        asyncio.run(_migrate(settings))
        return
    if settings.grpc.workers > 1:
        from server.workers import run_workers

        asyncio.run(_migrate(settings))  # once, before the workers race to it
        sys.exit(run_workers(settings))
    try:
        import uvloop
    except ImportError:  # uvloop is optional (it does not run on Windows)
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))


if __name__ == "__main__":
    main()
