"""The Go client's own suite (`go test`) against a real chatmem server."""

from __future__ import annotations

import os

import pytest

from tests.conftest import make_settings, start_harness
from tests.polyglot import GO, go, run

pytestmark = pytest.mark.integration


async def test_go_client_suite_passes_against_a_real_server() -> None:
    h = await start_harness(make_settings())
    try:
        code, out = await go(["test", "-count=1", "-v", "."], {"CHATMEM_TARGET": f"127.0.0.1:{h.app.port}"})
    finally:
        await h.close()
    assert code == 0, out
    passed = [line for line in out.splitlines() if line.startswith("--- PASS")]
    assert len(passed) == 6, out
    assert "--- SKIP" not in out and "--- FAIL" not in out


async def test_go_code_is_gofmt_clean_and_vets() -> None:
    code, out = await run(["gofmt", "-l", "."], GO, dict(os.environ))
    assert (code, out) == (0, ""), f"gofmt would change: {out}"
    code, out = await go(["vet", "./..."])
    assert code == 0, out
