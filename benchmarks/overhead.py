"""The cost of measuring (issue 19): how much the profiler and the NVML sampler slow the very steps they record.

    python3 benchmarks/overhead.py --out reports/h200              # GPU: standard workload, llama-1b, 5 repeats
    python3 benchmarks/overhead.py --dry-run --out /tmp/o          # CPU, tiny preset, seconds (CI smoke)

Method. Each loop (sync, async) runs in its own process: one engine, built and warmed up once, then the same
workload is generated again and again, each pass under one *arm*:

- ``off``: nothing but the engine;
- ``nvml``: the NVML sampler only, as ``abprof run`` starts it (a child process; a thread if the child
  cannot start; each pass records which ran as ``nvml_sampler``);
- ``default``: what ``abprof run`` does by default: torch.profiler (CPU + CUDA activity, CPU ops of every
  thread) over the default window of steps, with the NVML sampler running;
- ``main-thread``: as default, but CPU ops recorded for the thread that started the profiler only;
- ``cuda-only``: as default, but CUDA activity only (runtime calls and GPU records, no CPU ops).

Every pass records each step's (start, end) on the engine's own clock (``GenerateResult.step_spans_s``,
always on). A pass's step time is the mean wall time of the profiled window's steps; the profiler's start
(the schedule's first ``step()``), its stop and the trace export happen between steps or after the pass,
so they are outside the timed steps and are reported on their own. The arms of one repeat run back to back
in an order rotated from repeat to repeat (so slow drift of the machine does not favour one arm); an arm's
overhead in a repeat is its step time over the ``off`` pass of the same repeat, minus one. Over the repeats:
the mean overhead and a 95% confidence interval (Student's t over the repeats).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # runs from a checkout whether or not the package is installed
    sys.path.insert(0, str(REPO))

PRESETS = {
    "full": dict(model="llama-1b", requests=256, prompt="uniform:128:1024", output="fixed:256", max_seqs=256,
                 max_batch_tokens=2048, repeats=5),
    "dry": dict(model="tiny", requests=8, prompt="uniform:16:32", output="fixed:32", max_seqs=8,
                max_batch_tokens=128, repeats=2),
}
ARMS = ("off", "nvml", "default", "main-thread", "cuda-only")
WARMUP_STEPS = 2  # abprof run's --warmup-steps default
# two-sided 97.5% quantiles of Student's t (df 1..10); the normal 1.96 beyond
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def mean_ci95(values: list[float]) -> tuple[float, list[float] | None]:
    """Mean and 95% t-interval of ``values`` (None with fewer than two)."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, None
    t = T975[len(values) - 2] if len(values) - 1 <= len(T975) else 1.96
    half = t * statistics.stdev(values) / math.sqrt(len(values))
    return m, [m - half, m + half]


# ---- one loop, in its own process ---------------------------------------------------------------
def _capture():
    """The capture pieces abprof run uses (profiler, window, NVML sampler)."""
    from asyncbatch_prof.capture.nvml import NvmlSampler
    from asyncbatch_prof.capture.profiler import ProfileWindow, StepProfiler, warm_up_profiler
    return NvmlSampler, ProfileWindow, StepProfiler, warm_up_profiler


def _window(cfg: dict, workload: dict):
    from asyncbatch_prof.pipeline.plan import default_window

    return default_window(workload, cfg["max_batch_tokens"], cfg["max_seqs"], WARMUP_STEPS)


def _profiler_kwargs(arm: str):
    """What the arm changes in StepProfiler: recorded activities and whether every thread's CPU ops are kept."""
    return {"default": {}, "main-thread": {"all_threads": False}, "cuda-only": {"cpu": False}}[arm]


