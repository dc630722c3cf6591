"""Where the profiler's cost goes in the engine's loops: recorded steps against steps of a process that never
started a profiler, and what stays slower once a profiler has stopped (CUPTI left attached).

    python3 benchmarks/cupti_lingering.py --out DIR              # GPU: standard workload, llama-1b
    python3 benchmarks/cupti_lingering.py --out DIR --dry-run    # CPU, tiny preset (smoke)

Each (loop, variant) runs in its own fresh process: the engine is built and warmed up, then ``clean`` passes
(no profiler has ever started in the process), then one pass recorded as abprof run records it (the
profiler warm-up session, then the default window), then ``after`` passes with nothing recording. Every pass
replays the same workload, so step k is the same batch in every pass. Per step the host's time in
``runner.launch`` (prepare + enqueue), in ``runner.wait`` (blocked on the GPU's tokens) and the rest
(schedule, update) is timed with perf_counter, so a slower step says which side grew. Micro-benchmarks of
single CUDA calls (an eager kernel launch, an event record, a pinned H2D copy, the largest decode graph's
replay) run before any profiler and after the recorded pass.

Variants: ``pieces`` (the engine's default piecewise decode graphs, TEARDOWN_CUPTI unset, as abprof run),
``one-graph`` (one decode graph per batch size), ``pieces-teardown`` (TEARDOWN_CUPTI=1, no separate warm-up
session: the window's session is the process's first, and a second window pass checks whether a later
session still records GPU activity). Each (loop, variant) runs ``--repeats`` times in fresh processes, the
variants alternating; per variant the mean and 95% t-interval of the per-process overhead.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.overhead import PRESETS, PhaseClock, environment, graph_replay_us, mean_ci95, warmed_engine  # noqa: E402

VARIANTS = {"pieces": dict(piecewise=True, teardown=False), "one-graph": dict(piecewise=False, teardown=False),
            "pieces-teardown": dict(piecewise=True, teardown=True)}


def timed_pass(engine, requests, clock: PhaseClock, extra_on_step=None) -> list[dict]:
    clock.reset()

    def on_step(i: int) -> None:
        clock.on_step(i)
        if extra_on_step is not None:
            extra_on_step(i)

    result = engine.generate(requests, on_step=on_step)
    steps = []
    for (s, e), p in zip(result.step_spans_s, clock.per_step):
        steps.append({"ms": 1e3 * (e - s), "launch_ms": 1e3 * p["launch"], "wait_ms": 1e3 * p["wait"],
                      "rest_ms": 1e3 * (e - s - p["launch"] - p["wait"])})
    return steps


def summary(steps: list[dict], lo: int, hi: int) -> dict:
    sel = steps[lo:min(hi, len(steps))]
    if not sel:
        return None
    return {k: statistics.median(s[k] for s in sel) for k in ("ms", "launch_ms", "wait_ms", "rest_ms")}


def micro(engine, cuda: bool, reps: int = 2000) -> dict:
    """Host time (median, us) of single CUDA calls."""
    import torch

    if not cuda:
        return {}
    out = {}
    x = torch.zeros(16, device="cuda")
    pinned = torch.zeros(4096, dtype=torch.int64, pin_memory=True)
    dev = torch.zeros(4096, dtype=torch.int64, device="cuda")
    ev = torch.cuda.Event()

    def bench(name, fn):
        times = []
        for i in range(reps):
            t = time.perf_counter()
            fn()
            times.append(1e6 * (time.perf_counter() - t))
            if i % 100 == 99:
                torch.cuda.synchronize()
        torch.cuda.synchronize()
        out[name] = statistics.median(times)

    bench("eager_add_us", lambda: x.add_(1))
    bench("event_record_us", lambda: ev.record())
    bench("h2d_pinned_copy_us", lambda: dev.copy_(pinned, non_blocking=True))
    bench("event_query_us", lambda: ev.query())
    out["graph_replay_us"] = graph_replay_us(engine, cuda)
    return out


def count_gpu_events(path: Path) -> int | None:
    if not path.exists():
        return None
    with gzip.open(path, "rt") as f:
        doc = json.load(f)
    return sum(1 for e in doc.get("traceEvents", []) if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"))


def run_part(mode: str, variant: str, cfg: dict, clean_passes: int) -> dict:
    from asyncbatch_prof.capture.profiler import StepProfiler, warm_up_profiler

    v = VARIANTS[variant]
    engine, requests, window, cuda = warmed_engine(mode, cfg, {"piecewise_graphs": v["piecewise"]})
    clock = PhaseClock({"launch": (engine.runner, "launch"), "wait": (engine.runner, "wait")})
    lo, hi = window.first, window.first + window.active
    steady = cfg["steady"]
    doc = {"mode": mode, "variant": variant, "window": [lo, hi - 1], "steady": list(steady),
           "teardown_cupti_env": os.environ.get("TEARDOWN_CUPTI"), "micro_before": micro(engine, cuda)}
    clean = [timed_pass(engine, requests, clock) for _ in range(clean_passes)]
    doc["clean"] = [{"window": summary(p, lo, hi), "steady": summary(p, *steady)} for p in clean]
    with tempfile.TemporaryDirectory() as tmp:
        sessions = []
        for n in range(2 if v["teardown"] else 1):
            if not v["teardown"]:
                t = time.perf_counter()
                warm_up_profiler(cuda)
                doc["warm_up_s"] = time.perf_counter() - t
            path = Path(tmp) / f"w{n}.json.gz"
            prof = StepProfiler(path, window, cuda=cuda)
            with prof:
                steps = timed_pass(engine, requests, clock, prof.step)
            # each window step against the median of the same step over the clean passes
            ratios = [steps[k]["ms"] / statistics.median(p[k]["ms"] for p in clean) - 1
                      for k in range(lo, min(hi, len(steps)))]
            sessions.append({"window": summary(steps, lo, hi), "steady_outside_window": summary(steps, hi, steady[1]),
                             "gpu_events": count_gpu_events(path),
                             "per_step_vs_clean_pct_median": 100 * statistics.median(ratios)})
        doc["recorded"] = sessions
    after = [timed_pass(engine, requests, clock) for _ in range(clean_passes)]
    doc["after"] = [{"window": summary(p, lo, hi), "steady": summary(p, *steady)} for p in after]
    doc["micro_after"] = micro(engine, cuda)
    doc["graph_piece_layers"] = engine.describe()["graph_piece_layers"]
    engine.close()
    return doc


def summarize(parts: list[dict]) -> dict:
    """Per (loop, variant): the recorded window's per-step overhead against clean steps, mean and 95% interval
    over the processes; the clean and recorded window medians; the window's host launch and wait medians."""
    out = {}
    for p in parts:
        if "error" in p:
            continue
        key = f"{p['mode']}/{p['variant']}"
        o = out.setdefault(key, {"pct": [], "clean_ms": [], "recorded_ms": [], "after_ms": [], "clean_launch_ms": [],
                                 "recorded_launch_ms": [], "clean_wait_ms": [], "recorded_wait_ms": []})
        rec = p["recorded"][0]
        o["pct"].append(rec["per_step_vs_clean_pct_median"])
        o["clean_ms"].append(statistics.median(c["window"]["ms"] for c in p["clean"]))
        o["after_ms"].append(statistics.median(c["window"]["ms"] for c in p["after"]))
        o["recorded_ms"].append(rec["window"]["ms"])
        o["clean_launch_ms"].append(statistics.median(c["window"]["launch_ms"] for c in p["clean"]))
        o["recorded_launch_ms"].append(rec["window"]["launch_ms"])
        o["clean_wait_ms"].append(statistics.median(c["window"]["wait_ms"] for c in p["clean"]))
        o["recorded_wait_ms"].append(rec["window"]["wait_ms"])
    for o in out.values():
        o["overhead_pct"], o["ci95"] = mean_ci95(o["pct"])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--clean-passes", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variants", nargs="+", default=["pieces", "one-graph"], choices=list(VARIANTS))
    p.add_argument("--part", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--timeout", type=int, default=200)
    args = p.parse_args(argv)
    cfg = PRESETS["dry" if args.dry_run else "full"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.part:
        doc = run_part(args.part[0], args.part[1], cfg, args.clean_passes)
        (out / f".part-{args.part[0]}-{args.part[1]}.json").write_text(json.dumps(doc))
        return 0
    docs = {"environment": environment(args.dry_run), "parts": []}
    runs = [(r, mode, variant) for r in range(args.repeats) for mode in ("sync", "async")
            for variant in (args.variants if r % 2 == 0 else args.variants[::-1])]
    for r, mode, variant in runs:
        env = dict(os.environ)
        env.pop("TEARDOWN_CUPTI", None)
        if VARIANTS[variant]["teardown"]:
            env["TEARDOWN_CUPTI"] = "1"
        cmd = [sys.executable, __file__, "--out", str(out), "--part", mode, variant,
               "--clean-passes", str(args.clean_passes)] + (["--dry-run"] if args.dry_run else [])
        part = out / f".part-{mode}-{variant}.json"
        try:
            proc = subprocess.run(cmd, env=env, timeout=args.timeout, capture_output=True, text=True)
            (out / f"lingering-{mode}-{variant}-{r}.log").write_text(proc.stdout + proc.stderr)
            doc = json.loads(part.read_text()) if proc.returncode == 0 and part.exists() else \
                {"mode": mode, "variant": variant, "error": (proc.stderr.strip().splitlines() or ["exit"])[-1]}
        except subprocess.TimeoutExpired:
            doc = {"mode": mode, "variant": variant, "error": f"timed out after {args.timeout} s"}
        part.unlink(missing_ok=True)
        docs["parts"].append({"repeat": r, **doc})
        print(json.dumps(docs["parts"][-1]), flush=True)
    docs["summary"] = summarize(docs["parts"])
    print(json.dumps(docs["summary"], indent=1), flush=True)
    (out / "cupti-lingering.json").write_text(json.dumps(docs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
