"""The ``python -m bench`` command line: parse the options, run the harness, print and save the report."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import pathlib
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any

from bench import percore
from bench.config import BACKGROUND_SAMPLE_S, NOISE_RETRY_BUDGET, NOISY_CORES, QUICK, Config, Row, peer_status
from bench.cpu import machine_busy_seconds
from bench.latency import machine_info
from bench.orchestrator import Harness
from bench.report import cores_summary, format_table, git_state, no_nan, ratio_lines
from bench.saturation import format_summary
from bench.verdicts import Check, checks, format_checks, references, saturation_checks
from bench.workload import ALL_TARGETS, PEERS

DESCRIPTION = """
chatmem against the floors (limit-grpc, limit-redis, limit-postgres) and the LangChain peers, in one run.

``python -m bench`` starts one Redis and one PostgreSQL shared by every target, the chatmem servers
(write_behind, write_through, and the embedded SQLite default) and the bare limit-grpc server as processes
of their own, and one or more load generator processes (``bench.loadgen``), apart from every server. Each
operation runs at each concurrency for a fixed time (and a bounded number of calls), target after target.
Server, Redis, PostgreSQL and load generator CPU come from /proc/<pid>/stat of each process tree, sampled at
the start and end of the measured window. It prints a table, the ratios of chatmem to the limits and the
peers, and the performance targets as PASS/FAIL, and writes the whole report as JSON under bench/results/.
"""


def parse_int_list(text: str) -> tuple[int, ...]:
    """'1,32' -> (1, 32)."""
    values = tuple(int(x) for x in text.split(",") if x.strip())
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def parse_args(argv: Sequence[str] | None) -> Config:
    """Build the configuration from the command line."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=DESCRIPTION)
    parser.add_argument("--quick", action="store_true", help="a tiny workload: 4 threads, 0.3 s per phase, c=1,2")
    parser.add_argument("--seconds", type=float, help="measured time per phase (default 5)")
    parser.add_argument("--warmup", type=float, help="warm-up time per phase (default 1)")
    parser.add_argument("--concurrency", type=parse_int_list, help="concurrent clients per phase (default 1,32)")
    parser.add_argument("--targets", help=f"comma-separated subset of {','.join(ALL_TARGETS)}")
    parser.add_argument("--ops", help="comma-separated subset of rpc,read,hydrate,stream,chat@<n>,append")
    parser.add_argument("--threads", type=int, help="threads of the read/append and short chat sets (default 200)")
    parser.add_argument("--chat-lengths", type=parse_int_list, help="messages per thread of the chat loops (60,1000)")
    parser.add_argument("--long-threads", type=int, help="threads per long chat set (default 64)")
    parser.add_argument("--hydrate-messages", type=int, help="messages per hydration thread (default 100000)")
    parser.add_argument("--stream-messages", type=int, help="messages of the streamed thread (default 200000)")
    parser.add_argument("--max-ops", type=int, help="most calls per phase (default 1000000)")
    parser.add_argument("--loadgen-procs", type=int, help="load generator processes (default 2)")
    parser.add_argument("--server-workers", type=int, help="GRPC__WORKERS of the chatmem servers (default 1)")
    parser.add_argument(
        "--channels", type=int, help="chatmem channels per load generator (default 1; 4 with --server-workers > 1)"
    )
    parser.add_argument(
        "--noise-retries",
        type=int,
        help=f"measure a phase again when over {NOISY_CORES} cores were busy outside the run (default 1, "
        f"at most {NOISE_RETRY_BUDGET} per run)",
    )
    parser.add_argument("--results-dir", help="where the JSON goes (default bench/results)")
    parser.add_argument(
        "--saturation-seconds", type=float, help="the saturation phase on chatmem-wb (default 10; 0 skips it)"
    )
    parser.add_argument("--saturation-clients", type=int, help="clients of the saturation phase (default 256)")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else Config()
    targets = None
    if args.targets:
        targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
        unknown = sorted(set(targets) - set(ALL_TARGETS))
        if unknown:
            parser.error(f"unknown targets {unknown}; choose from {', '.join(ALL_TARGETS)}")
    ops = tuple(x.strip() for x in args.ops.split(",") if x.strip()) if args.ops else None
    overrides = {
        "ops": ops,
        "seconds": args.seconds,
        "warmup_s": args.warmup,
        "concurrency": args.concurrency,
        "targets": targets,
        "threads": args.threads,
        "chat_lengths": args.chat_lengths,
        "long_threads": args.long_threads,
        "hydrate_messages": args.hydrate_messages,
        "stream_messages": args.stream_messages,
        "max_ops": args.max_ops,
        "loadgen_procs": args.loadgen_procs,
        "server_workers": args.server_workers,
        "channels": args.channels,
        "noise_retries": args.noise_retries,
        "results_dir": args.results_dir,
        "saturation_s": args.saturation_seconds,
        "saturation_clients": args.saturation_clients,
    }
    config = replace(base, **{k: v for k, v in overrides.items() if v is not None})
    if config.seconds <= 0 or config.warmup_s < 0 or config.max_ops < 1 or config.loadgen_procs < 1:
        parser.error("--seconds must be positive, --warmup >= 0, --max-ops and --loadgen-procs >= 1")
    need = max(config.concurrency)
    if config.threads < need or config.long_threads < need:
        parser.error(f"--threads and --long-threads must be at least the highest concurrency ({need})")
    if any(n < config.window for n in (config.messages, *config.chat_lengths, config.hydrate_messages)):
        parser.error(f"every thread must hold at least the window ({config.window} messages)")
    return config


