"""The performance targets of the harness, each checked as PASS or FAIL against the measured rows."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from bench.config import Config, Row
from bench.report import find, fmt_us
from bench.workload import (
    APPEND,
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
    """One performance target of issue 5."""

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


def checks(rows: Sequence[Row], config: Config) -> list[Check]:
    """The targets of issue 5, computed from this run's rows (at the lowest and highest concurrency)."""
    lo, hi = min(config.concurrency), max(config.concurrency)
    small, big = min(config.chat_lengths), max(config.chat_lengths)
    out: list[Check] = []

    def get(target: str, op: str, c: int) -> Row | None:
        return find(rows, target, op, c)

    for label, op in (("GetHistory(50) cache hit", READ), ("AppendMessages write_behind", APPEND)):
        for c in sorted({lo, hi}):
            cm, lg = get(CHATMEM_WB, op, c), get(LIMIT_GRPC, RPC, c)
            value = bound = None
            if cm and lg and cm.server_cpu_us_per_op is not None and lg.server_cpu_us_per_op:
                value, bound = cm.server_cpu_us_per_op / lg.server_cpu_us_per_op, 1.5
            detail = (
                f"{fmt_us(cm.server_cpu_us_per_op)} vs {fmt_us(lg.server_cpu_us_per_op)} us/op" if cm and lg else ""
            )
            out.append(Check(f"{label}: server CPU/op / limit-grpc's, c={c}", value, bound, "<=", detail))
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
    cm, lp = get(CHATMEM_WB, STREAM, lo), get(LIMIT_POSTGRES, STREAM, lo)
    out.append(
        Check(
            f"StreamHistory msgs/s, {config.stream_messages} msgs, c={lo} / limit-postgres scan's (seq, encoded)",
            cm.ops_per_s / lp.ops_per_s if cm and lp and lp.ops_per_s else None,
            0.8,
            ">=",
            f"{cm.ops_per_s:.0f} vs {lp.ops_per_s:.0f} msgs/s" if cm and lp else "",
        )
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


def format_checks(found: Sequence[Check]) -> str:
    """One line per target: verdict, value, relation, bound."""
    lines = []
    for c in found:
        value = "n/a" if c.value is None else f"{c.value:.3f}"
        bound = "n/a" if c.bound is None else f"{c.bound:.3f}"
        lines.append(f"{c.verdict:4}  {c.name}: {value} {c.relation} {bound}" + (f"  ({c.detail})" if c.detail else ""))
    return "\n".join(lines)
