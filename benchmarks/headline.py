"""The headline table: the bubble in a synchronous loop, its removal by an asynchronous one, and
transformers' own continuous batching measured the same way.

Runs, on one GPU, each configuration in its own process through ``abprof run`` (so every number comes
from the same capture and analysis code as a user's run) and writes ``OUT/headline.md`` and
``OUT/headline.csv``::

    python benchmarks/headline.py --out reports/h100            # the full table
    python benchmarks/headline.py --out /tmp/h --only standard  # one workload

Each row is one run folder under OUT/runs/<workload>-<engine>-<mode>/. Profiler overhead is the
tokens/s of an unprofiled run of the same workload over the profiled one (``--measure-overhead``).
The rows are kept in OUT/headline.json: ``--merge`` adds to and replaces rows of an earlier call (a
device command lasts ten minutes, the whole table longer), ``--tables-only`` rewrites the tables
from it. Below the table, headline.md checks issue #7's goals on the rows present.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

# name -> abprof run options; "standard" is issue #7's workload
WORKLOADS = {
    "standard": ["--requests", "256", "--prompt-len", "uniform:128:1024", "--output-len", "fixed:256",
                 "--max-seqs", "256"],
    "small-batch": ["--requests", "64", "--prompt-len", "uniform:128:1024", "--output-len", "fixed:256",
                    "--max-seqs", "64"],
    "large-batch": ["--requests", "512", "--prompt-len", "uniform:128:1024", "--output-len", "fixed:256",
                    "--max-seqs", "512"],
}
RUNS = [("reference", "sync"), ("reference", "async"), ("reference", "async-mixed"), ("reference", "async-split"),
        ("transformers", "sync"), ("transformers", "async")]
# "async-split": the async loop with a step's prefill chunks and decodes as two batches on two streams. The
# default window (64 steps after the first ~150) is all decodes, where there is nothing to split, so the split
# row profiles steps 4-67, where prefill chunks and decodes share steps, beside "async-mixed": the plain async
# loop profiled over the same steps.
MIXED_WINDOW = ["--profile-steps", "4:67"]
MODE_OPTIONS = {"sync": ["--mode", "sync"], "async": ["--mode", "async"],
                "async-mixed": ["--mode", "async", *MIXED_WINDOW],
                "async-split": ["--mode", "async", "--split-prefill-decode", *MIXED_WINDOW]}
SPLIT_MODES, SPLIT_WORKLOADS = {"async-mixed", "async-split"}, {"standard"}  # those rows: standard workload only

COLUMNS = [
    ("workload", None), ("engine", None), ("mode", None),
    ("tokens_per_s", "tokens_per_s"), ("gpu_idle_pct (step)", "gpu_idle_pct.step"),
    ("gpu_idle_pct (kernel)", "gpu_idle_pct.kernel"), ("host_bound_pct", "host_bound_pct"),
    ("overlap_pct", "overlap_pct"), ("stream_concurrency_pct", "stream_concurrency_pct"),
    ("ttft_ms_p50", "ttft_ms_p50"), ("ttft_ms_p99", "ttft_ms_p99"), ("itl_ms_p50", "itl_ms_p50"),
    ("itl_ms_p99", "itl_ms_p99"), ("joules_per_token", "joules_per_token"),
]


def run_one(out: Path, workload: str, engine: str, mode: str, extra: list[str], timeout: float,
            overhead: bool) -> dict:
    """Run one configuration in its own process; return its row (values None where absent)."""
    from asyncbatch_prof.analysis.contract import lookup

    run_dir = out / "runs" / f"{workload}-{engine}-{mode}"
    cmd = [sys.executable, "-m", "asyncbatch_prof", "run", "--engine", engine, *MODE_OPTIONS[mode],
           "--out", str(run_dir), *(["--measure-overhead"] if overhead else []), *WORKLOADS[workload], *extra]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    row = {"workload": workload, "engine": engine, "mode": mode, "command": " ".join(cmd[1:]),
           "seconds": round(time.perf_counter() - started, 1), "exit_code": proc.returncode}
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "runs" / f"{workload}-{engine}-{mode}.log").write_text(proc.stdout + proc.stderr)
    metrics_path = run_dir / "metrics.json"
    if proc.returncode != 0 or not metrics_path.exists():
        row["error"] = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return row
    doc = json.loads(metrics_path.read_text())
    for title, name in COLUMNS[3:]:
        row[title], _ = lookup(doc, name)
    overhead = doc.get("profiler_overhead") or {}
    row["unprofiled_tokens_per_s"] = overhead.get("unprofiled_tokens_per_s")
    steps = (doc.get("steps") or {}).get("count")
    window_us = (doc["metrics"].get("window_us") or {}).get("step")
    row["window_ms_per_step"] = window_us / steps / 1e3 if steps and window_us else None
    row["clock_throttled"] = doc["metrics"].get("clock_throttled")
    return row


def fmt(value) -> str:
    """Table cell: numbers to 3 significant decimals, absent as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def write_tables(out: Path, rows: list[dict]) -> None:
    """Write headline.json (the rows), headline.csv (every field) and headline.md (table + goals), in table order."""
    rows = sorted(rows, key=lambda r: (list(WORKLOADS).index(r["workload"]), RUNS.index((r["engine"], r["mode"]))))
    (out / "headline.json").write_text(json.dumps(rows, indent=1) + "\n")
    order = [c for c, _ in COLUMNS] + EXTRA_COLUMNS
    fields = sorted({k for r in rows for k in r}, key=lambda k: ((order + [k]).index(k), k))  # others by name
    with open(out / "headline.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    titles = [c for c, _ in COLUMNS] + EXTRA_COLUMNS
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for r in rows:
        cells = [fmt(r.get(t)) for t in titles]
        if "error" in r:  # a run that did not finish: its reason in the first number's cell
            cells = cells[:3] + [f"failed: {r['error']}"] + ["—"] * (len(titles) - 4)
        lines.append("| " + " | ".join(cells) + " |")
    (out / "headline.md").write_text("\n".join(lines + [""] + goal_lines(rows)) + "\n")


EXTRA_COLUMNS = ["unprofiled_tokens_per_s", "window_ms_per_step", "clock_throttled"]


def _ok(value: bool | None) -> str:
    return "—" if value is None else ("met" if value else "**not met**")


def goal_lines(rows: list[dict]) -> list[str]:
    """Issue #7's goals, per workload, from the rows present (a goal whose rows are missing is absent)."""
    by = {(r["workload"], r["engine"], r["mode"]): r for r in rows if "error" not in r}
    out = ["## Goals (issue #7), from the rows above", "",
           "| workload | async idle / sync idle (≤ 0.1) | window speedup / idle-removed speedup (≥ 0.9) | "
           "run speedup, profiled | run speedup, unprofiled | reference async / transformers async tok/s (≥ 1) |",
           "|---|---|---|---|---|---|"]
    for workload in WORKLOADS:
        sync, asyn = by.get((workload, "reference", "sync")), by.get((workload, "reference", "async"))
        hf = by.get((workload, "transformers", "async"))
        if not sync or not asyn:
            continue
        i_s, i_a = sync.get("gpu_idle_pct (step)"), asyn.get("gpu_idle_pct (step)")
        idle_ratio = i_a / i_s if i_s and i_a is not None else None
        # removing the idle share (i_s - i_a) with the same GPU work predicts (1 - i_a) / (1 - i_s)
        predicted = (1 - i_a / 100) / (1 - i_s / 100) if i_s is not None and i_a is not None else None
        w_s, w_a = sync.get("window_ms_per_step"), asyn.get("window_ms_per_step")
        window = w_s / w_a if w_s and w_a else None
        speed = (window / predicted) if window and predicted else None
        run = _ratio(asyn.get("tokens_per_s"), sync.get("tokens_per_s"))
        unprof = _ratio(asyn.get("unprofiled_tokens_per_s"), sync.get("unprofiled_tokens_per_s"))
        vs_hf = _ratio(asyn.get("tokens_per_s"), hf.get("tokens_per_s")) if hf else None
        out.append(f"| {workload} | {fmt(idle_ratio)} ({_ok(None if idle_ratio is None else idle_ratio <= 0.1)}) "
                   f"| {fmt(window)} / {fmt(predicted)} = {fmt(speed)} ({_ok(None if speed is None else speed >= 0.9)}) "
                   f"| {fmt(run)} | {fmt(unprof)} "
                   f"| {fmt(vs_hf)} ({_ok(None if vs_hf is None else vs_hf >= 1)}) |")
    out += ["", "Window speedup: sync's milliseconds per profiled step over async's, on the same step indices "
            "(the idle shares come from those windows). Run speedup: whole-run output tokens/s, async over sync "
            "(profiled runs, and the unprofiled run of --measure-overhead)."]
    return out


def _ratio(a, b):
    return a / b if a is not None and b else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", nargs="*", choices=sorted(WORKLOADS), help="workloads to run (default: all)")
    parser.add_argument("--engines", nargs="*", default=["reference", "transformers"])
    parser.add_argument("--modes", nargs="*", choices=list(MODE_OPTIONS), default=list(MODE_OPTIONS),
                        help="modes to run (default: all; async-mixed and async-split run on the standard workload only)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run")
    parser.add_argument("--overhead-engines", nargs="*", default=["reference"],
                        help="engines whose runs also run unprofiled first (--measure-overhead)")
    parser.add_argument("--merge", action="store_true", help="keep the rows of OUT/headline.json not run now")
    parser.add_argument("--tables-only", action="store_true", help="rewrite the tables from OUT/headline.json")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="more `abprof run` options after --")
    args = parser.parse_args()
    extra = [a for a in args.extra if a != "--"]
    args.out.mkdir(parents=True, exist_ok=True)
    saved = args.out / "headline.json"
    rows = json.loads(saved.read_text()) if (args.merge or args.tables_only) and saved.exists() else []
    if args.tables_only:
        if not rows:
            sys.exit(f"headline: error: no rows in {saved}")
        write_tables(args.out, rows)
        print((args.out / "headline.md").read_text())
        return
    for workload in args.only or list(WORKLOADS):
        for engine, mode in RUNS:
            if engine not in args.engines or mode not in args.modes:
                continue
            if mode in SPLIT_MODES and workload not in SPLIT_WORKLOADS:
                continue
            try:
                row = run_one(args.out, workload, engine, mode, extra, args.timeout, engine in args.overhead_engines)
            except subprocess.TimeoutExpired:
                row = {"workload": workload, "engine": engine, "mode": mode, "error": "timeout"}
            print(json.dumps(row), flush=True)
            rows = [r for r in rows if (r["workload"], r["engine"], r["mode"]) != (workload, engine, mode)] + [row]
            write_tables(args.out, rows)
    print((args.out / "headline.md").read_text())


if __name__ == "__main__":
    main()