def run(config: Config, argv: Sequence[str] = ()) -> tuple[dict[str, Any], pathlib.Path]:
    """Run everything, write the JSON report and return it with its path."""
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        h = Harness(config, stack)
        h.log(f"workdir {h.workdir}")
        busy0, at0 = machine_busy_seconds(), time.monotonic()
        time.sleep(BACKGROUND_SAMPLE_S)
        h.setup["background_cores_before_start"] = round((machine_busy_seconds() - busy0) / (time.monotonic() - at0), 2)
        h.log(f"machine busy before the run: {h.setup['background_cores_before_start']} cores")
        h.start_infrastructure()
        h.start_servers()
        h.start_loadgens()
        h.log("targets open: " + ", ".join(t for t in ALL_TARGETS if h.active(t)))
        h.preload()
        h.log(f"preloaded in {h.setup['preload_total_s']}s: {json.dumps(h.setup['preload'])}")
        h.measure_idle(min(2.0, config.seconds * 2))
        h.log(f"idle CPU (cores): {h.setup['idle_cores']}")
        h.run_phases()
        h.run_saturation()
        problems = h.server_problems()
        loadgen_logs = {lg.index: lg.log_tail(2000) for lg in h.loadgens}
    total_s = time.perf_counter() - t0
    found = checks(h.rows, config) + saturation_checks(h.setup.get("saturation"), h.rows, h.status, config)
    machine = machine_info()
    report: dict[str, Any] = {
        "benchmark": "harness",
        "date_utc": started.isoformat(timespec="seconds"),
        "command": [sys.executable, "-m", "bench", *argv],
        "git": git_state(),
        "config": asdict(config),
        "machine": machine,
        "targets": {t: (why or "ok") for t, why in h.status.items()},
        "setup": {
            **h.setup,
            "topology": (
                f"{config.loadgen_procs} load generator process(es), the chatmem servers and limit-grpc each in a "
                "process of its own, one Redis and one PostgreSQL shared by every target, all on 127.0.0.1"
            ),
            "loadgen_event_loop": "uvloop",
        },
        "workload": h.workload.to_json(),
        "phases": [asdict(r) for r in h.rows],
        "ratios": ratio_lines(h.rows, config),
        "per_core": percore.report_lines(h.rows, config),
        "checks": [{**asdict(c), "verdict": c.verdict} for c in found],
        "references": [{**asdict(c), "verdict": c.verdict} for c in references(h.rows, config)],
        "cores": cores_summary(h.rows),
        "server_problems": problems,
        "loadgen_log_tails": loadgen_logs,
        "total_seconds": round(total_s, 1),
    }
    out_dir = pathlib.Path(config.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"harness-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(no_nan(report), indent=2, allow_nan=False) + "\n")
    return report, path


def main(argv: Sequence[str] | None = None) -> int:
    """Run the harness and print the table, the ratios and the targets.

    Returns:
        0, or 1 when a selected target produced no figures or a call failed.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    config = parse_args(args)
    missing = [f"{t}: {why}" for t in PEERS if t in config.targets and (why := peer_status(t))]
    if missing:
        print("peers missing, the run goes on without them:\n  " + "\n  ".join(missing), file=sys.stderr)
    report, path = run(config, args)
    rows = [Row(**r) for r in no_nan(report["phases"])]
    m = report["machine"]
    print(
        f"chatmem benchmark harness, {report['date_utc']}, git {report['git']}, {m['nproc']} cores ({m['cpu_model']}), "
        f"python {m['python']}, grpcio {m['grpcio']}"
    )
    print(f"redis: {report['setup'].get('redis')}; postgres: {m['postgres']} ({report['setup'].get('postgres')})")
    print(
        f"{config.loadgen_procs} load generator process(es); machine busy before the run: "
        f"{report['setup'].get('background_cores_before_start')} cores; noisy phases measured again: "
        f"{sum(r.attempts - 1 for r in rows)}"
    )
    print(
        f"{config.seconds}s per phase after {config.warmup_s}s warm-up; {config.threads} threads x {config.messages} "
        f"msgs of {config.content_chars} chars; chat at {config.chat_lengths} msgs/thread; "
        f"hydration {config.hydrate_messages} msgs/thread; stream {config.stream_messages} msgs"
    )
    print()
    print(format_table(rows, report["targets"]))
    print()
    print("chatmem / limit and chatmem / peer:")
    print("\n".join(report["ratios"]) or "(none)")
    print()
    print("\n".join(report["per_core"]) or "CPU/op with 1 and 2 workers: not measured")
    print()
    found_saturation = report["setup"].get("saturation")
    if found_saturation and "error" not in found_saturation:
        print(format_summary(found_saturation))
        print()
    print("targets (issue 16):")
    print(format_checks([Check(**{k: v for k, v in c.items() if k != "verdict"}) for c in report["checks"]]))
    print()
    print("earlier targets (issue 5), for comparison with earlier runs:")
    print(format_checks([Check(**{k: v for k, v in c.items() if k != "verdict"}) for c in report["references"]]))
    print()
    print(report["cores"])
    problems = [
        f"{r.op} c={r.concurrency} {r.target}: {sum(r.errors.values())} failed calls, first: {r.first_error}"
        for r in rows
        if r.errors
    ]
    problems += [f"{r.op} c={r.concurrency} {r.target}: anomalous responses {r.anomalies}" for r in rows if r.anomalies]
    problems += [f"{r.op} c={r.concurrency} {r.target}: no call completed in the window" for r in rows if not r.units]
    problems += [
        f"{r.op} c={r.concurrency} {r.target}: {r.unattributed_cores:.2f} cores busy outside the run's processes "
        "(another program, or kernel work): a noisy phase"
        for r in rows
        if r.unattributed_cores is not None and r.unattributed_cores > NOISY_CORES
    ]
    problems += [f"{t}: {why}" for t, why in report["targets"].items() if why not in ("ok", "not selected")]
    for target, lines in report["server_problems"].items():
        problems.append(f"{target} output:\n    " + "\n    ".join(lines[:20]))
    print("problems:" if problems else "problems: none", *problems, sep="\n  ")
    print(f"total {report['total_seconds']}s; results: {path}")
    selected_ok = all(
        any(r.target == t and r.units for r in rows) for t in config.targets if report["targets"].get(t) == "ok"
    )
    failed_calls = any(r.errors for r in rows)
    return 0 if selected_ok and not failed_calls else 1
