"""The performance targets of the harness, each checked as PASS or FAIL against the measured rows."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench import percore
from bench.config import Config, Row
from bench.report import find, fmt_us
from bench.workload import (
    APPEND,
    CHATMEM_SQLITE,
    CHATMEM_WB,
    CHATMEM_WT,
    HYDRATE,
    LANGCHAIN_POSTGRES,
    LANGCHAIN_REDIS,
    LIMIT_GRPC,
    LIMIT_POSTGRES,
    READ,
    RPC,
    STREAM,
    chat_op,
)


@dataclass
class Check:
    """One performance target: a measured value, its bound and the relation it must keep."""

    name: str
    value: float | None
    bound: float | None
    relation: str  # "<=" or ">="
    detail: str = ""

    @property
    def verdict(self) -> str:
        """PASS, FAIL, or n/a when a figure is missing."""
        if self.value is None or self.bound is None or math.isnan(self.value) or math.isnan(self.bound):
            return "n/a"
        ok = self.value <= self.bound if self.relation == "<=" else self.value >= self.bound
        return "PASS" if ok else "FAIL"


def rate_ratio(name: str, row: Row | None, base: Row | None, bound: float, unit: str) -> Check:
    """A check that ``row``'s rate is at least ``bound`` times ``base``'s (n/a when either is missing)."""
    value = row.ops_per_s / base.ops_per_s if row and base and base.ops_per_s else None
    detail = f"{row.ops_per_s:.0f} vs {base.ops_per_s:.0f} {unit}" if row and base else ""
    return Check(name, value, bound, ">=", detail)


def checks(rows: Sequence[Row], config: Config) -> list[Check]:
    """The targets of issue 16 (the per-RPC budget), computed from this run's rows."""
    lo, hi = min(config.concurrency), max(config.concurrency)
    out: list[Check] = []

    def get(target: str, op: str, c: int) -> Row | None:
        return find(rows, target, op, c)

    # 1. Server CPU per op against a bare grpc.aio server's, at the lowest and highest concurrency.
    for label, op, bound in (("GetHistory(50) cache hit", READ, 1.3), ("AppendMessages write_behind", APPEND, 2.0)):
        for c in sorted({lo, hi}):
            cm, lg = get(CHATMEM_WB, op, c), get(LIMIT_GRPC, RPC, c)
            value = None
            if cm and lg and cm.server_cpu_us_per_op is not None and lg.server_cpu_us_per_op:
                value = cm.server_cpu_us_per_op / lg.server_cpu_us_per_op
            detail = (
                f"{fmt_us(cm.server_cpu_us_per_op)} vs {fmt_us(lg.server_cpu_us_per_op)} us/op" if cm and lg else ""
            )
            out.append(Check(f"{label}: server CPU/op / limit-grpc's, c={c}", value, bound, "<=", detail))
    # 2. The embedded default reads like the cached server.
    out.append(
        rate_ratio(
            f"GetHistory({config.window}) at c={hi}: chatmem-sqlite ops/s / chatmem-wb ops/s",
            get(CHATMEM_SQLITE, READ, hi), get(CHATMEM_WB, READ, hi), 0.9, "ops/s",
        )
    )  # fmt: skip
    # 3. Hydration from PostgreSQL.
    cm, lp, lg = get(CHATMEM_WB, HYDRATE, lo), get(LIMIT_POSTGRES, HYDRATE, lo), get(LIMIT_GRPC, RPC, lo)
    out.append(
        Check(
            f"hydration p50 ms, {config.hydrate_messages} msgs/thread, c={lo}"
            " vs 1.3x (limit-postgres + limit-grpc p50)",
            cm.p50_ms if cm else None,
            1.3 * (lp.p50_ms + lg.p50_ms) if lp and lg else None,
            "<=",
        )
    )
    # 4. StreamHistory against a raw keyset scan of the same rows' seq and stored bytes.
    out.append(
        rate_ratio(
            f"StreamHistory msgs/s, {config.stream_messages} msgs, c={lo} / limit-postgres scan's (seq, encoded)",
            get(CHATMEM_WB, STREAM, lo), get(LIMIT_POSTGRES, STREAM, lo), 0.8, "msgs/s",
        )
    )  # fmt: skip
    # 6. Many cores: CPU per op with 2 workers against 1.
    out += per_core_checks(rows, config)
    return out


def per_core_checks(rows: Sequence[Row], config: Config) -> list[Check]:
    """Server CPU per op with 2 workers / with 1 (bench/percore.py), at the highest concurrency: <= 1.2x."""
    c = max(config.concurrency)
    out = []
    for op, label in percore.OPS:
        one, two = percore.pair(rows, op, c)
        detail = ""
        if one and two:
            detail = f"{fmt_us(two.server_cpu_us_per_op)} vs {fmt_us(one.server_cpu_us_per_op)} us/op"
        name = f"{label}: server CPU/op with 2 workers / with 1, c={c}"
        out.append(Check(name, percore.cpu_ratio(one, two), percore.BOUND, "<=", detail))
    return out


