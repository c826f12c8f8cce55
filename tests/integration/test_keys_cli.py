"""The keys CLI (``python -m server keys create|list|revoke``) run as a subprocess against an SQLite file."""

from __future__ import annotations

import asyncio
import os
import pathlib
import sys

import grpc
import pytest

from chatmem.v1 import thread_memory_service_pb2 as t
from tests.authkit import bearer, with_auth
from tests.conftest import make_settings, start_harness
from tests.rpccases import code_of

pytestmark = pytest.mark.integration

ROOT = pathlib.Path(__file__).resolve().parents[2]


async def cli(db: pathlib.Path, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE__", "AUTH__", "REDIS__"))}
    env |= {"DATABASE__SQLITE_PATH": str(db), "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "keys", *args, cwd=db.parent, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_create_list_use_and_revoke_a_key(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "keys.db"
    code, out, err = await cli(db, "create", "--workspace", "acme", "--role", "write", "--name", "ci bot")
    assert code == 0, err
    key = out.strip()
    assert key.startswith("cmk_") and len(out.splitlines()) == 1  # the key alone on stdout, once
    key_id = key.split("_")[1]
    secret = key.split("_", 2)[2]

    code, listing, _ = await cli(db, "list")
    assert code == 0 and key_id in listing and "acme\twrite\tci bot" in listing
    assert secret not in listing and secret not in db.read_bytes().decode(errors="replace")
    code, other, _ = await cli(db, "list", "--workspace", "globex")
    assert code == 0 and key_id not in other

    settings = with_auth(make_settings(sqlite_path=str(db)), mode="api_key", key_cache_s=0)
    h = await start_harness(settings)
    try:
        req = t.GetHistoryRequest(thread_id="t1")
        assert await code_of(h.threads.GetHistory(req, metadata=bearer(key))) == grpc.StatusCode.OK
        code, out, err = await cli(db, "revoke", key_id)
        assert code == 0, err
        # AUTH__KEY_CACHE_S=0: the next call looks the key up again.
        assert await code_of(h.threads.GetHistory(req, metadata=bearer(key))) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await h.close()
    code, _, err = await cli(db, "revoke", key_id)
    assert code == 1 and "no live key" in err
    code, listing, _ = await cli(db, "list")
    assert f"{key_id}\tacme" in listing and listing.strip().split("\t")[-1] != "-"


@pytest.mark.parametrize(
    "args",
    [("create", "--workspace", "acme", "--role", "owner"), ("create", "--workspace", "bad id!", "--role", "read")],
)
async def test_bad_arguments_are_refused_with_exit_code_2(tmp_path: pathlib.Path, args: tuple[str, ...]) -> None:
    code, out, _ = await cli(tmp_path / "k.db", *args)
    assert code == 2 and "cmk_" not in out
