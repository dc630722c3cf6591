"""Host side of a trace: the engine thread, its host work and blocked time, and its CPU phases.

With abprof's annotations the engine thread is the one that ran ``abprof.step``; host work is the
union of its ``abprof.*`` ranges. Without them (other engines) it is the thread that issued the most
GPU launches and its host work is the union of all its recorded CPU rows. Either way the time the
thread spends blocked in synchronizing calls is taken out of host work and reported as sync wait.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from asyncbatch_prof.analysis import intervals
from asyncbatch_prof.analysis.loader import CPU_OP, DRIVER, PYTHON_FUNCTION, RUNTIME, USER_ANNOTATION, TraceEvents

ANNOTATION_PREFIX = "abprof."
STEP = "abprof.step"
SYNC_WAIT = "abprof.sync_wait"
UNANNOTATED = "unannotated host"
SYNC_CALLS = frozenset({
    "cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy", "cudaMemcpy2D",
    "cuStreamSynchronize", "cuCtxSynchronize", "cuEventSynchronize", "cuMemcpyDtoH_v2", "cuMemcpyHtoD_v2",
    "aten::item", "aten::_local_scalar_dense",
})
HOST_CATS = (CPU_OP, USER_ANNOTATION, PYTHON_FUNCTION, RUNTIME, DRIVER)
PHASE_CATS = (CPU_OP, USER_ANNOTATION, PYTHON_FUNCTION)


@dataclass
class EngineThread:
    """The thread whose host work is measured, and what that measurement stands on."""

    pid: int
    tid: int
    source: str  # "annotations" (abprof.step) or "launches" (most GPU launches)
    runtime_only: bool  # only cuda_runtime/cuda_driver rows were recorded for it: host work is a lower bound
    work: tuple[np.ndarray, np.ndarray]  # host work interval set (µs)
    blocked: tuple[np.ndarray, np.ndarray]  # blocked-in-sync interval set (µs)


def names_matching(ev: TraceEvents, predicate) -> np.ndarray:
    """Boolean mask over the name table: which name codes satisfy ``predicate``."""
    return np.fromiter((predicate(n) for n in ev.names), dtype=bool, count=len(ev.names))


def thread_rows(ev: TraceEvents, pid: int, tid: int, cats: tuple[int, ...]) -> np.ndarray:
    """Rows of one thread with a category in ``cats``."""
    return np.flatnonzero((ev.pid == pid) & (ev.tid == tid) & np.isin(ev.cat, cats))


def engine_thread(ev: TraceEvents, launch_pid: np.ndarray, launch_tid: np.ndarray) -> EngineThread | None:
    """Pick the engine thread (annotated, else most launches) and compute its host work and blocked time."""
    is_step = names_matching(ev, lambda n: n == STEP)[ev.name] & (ev.cat == USER_ANNOTATION)
    if is_step.any():
        pid, tid = _most_common(ev.pid[is_step], ev.tid[is_step])
        return _measure(ev, pid, tid, "annotations")
    if launch_pid.size:
        pid, tid = _most_common(launch_pid, launch_tid)
        return _measure(ev, pid, tid, "launches")
    return None


def device_engine_threads(ev: TraceEvents, launch_pid: np.ndarray, launch_tid: np.ndarray,
                          op_launch: dict[int, np.ndarray], default: EngineThread | None) -> dict[int, EngineThread]:
    """The engine thread of each device: the thread that issued the most launches TO THAT DEVICE (a trace
    holding two ranks has two engine threads), or the annotated ``default`` where it launched ops there.

    ``op_launch`` maps a device to the launch index (into launch_pid/launch_tid, −1 when unrecorded) of
    each of its ops. Devices whose ops have no recorded launch get ``default`` (may be absent).
    """
    out: dict[int, EngineThread] = {}
    for dev, launch in op_launch.items():
        launch = np.unique(launch[launch >= 0])
        pid, tid = launch_pid[launch], launch_tid[launch]
        annotated = default is not None and default.source == "annotations"
        launched_here = annotated and ((pid == default.pid) & (tid == default.tid)).any()
        if default is not None and (not launch.size or launched_here):
            out[dev] = default
        elif launch.size:
            best = _most_common(pid, tid)
            out[dev] = default if default is not None and best == (default.pid, default.tid) else \
                _measure(ev, best[0], best[1], "launches to this device")
    return out


def _measure(ev: TraceEvents, pid: int, tid: int, source: str) -> EngineThread:
    """Host work and blocked time of one thread: abprof.* ranges if annotated, else all its host rows."""
    if source == "annotations":
        annotated = names_matching(ev, lambda n: n.startswith(ANNOTATION_PREFIX))
        rows = thread_rows(ev, pid, tid, (USER_ANNOTATION,))
        rows = rows[annotated[ev.name[rows]]]
    else:
        rows = thread_rows(ev, pid, tid, HOST_CATS)
    is_sync = names_matching(ev, lambda n: n in SYNC_CALLS or n == SYNC_WAIT)
    all_rows = thread_rows(ev, pid, tid, HOST_CATS)
    sync_rows = all_rows[is_sync[ev.name[all_rows]]]
    blocked = intervals.union(ev.ts_us[sync_rows], ev.ts_us[sync_rows] + ev.dur_us[sync_rows])
    work = intervals.union(ev.ts_us[rows], ev.ts_us[rows] + ev.dur_us[rows])
    runtime_only = not np.isin(ev.cat[all_rows], PHASE_CATS).any()
    return EngineThread(pid, tid, source, bool(runtime_only), intervals.subtract(work, blocked), blocked)


def _most_common(pid: np.ndarray, tid: np.ndarray) -> tuple[int, int]:
    pairs, counts = np.unique(np.stack([pid, tid], axis=1), axis=0, return_counts=True)
    best = pairs[np.argmax(counts)]  # ties: the smallest (pid, tid), so the choice is stable
    return int(best[0]), int(best[1])


def innermost_segments(starts: np.ndarray, ends: np.ndarray, labels: np.ndarray):
    """Flatten nested ranges of one thread into disjoint segments labelled by the innermost range (µs).

    Returns (segment starts, segment ends, label codes). Ranges that overlap without nesting (seen
    with with_stack) are treated as nested in the child; the parent resumes where the child ends.
    """
    order = np.lexsort((-ends, starts))
    seg_s: list[float] = []
    seg_e: list[float] = []
    seg_l: list[int] = []
    stack: list[tuple[float, int]] = []
    cursor = -np.inf

    def emit(until: float) -> None:
        nonlocal cursor
        if stack and until > cursor:
            seg_s.append(cursor)
            seg_e.append(until)
            seg_l.append(stack[-1][1])
        cursor = max(cursor, until)

    for s, e, lab in zip(starts[order].tolist(), ends[order].tolist(), labels[order].tolist()):
        while stack and stack[-1][0] <= s:
            emit(stack[-1][0])
            stack.pop()
        emit(s)
        stack.append((max(e, s), lab))
    while stack:
        emit(stack[-1][0])
        stack.pop()
    return np.array(seg_s, dtype=np.float64), np.array(seg_e, dtype=np.float64), np.array(seg_l, dtype=np.int64)


def thread_phases(ev: TraceEvents, pid: int, tid: int):
    """Phase segments of one thread: innermost abprof.* annotation if it has any, else innermost CPU row.

    Returns (segment starts, ends, phase names) with times in µs.
    """
    rows = thread_rows(ev, pid, tid, PHASE_CATS)
    annotated = names_matching(ev, lambda n: n.startswith(ANNOTATION_PREFIX))
    ours = rows[annotated[ev.name[rows]] & (ev.cat[rows] == USER_ANNOTATION)]
    if ours.size:
        rows = ours
    s, e, codes = innermost_segments(ev.ts_us[rows], ev.ts_us[rows] + ev.dur_us[rows], ev.name[rows])
    return s, e, np.array([ev.names[c] for c in codes], dtype=object)


def attribute_to_phases(gap_s: np.ndarray, gap_e: np.ndarray, seg_s: np.ndarray, seg_e: np.ndarray,
                        seg_name: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    """Split each gap's time (µs) across the phases it overlaps; uncovered time is 'unannotated host'.

    Returns ({phase: µs}, the phase that covers most of each gap). Segments are disjoint and sorted,
    so the overlapping ones of a gap are found with two binary searches.
    """
    totals: dict[str, float] = {}
    main = np.full(gap_s.size, UNANNOTATED, dtype=object)
    if gap_s.size == 0:
        return totals, main
    lo = np.searchsorted(seg_e, gap_s, side="right")
    hi = np.searchsorted(seg_s, gap_e, side="left")
    count = np.maximum(hi - lo, 0)
    gap_of = np.repeat(np.arange(gap_s.size), count)
    seg = np.repeat(lo, count) + (np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count))
    overlap = np.minimum(seg_e[seg], gap_e[gap_of]) - np.maximum(seg_s[seg], gap_s[gap_of])
    overlap = np.maximum(overlap, 0.0)
    covered = np.bincount(gap_of, weights=overlap, minlength=gap_s.size)
    uncovered = np.maximum((gap_e - gap_s) - covered, 0.0)
    names, code = np.unique(seg_name[seg].astype(str), return_inverse=True) if seg.size else (np.array([]), seg)
    for i, name in enumerate(names):
        totals[str(name)] = float(overlap[code == i].sum())
    if uncovered.sum() > 0:
        totals[UNANNOTATED] = totals.get(UNANNOTATED, 0.0) + float(uncovered.sum())
    # the main phase of a gap: the segment with the largest overlap, unless uncovered time is larger
    if seg.size:
        order = np.lexsort((overlap, gap_of))
        best = np.full(gap_s.size, -1, dtype=np.int64)
        best[gap_of[order]] = seg[order]
        best_overlap = np.zeros(gap_s.size)
        best_overlap[gap_of[order]] = overlap[order]
        use = (best >= 0) & (best_overlap >= uncovered)
        main[use] = seg_name[best[use]]
    return totals, main