def one_pass(engine, requests, arm: str, window, cuda: bool, tmp: Path) -> dict:
    """Generate the workload once under ``arm``; the profiled window's step times and the out-of-step costs."""
    NvmlSampler, _, StepProfiler, _ = _capture()
    sampler = NvmlSampler() if arm != "off" and cuda else None
    if sampler is not None:
        sampler.start()
    callback_s: list[float] = []
    export_s = None
    try:
        if arm in ("off", "nvml"):
            result = engine.generate(requests)
        else:
            profiler = StepProfiler(tmp / f"{arm}.json.gz", window, cuda=cuda, **_profiler_kwargs(arm))
            with profiler:
                def step(i: int) -> None:
                    t = time.perf_counter()
                    profiler.step(i)
                    callback_s.append(time.perf_counter() - t)
                result = engine.generate(requests, on_step=step)
                t_exit = time.perf_counter()
            export_s = time.perf_counter() - t_exit
            (tmp / f"{arm}.json.gz").unlink(missing_ok=True)
    finally:
        if sampler is not None:
            sampler.stop()
    first, last = window.first, min(window.first + window.active, result.num_steps) - 1
    steps = [e - s for s, e in result.step_spans_s[first:last + 1]]
    return {"arm": arm, "step_ms_mean": 1e3 * statistics.fmean(steps), "step_ms_median": 1e3 * statistics.median(steps),
            "steps": len(steps), "tokens_per_s": result.tokens_per_s, "wall_s": result.wall_s,
            "profiler_step_calls_ms_max": 1e3 * max(callback_s) if callback_s else None,
            "profiler_step_calls_ms_total": 1e3 * sum(callback_s) if callback_s else None,
            "stop_and_export_s": export_s, "nvml_sampler": sampler.sampler if sampler is not None else None}


def run_part(mode: str, cfg: dict, repeats: int) -> dict:
    import torch

    from reference_engine import EngineConfig, LLMEngine, WorkloadConfig, make_workload

    _, ProfileWindow, _, warm_up_profiler = _capture()
    workload = dict(num_requests=cfg["requests"], prompt_len=cfg["prompt"], output_len=cfg["output"], seed=0)
    first, active = _window(cfg, workload)
    window = ProfileWindow(wait=first - WARMUP_STEPS, warmup=WARMUP_STEPS, active=active)
    engine = LLMEngine(EngineConfig(model=cfg["model"], mode=mode, max_seqs=cfg["max_seqs"],
                                    max_batch_tokens=cfg["max_batch_tokens"], seed=0))
    cuda = engine.device.type == "cuda"
    requests = make_workload(WorkloadConfig(**workload), vocab_size=engine.vocab_size)
    engine.warmup()
    engine.generate(requests)  # abprof run's unprofiled warm-up pass
    warm_up_profiler(cuda)
    passes = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            order = ARMS[r % len(ARMS):] + ARMS[:r % len(ARMS)]
            for arm in order:
                passes.append({"repeat": r, **one_pass(engine, requests, arm, window, cuda, Path(tmp))})
                print(json.dumps(passes[-1]), flush=True)
    engine.close()
    arms = {}
    for arm in ARMS[1:]:
        pct = []
        for r in range(repeats):
            off = next(p for p in passes if p["repeat"] == r and p["arm"] == "off")
            on = next(p for p in passes if p["repeat"] == r and p["arm"] == arm)
            pct.append(100 * (on["step_ms_mean"] / off["step_ms_mean"] - 1))
        mean, ci = mean_ci95(pct)
        mine = [p for p in passes if p["arm"] == arm]
        arms[arm] = {"overhead_pct": mean, "ci95": ci, "per_repeat_pct": pct,
                     "stop_and_export_s_median": _median([p["stop_and_export_s"] for p in mine]),
                     "profiler_step_calls_ms_max": _max([p["profiler_step_calls_ms_max"] for p in mine])}
    return {"mode": mode, "window": {"first": window.first, "last": window.first + window.active - 1},
            "engine": engine.describe(), "cuda": cuda, "device_name": torch.cuda.get_device_name(0) if cuda else "cpu",
            "arms": arms, "passes": passes,
            "overhead_pct": arms["default"]["overhead_pct"], "ci95": arms["default"]["ci95"]}


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _max(xs):
    xs = [x for x in xs if x is not None]
    return max(xs) if xs else None


