"""Engine steps (``abprof.step`` ranges), the step window, per-step statistics and launch delays.

The first profiled step after profiler start-up is excluded (it pays the profiler's start-up costs);
warm-up steps are never recorded. Step k spans from its ``abprof.step`` start to the next step's
start (the last one to the step window's end), so per-step sums add up to the step window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from asyncbatch_prof.analysis import intervals
from asyncbatch_prof.analysis.gpu import DeviceOps, Launches
from asyncbatch_prof.analysis.host import STEP, EngineThread, names_matching
from asyncbatch_prof.analysis.loader import KERNEL, MEMCPY, USER_ANNOTATION, TraceEvents
from asyncbatch_prof.analysis.table import Table


LAUNCH_COLUMNS = ("device", "stream", "correlation", "name", "tid", "start_us", "end_us", "gpu_start_us",
                  "launch_delay_us", "queue_depth", "ops")


@dataclass
class StepRanges:
    """CPU ranges of the profiled abprof.step annotations on the engine thread (µs), first one excluded."""

    index: np.ndarray  # ordinal in the trace (0 = the excluded first step)
    start_us: np.ndarray
    end_us: np.ndarray
    recorded: int


def step_ranges(ev: TraceEvents, engine: EngineThread | None) -> StepRanges | None:
    """The profiled steps, or None when the trace has no abprof.step annotations on the engine thread."""
    if engine is None or engine.source != "annotations":
        return None
    is_step = names_matching(ev, lambda n: n == STEP)[ev.name]
    rows = np.flatnonzero(is_step & (ev.cat == USER_ANNOTATION) & (ev.pid == engine.pid) & (ev.tid == engine.tid))
    rows = rows[np.argsort(ev.ts_us[rows], kind="stable")]
    idx = np.arange(rows.size)
    return StepRanges(idx[1:], ev.ts_us[rows[1:]], ev.ts_us[rows[1:]] + ev.dur_us[rows[1:]], int(rows.size))


def step_window(steps: StepRanges, ops: DeviceOps, launches: Launches) -> tuple[float, float] | str:
    """(start, end) of the step window for one device in µs, or the reason it does not exist."""
    if steps.index.size == 0:
        return (f"only {steps.recorded} abprof.step range(s) recorded and the first profiled step is excluded")
    lo, last_s, last_e = float(steps.start_us[0]), float(steps.start_us[-1]), float(steps.end_us[-1])
    launched = ops.launch >= 0
    at = np.where(launched, launches.start_us[np.maximum(ops.launch, 0)] if launches.start_us.size else 0, np.nan)
    inside = launched & (at >= last_s) & (at <= last_e)
    # with no GPU op launched in the last step, the window ends with that step's CPU range
    hi = float(ops.end_us[inside].max()) if inside.any() else last_e
    return lo, hi


def _issue_time(ops: DeviceOps, launches: Launches) -> np.ndarray:
    """When each op was issued: its launch call's start, or its own start where the launch is unknown (µs)."""
    if launches.start_us.size == 0:
        return ops.start_us.copy()
    return np.where(ops.launch >= 0, launches.start_us[np.maximum(ops.launch, 0)], ops.start_us)


def steps_table(ev: TraceEvents, steps: StepRanges, window: tuple[float, float], ops: DeviceOps,
                launches: Launches, engine: EngineThread) -> Table:
    """One row per profiled step; times in trace µs, bytes in bytes."""
    # steps tile the window: a step that starts after the window's end (malformed trace) gets zero length
    starts = np.minimum(steps.start_us, window[1])
    ends = np.append(starts[1:], window[1])
    edges = np.append(starts, window[1])
    busy = np.diff(intervals.covered_before(ops.busy, edges))
    work = np.diff(intervals.covered_before(engine.work, edges))
    blocked = np.diff(intervals.covered_before(engine.blocked, edges))
    issued = _issue_time(ops, launches)
    step_of = np.searchsorted(starts, issued, side="right") - 1
    valid = (step_of >= 0) & (issued < window[1])
    cat = ev.cat[ops.row]
    n = starts.size

    def per_step(mask: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        sel = valid & mask
        w = None if weights is None else weights[sel]
        return np.bincount(step_of[sel], weights=w, minlength=n)[:n]

    h2d = names_matching(ev, lambda n: "HtoD" in n)[ev.name[ops.row]]
    d2h = names_matching(ev, lambda n: "DtoH" in n)[ev.name[ops.row]]
    nbytes = np.nan_to_num(ev.nbytes[ops.row], nan=0.0)
    memcpy = cat == MEMCPY
    first_of_launch = np.zeros(ops.row.size, dtype=bool)
    if ops.row.size:
        _, first = np.unique(np.where(ops.launch >= 0, ops.launch, -1 - np.arange(ops.row.size)), return_index=True)
        first_of_launch[first] = True
    wall = ends - starts
    return Table({
        "step": steps.index,
        "start_us": starts + ev.origin_us,
        "end_us": ends + ev.origin_us,
        "wall_us": wall,
        "cpu_us": steps.end_us - steps.start_us,
        "gpu_busy_us": busy,
        "idle_us": wall - busy,
        "host_work_us": work,
        "sync_wait_us": blocked,
        "kernels": per_step(cat == KERNEL).astype(np.int64),
        "launches": per_step(first_of_launch & (ops.launch >= 0)).astype(np.int64),
        "h2d_bytes": per_step(memcpy & h2d, nbytes).astype(np.int64),
        "d2h_bytes": per_step(memcpy & d2h, nbytes).astype(np.int64),
    })


def launches_table(ev: TraceEvents, launches: Launches, devices: dict[int, DeviceOps]) -> Table:
    """One row per launch call that issued GPU ops, with launch delay and the stream's queue depth at launch.

    launch_delay_us = first GPU op start − end of the launch call; queue_depth = ops on that stream
    launched earlier and not yet started when this call began (a long delay behind a deep queue is
    queueing, not launch overhead).
    """
    parts = []
    for device, ops in devices.items():
        has = ops.launch >= 0
        if not has.any():
            continue
        launch, start, stream = ops.launch[has], ops.start_us[has], ops.stream[has]
        order = np.lexsort((start, launch))
        launch, start, stream = launch[order], start[order], stream[order]
        first = np.concatenate(([True], launch[1:] != launch[:-1]))
        n_ops = np.diff(np.append(np.flatnonzero(first), launch.size))
        li, gpu_start, st = launch[first], start[first], stream[first]
        issued = launches.start_us[launch]
        depth = np.zeros(li.size, dtype=np.int64)
        for s in np.unique(st):
            on = stream == s
            t_issue, t_start = np.sort(issued[on]), np.sort(start[on])
            here = st == s
            at = launches.start_us[li[here]]
            depth[here] = np.maximum(np.searchsorted(t_issue, at, side="left")
                                     - np.searchsorted(t_start, at, side="right"), 0)
        parts.append(Table({
            "device": np.full(li.size, device), "stream": st, "correlation": launches.correlation[li],
            "name": np.array([ev.names[c] for c in ev.name[launches.row[li]]], dtype=object), "tid": launches.tid[li],
            "start_us": launches.start_us[li] + ev.origin_us, "end_us": launches.end_us[li] + ev.origin_us,
            "gpu_start_us": gpu_start + ev.origin_us, "launch_delay_us": gpu_start - launches.end_us[li],
            "queue_depth": depth, "ops": n_ops,
        }))
    table = Table.concat(parts, LAUNCH_COLUMNS)
    return table.take(np.argsort(table["start_us"], kind="stable"))