def references(rows: Sequence[Row], config: Config) -> list[Check]:
    """Issue 5's earlier targets, still printed for comparison with earlier runs (not issue 16's targets)."""
    lo, hi = min(config.concurrency), max(config.concurrency)
    small, big = min(config.chat_lengths), max(config.chat_lengths)
    out: list[Check] = []

    def get(target: str, op: str, c: int) -> Row | None:
        return find(rows, target, op, c)

    for label, op in (("GetHistory(50) cache hit", READ), ("AppendMessages write_behind", APPEND)):
        cm, lg = get(CHATMEM_WB, op, lo), get(LIMIT_GRPC, RPC, lo)
        value = bound = None
        if cm and lg:
            value, bound = cm.p50_ms, lg.p50_ms + 0.3
        out.append(
            Check(f"{label}: p50 ms at c={lo} vs limit-grpc p50 + 0.3 ms", value, bound, "<=",
                  f"limit-grpc p50 {lg.p50_ms:.3f} ms" if lg else "")
        )  # fmt: skip
    for label, op in (("GetHistory(50) cache hit", READ), ("AppendMessages write_behind", APPEND)):
        cm, lg = get(CHATMEM_WB, op, hi), get(LIMIT_GRPC, RPC, hi)
        value = cm.ops_per_s / lg.ops_per_s if cm and lg and lg.ops_per_s else None
        out.append(Check(f"{label}: ops/s at c={hi} / limit-grpc's", value, 0.65, ">="))
    for length, wants in ((small, ((LANGCHAIN_POSTGRES, 1.5), (LANGCHAIN_REDIS, 1.2))),
                          (big, ((LANGCHAIN_POSTGRES, 5.0), (LANGCHAIN_REDIS, 5.0)))):  # fmt: skip
        for peer, bound in wants:
            cm, p = get(CHATMEM_WB, chat_op(length), hi), get(peer, chat_op(length), hi)
            value = cm.ops_per_s / p.ops_per_s if cm and p and p.ops_per_s else None
            out.append(
                Check(f"chat loop, {length} msgs/thread, c={hi}: chatmem-wb ops/s / {peer}'s", value, bound, ">=")
            )
    wt, lp = get(CHATMEM_WT, APPEND, hi), get(LIMIT_POSTGRES, APPEND, hi)
    out.append(
        Check(
            f"write_through append ops/s at c={hi} / limit-postgres append's",
            wt.ops_per_s / lp.ops_per_s if wt and lp and lp.ops_per_s else None,
            0.5,
            ">=",
        )
    )
    return out


def saturation_checks(
    summary: Mapping[str, Any] | None, rows: Sequence[Row], status: Mapping[str, str], config: Config
) -> list[Check]:
    """Issue 16, target 5: overload is not an outage (bench/saturation.py), and write_through completes.

    Under saturation at most 1% of chatmem-wb's RPCs may be served degraded; in the same run every
    chatmem-wt phase (its preload included) must have gone through without a DEADLINE_EXCEEDED.
    """
    share = None if not summary else summary.get("degraded_share")
    detail = "" if not summary else summary.get("error", "")
    if summary and "error" not in summary:
        detail = (
            f"{summary['degraded_rpcs']}/{summary['rpcs']} RPCs at c={summary['clients']} + {summary['burners']} "
            f"burners, p99 {summary['p99_ms']} ms, RESOURCE_EXHAUSTED {summary['resource_exhausted']}, "
            f"DEADLINE_EXCEEDED {summary['deadline_exceeded']}, load average {summary['loadavg_during'][0]}"
        )
    out = [Check("saturation: share of chatmem-wb RPCs served degraded", share, 0.01, "<=", detail)]
    wt_status = status.get(CHATMEM_WT, "not selected")
    value: float | None = None
    if wt_status.startswith("unavailable"):
        value, detail = math.inf, wt_status[:200]
    elif CHATMEM_WT in config.targets:
        wt_rows = [r for r in rows if r.target == CHATMEM_WT]
        value = float(sum(r.errors.get("DEADLINE_EXCEEDED", 0) for r in wt_rows))
        detail = f"{len(wt_rows)} phases"
    name = "write_through (chatmem-wt) completed in this run: DEADLINE_EXCEEDED calls"
    out.append(Check(name, value, 0.0, "<=", detail))
    return out


def format_checks(found: Sequence[Check]) -> str:
    """One line per target: verdict, value, relation, bound."""
    lines = []
    for c in found:
        value = "n/a" if c.value is None else f"{c.value:.3f}"
        bound = "n/a" if c.bound is None else f"{c.bound:.3f}"
        lines.append(f"{c.verdict:4}  {c.name}: {value} {c.relation} {bound}" + (f"  ({c.detail})" if c.detail else ""))
    return "\n".join(lines)
