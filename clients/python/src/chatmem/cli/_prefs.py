"""``chatmem prefs get|set|rm``: a user's preferences."""

from __future__ import annotations

import argparse
import json
from typing import Any

from chatmem.cli._common import EXIT_USAGE, CliError, connect, plural, wants_json


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``get``, ``set`` and ``rm`` to the ``prefs`` subcommands."""
    p = sub.add_parser("get", parents=[common], help="print a user's preferences as key=value lines")
    p.add_argument("user_id")
    p.add_argument("keys", nargs="*", help="only these keys (default: all)")
    p.set_defaults(run=get)

    p = sub.add_parser("set", parents=[common], help="set (upsert) preferences given as KEY=VALUE")
    p.add_argument("user_id")
    p.add_argument("pairs", nargs="+", metavar="KEY=VALUE")
    p.set_defaults(run=set_)

    p = sub.add_parser("rm", parents=[common], help="delete some preferences of a user, or --all")
    p.add_argument("user_id")
    p.add_argument("keys", nargs="*")
    p.add_argument("--all", action="store_true", dest="all_keys", help="delete every preference of the user")
    p.set_defaults(run=rm)


async def get(args: argparse.Namespace) -> int:
    """Print ``key=value`` lines sorted by key, or one JSON object."""
    async with connect(args) as memory:
        prefs = await memory.get_preferences(args.user_id, keys=args.keys)
    if wants_json(args):
        print(json.dumps(dict(prefs), ensure_ascii=False))
    else:
        for key, value in prefs.items():
            print(f"{key}={value}")
    return 0


def _pairs(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"expected KEY=VALUE, got {pair!r}", EXIT_USAGE)
        out[key] = value
    return out


async def set_(args: argparse.Namespace) -> int:
    """Upsert the given keys and say how many were written."""
    prefs = _pairs(args.pairs)
    async with connect(args) as memory:
        count = await memory.set_preferences(args.user_id, prefs)
    if wants_json(args):
        print(json.dumps({"user_id": args.user_id, "updated_count": count}))
    else:
        print(f"set {plural(count, 'preference')} of {args.user_id!r}")
    return 0


async def rm(args: argparse.Namespace) -> int:
    """Delete the given keys (or all with ``--all``) and say how many went."""
    if bool(args.keys) == args.all_keys:
        raise CliError("give the keys to delete, or --all (not both)", EXIT_USAGE)
    async with connect(args) as memory:
        count = await memory.delete_preferences(args.user_id, args.keys, all_keys=args.all_keys)
    if wants_json(args):
        print(json.dumps({"user_id": args.user_id, "deleted_count": count}))
    else:
        print(f"deleted {plural(count, 'preference')} of {args.user_id!r}")
    return 0
