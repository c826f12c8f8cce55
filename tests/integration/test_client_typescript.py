"""The TypeScript client's own suite (`node --test`) against a real chatmem server."""

from __future__ import annotations

import re

import pytest

from tests.conftest import make_settings, start_harness
from tests.polyglot import node

pytestmark = pytest.mark.integration


async def test_typescript_client_suite_passes_against_a_real_server() -> None:
    h = await start_harness(make_settings())
    try:
        code, out = await node(["--test", "dist/test/"], {"CHATMEM_TARGET": f"127.0.0.1:{h.app.port}"})
    finally:
        await h.close()
    assert code == 0, out
    counts = {k: int(v) for k, v in re.findall(r"^# (pass|fail|skipped|cancelled) (\d+)$", out, re.M)}
    assert counts == {"pass": 6, "fail": 0, "skipped": 0, "cancelled": 0}, out
