"""A synthetic run folder for report tests and the report benchmark: a torch-format trace with the
engine's annotations, the matching analysis frames, metrics.json, run.json, requests.csv and nvml.csv.

The frames (``synthetic_analysis``) stand in for ``analyze()`` where a test wants known shapes;
the trace is what the real analyzer reads.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

BASE_NS = 1_700_000_000_000_000_000
PHASES = (("schedule", 40.0), ("prepare", 60.0), ("forward", None), ("sample", 15.0), ("sync_wait", 20.0), ("update", 30.0))


def plan(num_steps: int = 12, kernels_per_step: int = 20, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Lay out a synchronous loop: per step, CPU phases, then kernels launched in ``forward`` (µs)."""
    rng = np.random.default_rng(seed)
    ops, launches, phases, steps = [], [], [], []
    t, corr = 1000.0, 1
    for step in range(num_steps):
        step_start, gpu_free = t, t
        for phase, length in PHASES:
            start = t
            if phase == "forward":
                for _ in range(kernels_per_step):
                    launch_end = t + 4.0
                    launches.append((corr, "cudaLaunchKernel", t, launch_end))
                    k_start = max(launch_end + 3.0, gpu_free + float(rng.uniform(0.5, 40.0)))
                    k_end = k_start + float(rng.uniform(5.0, 30.0))
                    ops.append((0, 7, k_start, k_end, f"gemm_kernel_{corr % 5}", "kernel", corr))
                    gpu_free, t, corr = k_end, t + 5.0, corr + 1
                t = max(t, gpu_free) if phase == "sync_wait" else t
            elif phase == "sync_wait":
                t = max(t, gpu_free) + length
            else:
                t += length
            phases.append((1, f"abprof.{phase}", start, t))
        phases.append((1, "abprof.step", step_start, t))
        steps.append((step, step_start, max(t, gpu_free)))
    cols = ["device", "stream", "start_us", "end_us", "name", "cat", "correlation"]
    return {
        "gpu_ops": pd.DataFrame(ops, columns=cols),
        "launches": pd.DataFrame(launches, columns=["correlation", "name", "start_us", "end_us"]),
        "cpu_phases": pd.DataFrame(phases, columns=["tid", "phase", "start_us", "end_us"]),
        "steps": pd.DataFrame(steps, columns=["step", "start_us", "end_us"]),
    }


def trace_doc(frames: dict[str, pd.DataFrame]) -> dict:
    """The frames as a torch.profiler (Kineto) Chrome trace document."""
    events = []
    for r in frames["cpu_phases"].itertuples():
        events.append({"ph": "X", "cat": "user_annotation", "name": r.phase, "pid": 100, "tid": 1,
                       "ts": r.start_us, "dur": r.end_us - r.start_us, "args": {}})
    for r in frames["launches"].itertuples():
        events.append({"ph": "X", "cat": "cuda_runtime", "name": r.name, "pid": 100, "tid": 1, "ts": r.start_us,
                       "dur": r.end_us - r.start_us, "args": {"correlation": int(r.correlation)}})
    for r in frames["gpu_ops"].itertuples():
        events.append({"ph": "X", "cat": r.cat, "name": r.name, "pid": 0, "tid": 7, "ts": r.start_us,
                       "dur": r.end_us - r.start_us,
                       "args": {"device": 0, "stream": 7, "correlation": int(r.correlation)}})
    return {"schemaVersion": 1, "deviceProperties": [{"id": 0, "name": "Synthetic GPU"}],
            "baseTimeNanoseconds": BASE_NS, "traceEvents": events, "displayTimeUnit": "ms"}


def synthetic_analysis(frames: dict[str, pd.DataFrame], doc: dict, threshold_us: float = 30.0) -> SimpleNamespace:
    """Analysis-shaped object (INTERFACES.md §2) from the plan: merged busy, gaps and their classes."""
    ops = frames["gpu_ops"].sort_values("start_us").reset_index(drop=True)
    ops["dur_us"] = ops["end_us"] - ops["start_us"]
    starts, ends = ops["start_us"].to_numpy(), np.maximum.accumulate(ops["end_us"].to_numpy())
    gap_idx = np.nonzero(starts[1:] > ends[:-1])[0]
    launch_start = frames["launches"].set_index("correlation")["start_us"]
    gaps = pd.DataFrame({"device": 0, "start_us": ends[gap_idx], "end_us": starts[gap_idx + 1]})
    gaps["duration_us"] = gaps["end_us"] - gaps["start_us"]
    next_launch = launch_start.loc[ops["correlation"].to_numpy()[gap_idx + 1]].to_numpy()
    gaps["gap_class"] = np.where(next_launch > gaps["start_us"], "host_bound",
                                 np.where(gaps["duration_us"] < threshold_us, "launch_latency", "dependency"))
    steps = frames["steps"].copy()
    steps["wall_us"] = steps["end_us"] - steps["start_us"]
    steps["gpu_busy_us"] = [ops.loc[(ops.start_us >= s) & (ops.end_us <= e), "dur_us"].sum()
                            for s, e in zip(steps.start_us, steps.end_us)]
    steps["host_work_us"] = steps["wall_us"] * 0.8
    steps["idle_us"] = steps["wall_us"] - steps["gpu_busy_us"]
    phases = pd.DataFrame({"phase": ["abprof.schedule", "abprof.prepare", "abprof.update"],
                           "host_bound_pct": [5.0, 8.0, 3.0]})
    phases["host_bound_us"] = phases["host_bound_pct"] * 10
    return SimpleNamespace(doc=doc, device=0, base_time_ns=BASE_NS, gpu_ops=ops, gaps=gaps, steps=steps,
                           phases=phases, cpu_phases=frames["cpu_phases"], launches=frames["launches"], absent={})


