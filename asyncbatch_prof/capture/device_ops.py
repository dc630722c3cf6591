"""A CPU run's device work, added to its trace.

On the CPU the reference engine's device side (a forked process, or a worker thread) is not in torch.profiler's
recording, as a GPU's kernels are not CPU ops. The engine reports when each step ran
(``GenerateResult.device_spans_ns``: the host's hand-over and the device work, epoch ns, one clock for both
processes), and abprof run writes them into the trace as the contract defines (docs/metrics.md, "GPU busy and
idle"), so that a CPU run's device has busy, idle and gap classes as a GPU has:

- a ``cpu_device_op`` row per step's device work (name ``abprof.device_step``), on device 0 (pid 0, tid 0);
- a ``cpu_device_launch`` row per hand-over (name ``abprof.device_launch``), on the engine thread, with the same
  ``args.correlation``: the launch that the analysis joins to the op, as a ``cudaGraphLaunch`` to its kernels.

Only the steps handed over during the recorded engine steps (``abprof.step``) are added, as the profiler
records the kernels launched in its window.
"""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter
from pathlib import Path

DEVICE_OP, DEVICE_LAUNCH = "cpu_device_op", "cpu_device_launch"
OP_NAME, LAUNCH_NAME = "abprof.device_step", "abprof.device_launch"
DEVICE_PID = 0
CORRELATION_BASE = 1 << 40  # above any correlation id the profiler hands out


def add_device_ops(trace_path: Path, spans: list[tuple[int, int, int, int]]) -> int:
    """Add the device steps of ``spans`` handed over during the trace's recorded engine steps to the gzipped
    trace at ``trace_path`` (rewritten through a temporary name and a rename); → how many were added."""
    trace_path = Path(trace_path)
    with gzip.open(trace_path, "rt", encoding="utf-8") as f:
        doc = json.load(f)
    events = doc.get("traceEvents", [])
    steps = [e for e in events if e.get("ph") == "X" and e.get("name") == "abprof.step"
             and e.get("cat") == "user_annotation"]
    if not spans or not steps:
        return 0
    (pid, tid), _ = Counter((e["pid"], e["tid"]) for e in steps).most_common(1)[0]
    base = int(doc.get("baseTimeNanoseconds", 0))  # ts are µs after it (0: µs of the epoch)
    lo, hi = min(e["ts"] for e in steps), max(e["ts"] + e["dur"] for e in steps)

    def us(ns: int) -> float:
        return (ns - base) / 1e3

    rows = []
    for i, (handed, handed_end, start, end) in enumerate(spans):
        if not lo <= us(handed) <= hi:
            continue
        corr = CORRELATION_BASE + i
        rows.append({"ph": "X", "cat": DEVICE_LAUNCH, "name": LAUNCH_NAME, "pid": pid, "tid": tid, "ts": us(handed),
                     "dur": max(handed_end - handed, 0) / 1e3, "args": {"correlation": corr}})
        rows.append({"ph": "X", "cat": DEVICE_OP, "name": OP_NAME, "pid": DEVICE_PID, "tid": 0, "ts": us(start),
                     "dur": max(end - start, 0) / 1e3, "args": {"correlation": corr, "device": DEVICE_PID}})
    if not rows:
        return 0
    events += rows + [{"ph": "M", "name": "process_name", "pid": DEVICE_PID,
                       "args": {"name": "CPU device (the reference engine's device steps, added by abprof run)"}}]
    tmp = trace_path.with_name(f".{trace_path.name}.part")
    with gzip.open(tmp, "wt", encoding="utf-8") as f:
        json.dump(doc, f)
    os.replace(tmp, trace_path)
    return len(rows) // 2
