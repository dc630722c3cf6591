"""The headline table: the bubble in a synchronous loop, its removal by an asynchronous one, and
transformers' own continuous batching measured the same way.

Runs, on one GPU, each configuration in its own process through ``abprof run`` (so every number comes
from the same capture and analysis code as a user's run) and writes ``OUT/headline.md`` and
``OUT/headline.csv``::

    python benchmarks/headline.py --out reports/h100            # the full table
    python benchmarks/headline.py --out /tmp/h --only standard  # one workload

Each row is one run folder under OUT/runs/<workload>-<engine>-<mode>/. Profiler overhead is the
tokens/s of an unprofiled run of the same workload over the profiled one (``--measure-overhead``).
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
RUNS = [("reference", "sync"), ("reference", "async"), ("transformers", "sync"), ("transformers", "async")]

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
    cmd = [sys.executable, "-m", "asyncbatch_prof", "run", "--engine", engine, "--mode", mode,
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
    return row


def fmt(value) -> str:
    """Table cell: numbers to 3 significant decimals, absent as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def write_tables(out: Path, rows: list[dict]) -> None:
    """Write headline.csv (every field) and headline.md (the table columns)."""
    fields = sorted({k for r in rows for k in r}, key=lambda k: ([c for c, _ in COLUMNS] + [k]).index(k))
    with open(out / "headline.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    titles = [c for c, _ in COLUMNS] + ["unprofiled_tokens_per_s"]
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for r in rows:
        cells = [fmt(r.get(t)) if "error" not in r or t in ("workload", "engine", "mode") else "failed"
                 for t in titles]
        lines.append("| " + " | ".join(cells) + " |")
    (out / "headline.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", nargs="*", choices=sorted(WORKLOADS), help="workloads to run (default: all)")
    parser.add_argument("--engines", nargs="*", default=["reference", "transformers"])
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run")
    parser.add_argument("--overhead-engines", nargs="*", default=["reference"],
                        help="engines whose runs also run unprofiled first (--measure-overhead)")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="more `abprof run` options after --")
    args = parser.parse_args()
    extra = [a for a in args.extra if a != "--"]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for workload in args.only or list(WORKLOADS):
        for engine, mode in RUNS:
            if engine not in args.engines:
                continue
            try:
                rows.append(run_one(args.out, workload, engine, mode, extra, args.timeout,
                                    engine in args.overhead_engines))
            except subprocess.TimeoutExpired:
                rows.append({"workload": workload, "engine": engine, "mode": mode, "error": "timeout"})
            print(json.dumps(rows[-1]), flush=True)
            write_tables(args.out, rows)
    print((args.out / "headline.md").read_text())


if __name__ == "__main__":
    main()
