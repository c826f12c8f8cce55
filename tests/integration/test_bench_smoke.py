"""The latency benchmark runs end to end on a tiny budget and produces figures (no timing is asserted)."""

from __future__ import annotations

import json
import pathlib

import pytest

from bench import latency

pytestmark = pytest.mark.integration


def test_latency_benchmark_produces_figures_for_every_operation(tmp_path: pathlib.Path) -> None:
    assert latency.main(["--quick", "--results-dir", str(tmp_path)]) == 0
    (result,) = tmp_path.glob("latency-*.json")
    data = json.loads(result.read_text())
    text = json.dumps(data)
    assert "GetHistory" in text and "AppendMessages" in text
    phases = data.get("phases") or data.get("results")
    assert phases, f"no phases in {sorted(data)}"
    for phase in phases:
        assert phase["calls"] > 0
        assert phase["p50_ms"] > 0
