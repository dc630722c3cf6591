"""Metrics of one device over one window: busy, idle, gap classes, host overlap, sync wait, stream concurrency.

All times are trace-relative µs; shares are percent of the window. The invariants of the metric
contract are asserted here: busy ≤ window, and host_bound + launch_latency + dependency = idle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from asyncbatch_prof.analysis import intervals
from asyncbatch_prof.analysis.contract import TRACE_METRICS
from asyncbatch_prof.analysis.gpu import GAP_CLASSES, HOST_BOUND, DeviceOps, Gaps, Launches, idle_gaps
from asyncbatch_prof.analysis.host import EngineThread, attribute_to_phases, thread_phases
from asyncbatch_prof.analysis.loader import TraceEvents

_TOLERANCE = 1e-6  # µs of float slack per µs of window when checking sums


@dataclass
class WindowResult:
    """One device × one window: contract metrics, reasons for absent ones, gaps and host-bound phases."""

    name: str
    lo: float
    hi: float
    metrics: dict[str, float] = field(default_factory=dict)
    absent: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    gaps: Gaps | None = None
    gap_phase: np.ndarray | None = None
    phases: dict[str, float] = field(default_factory=dict)


class PhaseCache:
    """Phase segments per (pid, tid), computed once per thread that launched a host-bound op.

    ``engine_phases(pid, tid)`` may return an engine's own phase segments (step_sources.phase_segments);
    where it returns None the thread's innermost CPU rows are the phases."""

    def __init__(self, ev: TraceEvents, engine_phases=None):
        self._ev = ev
        self._engine_phases = engine_phases
        self._cache: dict[tuple[int, int], tuple] = {}

    def get(self, pid: int, tid: int) -> tuple:
        """(segment starts, ends, names) of the thread, µs."""
        key = (pid, tid)
        if key not in self._cache:
            named = self._engine_phases(pid, tid) if self._engine_phases is not None else None
            self._cache[key] = named if named is not None else thread_phases(self._ev, pid, tid)
        return self._cache[key]


def window_metrics(name: str, lo: float, hi: float, ops: DeviceOps, launches: Launches,
                   engine: EngineThread | None, phases: PhaseCache, threshold_us: float) -> WindowResult:
    """Compute the windowed contract metrics of one device over [lo, hi) (µs)."""
    res = WindowResult(name, lo, hi)
    window = hi - lo
    if not window > 0:
        res.absent.update({m: f"the {name} window is empty" for m in _ALL})
        return res
    busy = intervals.length(intervals.clip(ops.busy, lo, hi))
    assert -_TOLERANCE * window <= busy <= window * (1 + _TOLERANCE), (busy, window)
    idle = window - busy
    m = res.metrics
    m["window_us"] = window
    m["gpu_busy_us"] = busy
    m["gpu_idle_pct"] = 100.0 * idle / window
    _gap_classes(res, ops, launches, phases, threshold_us, idle)
    if not (ops.launch >= 0).any():
        _no_launch_records(res)
    _host_metrics(res, ops, engine)
    _stream_metrics(res, ops)
    return res


_ALL = TRACE_METRICS


