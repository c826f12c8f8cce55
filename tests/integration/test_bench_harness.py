"""The benchmark harness runs every target on a tiny workload and each one produces figures.

No timing is asserted. The LangChain peers take part when their packages (bench/requirements.txt) are
installed; otherwise the harness must mark them unavailable and still measure everything else.
"""

from __future__ import annotations

import json
import pathlib

import pytest

from bench import harness
from bench.config import peer_status
from bench.redis_modules import find_module_redis
from bench.workload import ALL_TARGETS, LANGCHAIN_REDIS, PEERS, supported_ops

pytestmark = pytest.mark.integration


def expected_targets() -> set[str]:
    targets = set(ALL_TARGETS)
    for peer in PEERS:
        if peer_status(peer):
            targets.discard(peer)
    if isinstance(find_module_redis(), str):
        targets.discard(LANGCHAIN_REDIS)
    return targets


def test_harness_produces_figures_for_every_target(tmp_path: pathlib.Path) -> None:
    code = harness.main(["--quick", "--concurrency", "2", "--seconds", "0.3", "--results-dir", str(tmp_path)])
    (result,) = tmp_path.glob("harness-*.json")
    data = json.loads(result.read_text())
    assert code == 0, data["targets"]
    chat_lengths = tuple(data["config"]["chat_lengths"])
    for target in ALL_TARGETS:
        if target not in expected_targets():
            assert data["targets"][target].startswith("unavailable"), data["targets"][target]
            continue
        assert data["targets"][target] == "ok", data["targets"][target]
        rows = {p["op"]: p for p in data["phases"] if p["target"] == target}
        assert set(rows) == set(supported_ops(target, chat_lengths)), target
        for op, row in rows.items():
            assert row["units"] > 0 and row["calls"] > 0, (target, op, row)
            assert row["ops_per_s"] > 0 and row["p50_ms"] > 0 and row["p99_ms"] >= row["p50_ms"], (target, op, row)
            assert not row["errors"], (target, op, row["first_error"])
            if target in ("limit-grpc", "chatmem-wb", "chatmem-wt", "chatmem-sqlite"):
                assert row["server_cpu_us_per_op"] is not None, (target, op)
    assert {c["verdict"] for c in data["checks"]} <= {"PASS", "FAIL", "n/a"}
    assert data["checks"], "no targets were computed"
    # CPU per op with 1 and 2 workers (bench/percore.py): both figures, a ratio, a verdict.
    per_core = [c for c in data["checks"] if "with 2 workers" in c["name"]]
    assert len(per_core) == 2 and all(c["verdict"] in ("PASS", "FAIL") for c in per_core), per_core
    assert len(data["per_core"]) == 2 and all("CPU/op with 1 and 2 workers" in x for x in data["per_core"])
    # The saturation phase ran on chatmem-wb and its two targets were computed from this run.
    saturation = data["setup"]["saturation"]
    assert saturation["calls"] > 0 and saturation["rpcs"] == 2 * saturation["calls"], saturation
    assert saturation["degraded_share"] is not None and len(saturation["loadavg_during"]) == 3, saturation
    verdicts = {c["name"]: c["verdict"] for c in data["checks"]}
    assert verdicts["saturation: share of chatmem-wb RPCs served degraded"] in ("PASS", "FAIL")
    assert verdicts["write_through (chatmem-wt) completed in this run: DEADLINE_EXCEEDED calls"] == "PASS"