METRICS = {
    "gpu_idle_pct": {"step": 24.137, "kernel": 20.41}, "gpu_busy_us": {"step": 9000.5, "kernel": 9000.5},
    "window_us": {"step": 11870.2, "kernel": 11310.0}, "host_bound_pct": {"step": 16.0, "kernel": 13.0},
    "launch_latency_pct": {"step": 3.1, "kernel": 3.1}, "dependency_pct": {"step": 5.037, "kernel": 4.31},
    "overlap_pct": {"step": 1.84}, "sync_wait_pct": {"step": 31.5}, "tokens_per_s": 1234.56,
    "requests_per_s": 7.25, "ttft_ms_p50": 12.345, "ttft_ms_p90": 20.0, "ttft_ms_p99": 31.2,
    "itl_ms_p50": 4.567, "itl_ms_p90": 6.0, "itl_ms_p99": 9.876, "e2e_ms_p50": 80.0, "e2e_ms_p90": 99.0,
    "e2e_ms_p99": 120.5, "preemptions": 0, "nvml_util_pct": 97.3, "clock_throttled": False,
}


def write_run(run_dir: Path, *, num_steps: int = 12, kernels_per_step: int = 20, mode: str = "sync",
              workload: dict | None = None, metrics: dict | None = None, absent: dict | None = None,
              nvml: bool = True, seed: int = 0) -> tuple[Path, SimpleNamespace]:
    """Write a complete run folder; returns it and the analysis-shaped object of its trace."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    frames = plan(num_steps, kernels_per_step, seed)
    with gzip.open(run_dir / "trace.json.gz", "wt", compresslevel=1) as handle:
        json.dump(trace_doc(frames), handle)
    doc = {"schema_version": 1, "tool": {"name": "abprof", "version": "test"},
           "launch_latency_threshold_us": 30.0,
           "metrics": dict(METRICS if metrics is None else metrics),
           "absent": dict({"joules_per_token": "NVML total energy counter not supported on this GPU"}
                          if absent is None else absent)}
    (run_dir / "metrics.json").write_text(json.dumps(doc, indent=2))
    run = {"status": "complete", "mode": mode, "engine": "reference", "command": ["abprof", "run", "--mode", mode],
           "config": {"model": "tiny", "mode": mode, "max_batch_tokens": 2048},
           "workload": workload if workload is not None else {"num_requests": 8, "prompt_len": "uniform:16:64"},
           "seed": 0, "environment": {"gpu": "Synthetic GPU", "torch": "2.13.0", "python": "3.11"},
           "started_at": "2026-11-24T03:00:00Z", "finished_at": "2026-11-24T03:01:00Z",
           "profiled_steps": [1, num_steps], "nvml": {"available": nvml, "reason": None if nvml else "no NVML here"}}
    (run_dir / "run.json").write_text(json.dumps(run, indent=2))
    _write_requests(run_dir / "requests.csv", seed)
    if nvml:
        _write_nvml(run_dir / "nvml.csv", frames)
    return run_dir, synthetic_analysis(frames, doc) if len(frames["gpu_ops"]) else None


def _write_requests(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = []
    for rid in range(16):
        first = float(rng.uniform(0.005, 0.03))
        times = first + np.cumsum(rng.uniform(0.003, 0.01, size=8))
        rows.append({"request_id": rid, "prompt_len": 32, "max_new_tokens": 9, "output_tokens": 9, "arrival_s": 0.0,
                     "scheduled_s": 0.001, "first_token_s": first, "finish_s": float(times[-1]), "ttft_ms": first * 1e3,
                     "e2e_ms": float(times[-1]) * 1e3, "preemptions": 0, "finish_reason": "length", "rejected_reason": "",
                     "token_times_s": " ".join(f"{x:.6f}" for x in np.concatenate([[first], times]))})
    pd.DataFrame(rows).to_csv(path, index=False)


def _write_nvml(path: Path, frames: dict[str, pd.DataFrame]) -> None:
    t0 = BASE_NS / 1e3 + frames["gpu_ops"]["start_us"].min() - 500
    t1 = BASE_NS / 1e3 + frames["gpu_ops"]["end_us"].max() + 500
    samples = np.linspace(t0, t1, 12)
    rows = []
    for i, t in enumerate(samples):
        rows += [(t, "util_pct", 100.0 if 0 < i < 11 else 0.0), (t, "sm_clock_mhz", 1980.0), (t, "power_w", 300.0 + i)]
    pd.DataFrame(rows, columns=["epoch_us", "series", "value"]).to_csv(path, index=False)