def _gap_classes(res: WindowResult, ops: DeviceOps, launches: Launches, phases: PhaseCache, threshold_us: float,
                 idle: float) -> None:
    window = res.hi - res.lo
    gaps = idle_gaps(ops, launches, res.lo, res.hi, threshold_us)
    dur = gaps.duration_us
    sums = {c: float(dur[gaps.gap_class == c].sum()) for c in GAP_CLASSES}
    total = sum(sums.values())
    assert abs(total - idle) <= _TOLERANCE * window + 1e-9, (total, idle)
    for c in GAP_CLASSES:
        res.metrics[f"{c}_pct"] = 100.0 * sums[c] / window
    res.gaps = gaps
    res.details.update(gaps=int(dur.size), gaps_without_launch=int((~gaps.launch_found & (gaps.next_op >= 0)).sum()),
                       gap_us={c: sums[c] for c in GAP_CLASSES})
    res.gap_phase = np.full(dur.size, None, dtype=object)
    host = np.flatnonzero((gaps.gap_class == HOST_BOUND) & (gaps.next_op >= 0))
    launch = ops.launch[gaps.next_op[host]]
    with_launch = host[launch >= 0]
    launch = launch[launch >= 0]
    for pid, tid in set(zip(launches.pid[launch].tolist(), launches.tid[launch].tolist())):
        sel = with_launch[(launches.pid[launch] == pid) & (launches.tid[launch] == tid)]
        seg_s, seg_e, seg_name = phases.get(pid, tid)
        totals, main = attribute_to_phases(gaps.start_us[sel], gaps.end_us[sel], seg_s, seg_e, seg_name)
        res.gap_phase[sel] = main
        for k, v in totals.items():
            res.phases[k] = res.phases.get(k, 0.0) + v
    # host-bound gaps with no op after them (the window ended idle) or no recorded launch: no thread to ask
    rest = np.setdiff1d(np.flatnonzero(gaps.gap_class == HOST_BOUND), with_launch)
    if rest.size:
        res.phases["no launch recorded"] = float(dur[rest].sum())
        res.gap_phase[rest] = "no launch recorded"
    assert abs(sum(res.phases.values()) - sums[HOST_BOUND]) <= _TOLERANCE * window + 1e-9


def _no_launch_records(res: WindowResult) -> None:
    """Without one launch record the gap classes are guesses (every op "already launched"): absent, not 0."""
    reason = ("no launch records (cudaLaunchKernel, cuLaunchKernel, graph launches) for this device's ops: "
              "host-bound idle cannot be told from launch latency and dependency")
    for name in ("host_bound_pct", "launch_latency_pct", "dependency_pct"):
        res.metrics.pop(name, None)
        res.absent[name] = reason


def _host_metrics(res: WindowResult, ops: DeviceOps, engine: EngineThread | None) -> None:
    window = res.hi - res.lo
    if engine is None:
        reason = "no engine thread: no abprof.step annotations and no recorded launch calls"
        res.absent.update(overlap_pct=reason, sync_wait_pct=reason)
        return
    work = intervals.clip(engine.work, res.lo, res.hi)
    work_us = intervals.length(work)
    blocked_us = intervals.length(intervals.clip(engine.blocked, res.lo, res.hi))
    res.metrics["sync_wait_pct"] = 100.0 * blocked_us / window
    res.details.update(host_work_us=work_us, sync_wait_us=blocked_us)
    if work_us > 0:
        both = intervals.intersection_length(work, intervals.clip(ops.busy, res.lo, res.hi))
        res.metrics["overlap_pct"] = 100.0 * both / work_us
        res.details["host_work_while_gpu_busy_us"] = both
    else:
        res.absent["overlap_pct"] = f"no host work recorded for the engine thread in the {res.name} window"


def _stream_metrics(res: WindowResult, ops: DeviceOps) -> None:
    window = res.hi - res.lo
    per_stream = {s: intervals.clip(iset, res.lo, res.hi) for s, iset in ops.stream_busy().items()}
    busy = {s: intervals.length(iset) for s, iset in per_stream.items()}
    res.details["stream_busy_us"] = {str(s): v for s, v in sorted(busy.items())}
    together = intervals.length(intervals.coverage_at_least(list(per_stream.values()), 2))
    res.metrics["stream_concurrency_pct"] = 100.0 * together / window
    ranked = sorted(busy, key=lambda s: (-busy[s], s))
    if len(ranked) >= 2:
        a, b = ranked[0], ranked[1]
        pair = intervals.intersection_length(per_stream[a], per_stream[b])
        res.details["busiest_stream_pair"] = {"streams": [a, b], "concurrency_pct": 100.0 * pair / window}
