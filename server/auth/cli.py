"""``chatmem-server keys create|list|revoke``: manage API keys in the configured durable store."""

from __future__ import annotations

import argparse
import datetime
import sys

from server.auth import keys
from server.auth.roles import AccessRole
from server.storage.apikeys import ApiKeyRecord, KeyStore
from server.validation import is_valid_id


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``keys`` command and its subcommands."""
    parser = subparsers.add_parser("keys", help="create, list or revoke API keys (AUTH__MODE=api_key)")
    actions = parser.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", help="create a key and print it once")
    create.add_argument("--workspace", required=True, help="the only workspace the key may act in")
    create.add_argument("--role", required=True, choices=[r.label for r in AccessRole])
    create.add_argument("--name", default="", help="a label for operators")
    listing = actions.add_parser("list", help="list keys (ids, never secrets)")
    listing.add_argument("--workspace", default=None)
    revoke = actions.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")


def _time(us: int | None) -> str:
    if us is None:
        return "-"
    return datetime.datetime.fromtimestamp(us / 1e6, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def run(args: argparse.Namespace, store: KeyStore) -> int:
    """Run one ``keys`` subcommand against the store; return the exit code."""
    if args.keys_command == "create":
        if not is_valid_id(args.workspace):
            print(f"invalid workspace id {args.workspace!r}", file=sys.stderr)
            return 2
        text, parsed = keys.generate()
        record = ApiKeyRecord(parsed.key_id, args.workspace, args.role, args.name, keys.hash_secret(parsed.secret))
        await store.create_api_key(record)
        print(text)
        print(
            f"created key {parsed.key_id} (workspace {args.workspace}, role {args.role}); "
            "it is shown only now, store it safely",
            file=sys.stderr,
        )
        return 0
    if args.keys_command == "list":
        print("key_id\tworkspace\trole\tname\tcreated\trevoked")
        for r in await store.list_api_keys(args.workspace):
            print(
                f"{r.key_id}\t{r.workspace_id}\t{r.role}\t{r.name}\t{_time(r.create_time_us)}\t{_time(r.revoke_time_us)}"
            )
        return 0
    if await store.revoke_api_key(args.key_id):
        print(f"revoked {args.key_id}")
        return 0
    print(f"no live key with id {args.key_id!r}", file=sys.stderr)
    return 1