# ---- the driver ---------------------------------------------------------------------------------
def environment(dry: bool) -> dict:
    import platform

    import torch
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "dry_run": dry}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip().split(", ")
        env.update(gpu=out[0], driver=out[1])
    except (OSError, IndexError, subprocess.SubprocessError):
        env.update(gpu="none", driver="-")
    return env


def fmt_ci(ci) -> str:
    return "-" if ci is None else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


def markdown(doc: dict) -> str:
    env = doc["environment"]
    lines = ["# The cost of measuring: profiler and NVML overhead per profiled step", "",
             f"- GPU: {env['gpu']}, driver {env['driver']}, CUDA {env['cuda']}, torch {env['torch']}, "
             f"Python {env['python']}; {env['date_utc']}" + (" — DRY RUN (CPU, tiny preset)" if env["dry_run"] else ""),
             f"- Command: `{doc['command']}`", "", (__doc__ or "").split("Method. ", 1)[1].strip(), "",
             "| loop | arm | overhead per profiled step (mean) | 95% CI | per repeat | stop + export s |",
             "|---|---|---|---|---|---|"]
    for mode in ("sync", "async"):
        part = doc.get(mode)
        if not part or "arms" not in part:
            lines.append(f"| {mode} | - | failed: {part.get('error') if part else 'not run'} | | | |")
            continue
        for arm, a in part["arms"].items():
            reps = ", ".join(f"{x:+.1f}" for x in a["per_repeat_pct"])
            lines.append(f"| {mode} | {arm} | {a['overhead_pct']:+.2f}% | {fmt_ci(a['ci95'])} | {reps} | "
                         f"{'-' if a['stop_and_export_s_median'] is None else format(a['stop_and_export_s_median'], '.2f')} |")
    lines += ["", "Window: steps " + ", ".join(f"{m} {doc[m]['window']['first']}-{doc[m]['window']['last']}"
                                               for m in ("sync", "async") if "window" in doc.get(m, {})), ""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny preset, 2 repeats")
    p.add_argument("--repeats", type=int)
    p.add_argument("--part", choices=["sync", "async"], help=argparse.SUPPRESS)
    p.add_argument("--timeout", type=int, default=280, help="seconds per loop's process")
    args = p.parse_args(argv)
    cfg = PRESETS["dry" if args.dry_run else "full"]
    repeats = args.repeats or cfg["repeats"]
    out = Path(args.out)
    if args.part:
        doc = run_part(args.part, cfg, repeats)
        (out / f".overhead-{args.part}.json").write_text(json.dumps(doc))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    doc = {"command": " ".join(["python3", "benchmarks/overhead.py", *(argv or sys.argv[1:])]),
           "environment": environment(args.dry_run)}
    for mode in ("sync", "async"):
        part_file = out / f".overhead-{mode}.json"
        part_file.unlink(missing_ok=True)
        cmd = [sys.executable, __file__, "--out", str(out), "--part", mode, "--repeats", str(repeats)]
        cmd += ["--dry-run"] if args.dry_run else []
        try:
            proc = subprocess.run(cmd, timeout=args.timeout, capture_output=True, text=True)
            err = None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["exit"])[-1]
        except subprocess.TimeoutExpired:
            err = f"timed out after {args.timeout} s"
        doc[mode] = json.loads(part_file.read_text()) if part_file.exists() and err is None else {"error": err}
        part_file.unlink(missing_ok=True)
        print(f"{mode}: " + (f"{doc[mode]['overhead_pct']:+.2f}% {fmt_ci(doc[mode]['ci95'])}" if err is None else err),
              flush=True)
    doc["summary"] = {m: {"overhead_pct": doc[m].get("overhead_pct"), "ci95": doc[m].get("ci95")} for m in ("sync", "async")}
    (out / "overhead.json").write_text(json.dumps(doc, indent=1))
    (out / "overhead.md").write_text(markdown(doc))
    return 0 if all("arms" in doc[m] for m in ("sync", "async")) else 1


if __name__ == "__main__":
    sys.exit(main())
