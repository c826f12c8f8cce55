"""What a harness run measures (Config, the quick preset), the constants it runs by, and one phase's result (Row)."""

from __future__ import annotations

import importlib.util
import pathlib
from dataclasses import dataclass, field

from bench.workload import (
    ALL_TARGETS,
    CHATMEM_WB,
    CHATMEM_WB_W1,
    CHATMEM_WB_W2,
    CHATMEM_WT,
    LANGCHAIN_POSTGRES,
    LANGCHAIN_REDIS,
    LIMIT_POSTGRES,
    LIMIT_REDIS,
    Workload,
)

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
DATABASES = {
    CHATMEM_WB: "chatmem_wb",
    CHATMEM_WT: "chatmem_wt",
    LIMIT_POSTGRES: "limit_pg",
    LANGCHAIN_POSTGRES: "lc_pg",
    CHATMEM_WB_W1: "chatmem_wb_w1",
    CHATMEM_WB_W2: "chatmem_wb_w2",
}
REDIS_PREFIXES = {
    CHATMEM_WB: "cmwb", CHATMEM_WT: "cmwt", LIMIT_REDIS: "lr:", LANGCHAIN_REDIS: "lcr:",
    CHATMEM_WB_W1: "cmw1", CHATMEM_WB_W2: "cmw2",
}  # fmt: skip
PEER_PACKAGES = {
    LANGCHAIN_POSTGRES: ("langchain_postgres", "psycopg", "langchain_core"),
    LANGCHAIN_REDIS: ("langchain_redis", "redisvl", "langchain_core"),
}
OPEN_TIMEOUT_S = 120.0
PRELOAD_TIMEOUT_S = 900.0
DRAIN_TIMEOUT_S = 180.0
PHASE_GRACE_S = 120.0
NOISY_CORES = 0.3
NOISE_PAUSE_S = 2.0
BACKGROUND_SAMPLE_S = 3.0
NOISE_RETRY_BUDGET = 15


@dataclass(frozen=True)
class Config:
    """What to load and how long to measure."""

    seconds: float = 5.0
    warmup_s: float = 1.0
    concurrency: tuple[int, ...] = (1, 32)
    targets: tuple[str, ...] = ALL_TARGETS
    ops: tuple[str, ...] = ()
    threads: int = 200
    messages: int = 60
    chat_lengths: tuple[int, ...] = (60, 1000)
    long_threads: int = 64
    hydrate_messages: int = 100_000
    stream_messages: int = 200_000
    window: int = 50
    content_chars: int = 300
    stream_chunk: int = 500
    max_ops: int = 1_000_000
    loadgen_procs: int = 2
    server_workers: int = 1
    channels: int = 0
    noise_retries: int = 1
    saturation_s: float = 10.0
    saturation_clients: int = 256
    seed: int = 1
    quick: bool = False
    results_dir: str = str(RESULTS_DIR)

    def workload(self) -> Workload:
        """The thread sets and texts of this run."""
        return Workload.build(
            threads=self.threads,
            messages=self.messages,
            chat_lengths=self.chat_lengths,
            long_threads=self.long_threads,
            hydrate_threads=max(self.concurrency),
            hydrate_messages=self.hydrate_messages,
            stream_messages=self.stream_messages,
            window=self.window,
            content_chars=self.content_chars,
            stream_chunk=self.stream_chunk,
            seed=self.seed,
        )


QUICK = Config(
    seconds=0.3,
    warmup_s=0.2,
    concurrency=(1, 2),
    threads=4,
    chat_lengths=(60, 200),
    long_threads=2,
    hydrate_messages=2_000,
    stream_messages=5_000,
    noise_retries=0,
    saturation_s=0.3,
    saturation_clients=8,
    quick=True,
)


@dataclass
class Row:
    """The measured outcome of one (operation, concurrency, target) phase."""

    op: str
    concurrency: int
    target: str
    unit: str
    calls: int
    units: int
    wall_s: float
    ops_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    server_cpu_us_per_op: float | None
    redis_cpu_us_per_op: float
    postgres_cpu_us_per_op: float
    loadgen_cpu_us_per_op: float
    other_servers_cpu_us_per_op: float
    server_side_cores: float
    loadgen_cores: float
    unattributed_cores: float
    errors: dict[str, int] = field(default_factory=dict)
    first_error: str = ""
    anomalies: dict[str, int] = field(default_factory=dict)
    warmup_calls: int = 0
    hit_max_ops: bool = False
    drain_after_s: float | None = None
    attempts: int = 1


def peer_status(target: str) -> str:
    """'' if a peer's packages are installed, else why not (with the fix)."""
    missing = [p for p in PEER_PACKAGES.get(target, ()) if importlib.util.find_spec(p) is None]
    if missing:
        return f"unavailable: not installed: {', '.join(missing)} (pip install -r bench/requirements.txt)"
    return ""
