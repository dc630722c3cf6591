"""Trace integrity: does the trace hold the GPU side of every launch, and a launch for every GPU record?

A Kineto trace records the host's launch calls and CUPTI's GPU records separately; they meet through
``args.correlation``. When CUPTI drops records (a full activity buffer, graph replays recorded without
their kernels) or the window covers stream capture (launches that are recorded into a graph and never
run), the GPU looks idle while it was not, and every idle-derived metric is wrong with no sign of it.
This module accounts, per device, for every launch call (kernel launches of the CUDA/HIP runtime and
driver, graph launches, memcpy, memset) and every GPU record, and says whether the trace is complete.

Edge effects of an intact trace are not faults: launches still in flight when the profiler stopped
(the unmatched launches after the last launch that has GPU records) and GPU records at the window's
start whose launch came before host recording began. All times are trace-relative µs.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from asyncbatch_prof.analysis.gpu import DeviceOps, Launches
from asyncbatch_prof.analysis.host import names_matching
from asyncbatch_prof.analysis.loader import DRIVER, RUNTIME, TraceEvents

KERNEL_LAUNCH, GRAPH_LAUNCH, MEMCPY_CALL, MEMSET_CALL = range(4)
_CALL_KINDS = (
    (KERNEL_LAUNCH, re.compile(r"^(cuda|cu|hip)(Ext)?(Module)?Launch(Cooperative)?Kernel")),
    (GRAPH_LAUNCH, re.compile(r"^(cuda|cu|hip)GraphLaunch")),
    (MEMCPY_CALL, re.compile(r"^(cuda|cu|hip)Memcpy")),
    (MEMSET_CALL, re.compile(r"^(cuda|cu|hip)Memset")),
)
_BEGIN_CAPTURE = re.compile(r"^(cuda|cu|hip)StreamBeginCapture")
_END_CAPTURE = re.compile(r"^(cuda|cu|hip)StreamEndCapture")

# Thresholds of the verdict; docs/metrics.md ("Trace integrity") says why each has its value.
MISSING_PCT_MAX = 1.0  # % of expected launches without GPU records (or with a short graph replay)
GRAPH_SHORT_PCT_MAX = 1.0  # % of graph replays recorded with no kernels or fewer than another replay
CAPTURED_PCT_MAX = 50.0  # % of captured launches among captured launches + GPU records
TAIL_MIN_US = 1000.0  # host launching with no GPU record after the last one, µs ...
TAIL_MIN_PCT = 2.0  # ... and % of the device's launch span
ORPHAN_PCT_MAX = 1.0  # % of GPU records with no launch, other than at the window's start
THRESHOLDS = {"missing_gpu_records_pct": MISSING_PCT_MAX, "graph_replays_short_pct": GRAPH_SHORT_PCT_MAX,
              "captured_work_pct": CAPTURED_PCT_MAX, "gpu_tail_cut_us": TAIL_MIN_US,
              "gpu_tail_cut_pct_of_launch_span": TAIL_MIN_PCT, "records_without_launch_pct": ORPHAN_PCT_MAX,
              "steps_without_gpu": 0}


@dataclass
class LaunchCalls:
    """Every launch call of the trace (matched to GPU records or not), sorted by start (µs)."""

    row: np.ndarray
    kind: np.ndarray  # KERNEL_LAUNCH, GRAPH_LAUNCH, MEMCPY_CALL or MEMSET_CALL
    start_us: np.ndarray
    pid: np.ndarray
    tid: np.ndarray
    launch: np.ndarray  # index into Launches, −1 where no GPU record carries the call's correlation
    device: np.ndarray  # device of its GPU records; unmatched: its thread's neighbouring launches' (−1: unknown)
    captured: np.ndarray  # made during stream capture on its thread


def launch_calls(ev: TraceEvents, launches: Launches, devices: dict[int, DeviceOps]) -> LaunchCalls:
    """Classify the runtime/driver rows that should produce GPU records and join them to their device."""
    kind_of_name = np.full(len(ev.names), -1, dtype=np.int8)
    for kind, pattern in _CALL_KINDS:
        hit = names_matching(ev, lambda n, p=pattern: p.match(n) is not None) & (kind_of_name < 0)
        kind_of_name[hit] = kind
    host = (ev.cat == RUNTIME) | (ev.cat == DRIVER)
    rows = np.flatnonzero(host & (kind_of_name[ev.name] >= 0))
    rows = rows[np.argsort(ev.ts_us[rows], kind="stable")]
    launch = launches.find(ev.correlation[rows])
    device_of_launch = np.full(launches.correlation.size, -1, dtype=np.int64)
    for dev, ops in devices.items():
        device_of_launch[ops.launch[ops.launch >= 0]] = dev
    device = np.where(launch >= 0, device_of_launch[np.maximum(launch, 0)] if launch.size and
                      device_of_launch.size else -1, -1)
    calls = LaunchCalls(rows, kind_of_name[ev.name[rows]].astype(np.int8), ev.ts_us[rows], ev.pid[rows],
                        ev.tid[rows], launch, device, np.zeros(rows.size, dtype=bool))
    _fill_devices(calls, sorted(devices))
    calls.captured = _in_capture(ev, calls, host)
    return calls


def _fill_devices(calls: LaunchCalls, devices: list[int]) -> None:
    """Give an unmatched launch its thread's device: the last matched launch before it, else the next one."""
    for pid, tid in set(zip(calls.pid.tolist(), calls.tid.tolist())):
        idx = np.flatnonzero((calls.pid == pid) & (calls.tid == tid))
        dev = calls.device[idx]
        known = np.flatnonzero(dev >= 0)
        if known.size == 0:
            calls.device[idx] = devices[0] if len(devices) == 1 else -1
            continue
        before = np.searchsorted(known, np.arange(idx.size), side="right") - 1
        pick = np.where(before >= 0, known[np.maximum(before, 0)], known[0])
        calls.device[idx] = dev[pick]


def _in_capture(ev: TraceEvents, calls: LaunchCalls, host: np.ndarray) -> np.ndarray:
    """Launch calls made between a stream-capture begin and its end on the same thread.

    An end with no begin before it (the window opened inside a capture) captures from the trace's start;
    a begin with no end captures to the trace's end.
    """
    begin = names_matching(ev, lambda n: _BEGIN_CAPTURE.match(n) is not None)[ev.name] & host
    end = names_matching(ev, lambda n: _END_CAPTURE.match(n) is not None)[ev.name] & host
    captured = np.zeros(calls.row.size, dtype=bool)
    for pid, tid in set(zip(ev.pid[begin | end].tolist(), ev.tid[begin | end].tolist())):
        marks = np.flatnonzero((begin | end) & (ev.pid == pid) & (ev.tid == tid))
        marks = marks[np.argsort(ev.ts_us[marks], kind="stable")]
        mine = np.flatnonzero((calls.pid == pid) & (calls.tid == tid))
        t = calls.start_us[mine]  # sorted, as calls are
        spans = []
        open_at: float | None = -np.inf if end[marks[0]] else None
        for m in marks.tolist():
            if begin[m]:
                open_at = float(ev.ts_us[m]) if open_at is None else open_at
            else:
                if open_at is not None:
                    spans.append((open_at, float(ev.ts_us[m] + ev.dur_us[m])))
                open_at = None
        if open_at is not None:
            spans.append((open_at, np.inf))
        for lo, hi in spans:
            captured[mine[np.searchsorted(t, lo, side="left"):np.searchsorted(t, hi, side="right")]] = True
    return captured


def graph_positions(calls: LaunchCalls, idx: np.ndarray, step_starts: np.ndarray | None) -> np.ndarray:
    """For the graph launch calls ``idx`` (sorted by start): each one's rank among the graph launches of its
    thread in its profiled step (0, 1, 2 ...); all 0 without steps."""
    pos = np.zeros(idx.size, dtype=np.int64)
    if step_starts is None or step_starts.size == 0 or idx.size == 0:
        return pos
    step = np.searchsorted(step_starts, calls.start_us[idx], side="right") - 1
    last: dict[tuple, int] = {}
    for i, key in enumerate(zip(calls.pid[idx].tolist(), calls.tid[idx].tolist(), step.tolist())):
        pos[i] = last[key] = last.get(key, -1) + 1
    return pos


def _graph_replays_short(ev: TraceEvents, ops: DeviceOps, graph_launches: np.ndarray,
                         positions: np.ndarray | None = None) -> int:
    """Graph replays whose kernels are a strict sub-multiset of another replay's (records lost in the replay).

    Kineto's records carry no graph id, so a graph is known by its kernels: a replay that recorded every
    kernel of another replay and fewer of them is the same graph with records lost. Two different
    graphs rarely nest (each has kernels the other lacks), so they are not compared with each other. Those
    that do nest are pieces of one forward replayed in turn (the reference engine's decode graphs over
    layers 1-3 and 4-15: the same kernels, fewer of them): ``positions`` (``graph_positions``) keeps them
    apart, only replays at the same place in their steps being compared.
    """
    levels = np.unique(positions) if positions is not None else ()
    if len(levels) > 1:
        return sum(_graph_replays_short(ev, ops, graph_launches[positions == p]) for p in levels)
    if graph_launches.size < 2:
        return 0
    sel = np.isin(ops.launch, graph_launches)
    pairs, counts = np.unique(np.stack([ops.launch[sel], ev.name[ops.row[sel]]], axis=1), axis=0, return_counts=True)
    per_launch: dict[int, dict[int, int]] = {}
    for (g, n), c in zip(pairs.tolist(), counts.tolist()):
        per_launch.setdefault(g, {})[n] = c
    shapes = Counter(frozenset(c.items()) for c in per_launch.values())
    # largest first: a replay is short iff it nests in a maximal shape, and those come before it
    maximal: list[Counter] = []
    short = 0
    for shape, n in sorted(shapes.items(), key=lambda kv: -sum(c for _, c in kv[0])):
        counts_of = Counter(dict(shape))
        total = sum(counts_of.values())
        if any(sum(m.values()) > total and not (counts_of - m) for m in maximal):
            short += n
        else:
            maximal.append(counts_of)
    return short


def _orphans(ops: DeviceOps) -> tuple[int, int]:
    """GPU records with no launch: (all, those after the start edge).

    A record is at the start edge when it started before the first record with a launch on its stream
    (or on the device, for a stream with none): launched before host recording began.
    """
    orphan = ops.launch < 0
    if not orphan.any():
        return 0, 0
    matched = ~orphan
    device_first = float(ops.start_us[matched].min()) if matched.any() else np.inf
    later = 0
    for s in np.unique(ops.stream[orphan]).tolist():
        on = ops.stream == s
        first = ops.start_us[on & matched]
        edge = float(first.min()) if first.size else device_first
        later += int((orphan & on & (ops.start_us > edge)).sum())
    return int(orphan.sum()), later


def _pct(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else 0.0


def device_integrity(ev: TraceEvents, dev: int, ops: DeviceOps, calls: LaunchCalls,
                     step_starts: np.ndarray | None, windows: dict[str, tuple[float, float]]) -> dict[str, Any]:
    """Counts of one device (launches, GPU records, graph replays, steps) and the reasons it is incomplete."""
    mine = np.flatnonzero(calls.device == dev)
    matched = calls.launch[mine] >= 0
    captured = calls.captured[mine]
    last = np.flatnonzero(matched)
    # unmatched launches after the last one with GPU records: in flight when the profiler stopped, or cut
    in_flight = np.zeros(mine.size, dtype=bool)
    in_flight[(last[-1] + 1) if last.size else 0:] = True
    in_flight &= ~matched & ~captured
    # CUDA enqueues nothing for a zero-byte copy or set, so only kernel and graph launches must have records
    runs_kernels = calls.kind[mine] <= GRAPH_LAUNCH
    missing = ~matched & ~captured & ~in_flight & runs_kernels
    copies_missing = ~matched & ~captured & ~in_flight & ~runs_kernels
    graph = calls.kind[mine] == GRAPH_LAUNCH
    replays = mine[graph & matched]
    short = _graph_replays_short(ev, ops, calls.launch[replays], graph_positions(calls, replays, step_starts))
    graph_lost = int((graph & missing).sum()) + short
    expected = int((~captured & ~in_flight & runs_kernels).sum())
    gpu_end = float(ops.end_us.max())
    tail_us = max(0.0, float(calls.start_us[mine][in_flight].max()) - gpu_end) if in_flight.any() else 0.0
    span = float(np.ptp(calls.start_us[mine])) if mine.size else 0.0
    orphans, orphans_later = _orphans(ops)
    out: dict[str, Any] = {
        "launches": int(mine.size), "launches_with_gpu": int(matched.sum()),
        "launches_captured": int(captured.sum()), "launches_in_flight_at_end": int(in_flight.sum()),
        "launches_expected_to_run": expected,
        "launches_without_gpu": int(missing.sum()), "copies_without_gpu": int(copies_missing.sum()),
        "graph_launches": int(graph.sum()),
        "graph_replays_without_kernels": int((graph & missing).sum()), "graph_replays_short": short,
        "gpu_records": int(ops.row.size), "gpu_records_without_launch": orphans,
        "gpu_records_without_launch_after_start": orphans_later,
        "host_launching_after_last_gpu_record_us": tail_us, "launch_span_us": span,
        "missing_gpu_records_pct": _pct(int(missing.sum()) + short, expected),
        "captured_work_pct": _pct(int(captured.sum()), int(captured.sum()) + int(ops.row.size)),
    }
    out["steps_without_gpu"] = _steps_without_gpu(calls, mine[runs_kernels], matched[runs_kernels],
                                                  captured[runs_kernels], step_starts)
    out["windows"] = {name: _window_counts(calls, mine, matched, captured, ops, lo, hi)
                      for name, (lo, hi) in windows.items()}
    out["reasons"] = _reasons(out, graph_lost, expected, int((graph & ~captured & ~in_flight).sum()))
    return out


def _steps_without_gpu(calls: LaunchCalls, mine: np.ndarray, matched: np.ndarray, captured: np.ndarray,
                       step_starts: np.ndarray | None) -> int | None:
    """Profiled steps (the last one excepted: it may be in flight) that launched work and have no GPU record."""
    if step_starts is None or step_starts.size < 2:
        return None
    live = ~captured
    step_of = np.searchsorted(step_starts, calls.start_us[mine][live], side="right") - 1
    inner = (step_of >= 0) & (step_of < step_starts.size - 1)
    n = step_starts.size - 1
    issued = np.bincount(step_of[inner], minlength=n)[:n]
    with_gpu = np.bincount(step_of[inner], weights=matched[live][inner].astype(float), minlength=n)[:n]
    return int(((issued > 0) & (with_gpu == 0)).sum())


def _window_counts(calls: LaunchCalls, mine: np.ndarray, matched: np.ndarray, captured: np.ndarray,
                   ops: DeviceOps, lo: float, hi: float) -> dict[str, int]:
    """Launches issued and GPU records started inside [lo, hi) (µs), with the unmatched ones of each."""
    t = calls.start_us[mine]
    inside = (t >= lo) & (t < hi)
    rec = (ops.start_us >= lo) & (ops.start_us < hi)
    return {"launches": int(inside.sum()), "launches_with_gpu": int((inside & matched).sum()),
            "launches_captured": int((inside & captured).sum()), "gpu_records": int(rec.sum()),
            "gpu_records_without_launch": int((rec & (ops.launch < 0)).sum())}


def _reasons(d: dict[str, Any], graph_lost: int, expected: int, graphs: int) -> list[str]:
    """One line per failed check, each ending with its code in parentheses."""
    out = []
    if d["captured_work_pct"] > CAPTURED_PCT_MAX:
        out.append(f"{d['launches_captured']} launches were made during stream capture and never ran, against "
                   f"{d['gpu_records']} GPU records: the window is graph capture, not execution (capture)")
    if d["missing_gpu_records_pct"] > MISSING_PCT_MAX:
        out.append(f"{d['missing_gpu_records_pct']:.1f}% of {expected} launches have no GPU records or a short graph "
                   "replay (launches_without_gpu)")
    if graph_lost and _pct(graph_lost, graphs) > GRAPH_SHORT_PCT_MAX:
        out.append(f"{graph_lost} of {graphs} graph replays recorded no kernels or fewer than another replay of "
                   "the same graph (graph_replays_short)")
    tail, span = d["host_launching_after_last_gpu_record_us"], d["launch_span_us"]
    if tail > TAIL_MIN_US and _pct(tail, span) > TAIL_MIN_PCT if span else tail > TAIL_MIN_US:
        out.append(f"the GPU records stop {tail / 1e3:.1f} ms before the host's last launch "
                   f"({d['launches_in_flight_at_end']} launches after them have none) (gpu_tail_cut)")
    if _pct(d["gpu_records_without_launch_after_start"], d["gpu_records"]) > ORPHAN_PCT_MAX:
        out.append(f"{d['gpu_records_without_launch_after_start']} of {d['gpu_records']} GPU records after the "
                   "window's start have no launch call (records_without_launch)")
    if d["steps_without_gpu"]:
        out.append(f"{d['steps_without_gpu']} profiled steps launched work and have no GPU record (steps_without_gpu)")
    return out


def trace_integrity(ev: TraceEvents, launches: Launches, devices: dict[int, DeviceOps],
                    step_starts: np.ndarray | None,
                    windows: dict[int, dict[str, tuple[float, float]]]) -> dict[str, Any]:
    """The ``trace_integrity`` section of metrics.json: verdict, reasons, thresholds and counts per device.

    ``step_starts`` are the profiled steps' CPU starts (µs) or None without abprof.step; ``windows`` maps
    each device to its windows' (start, end) in µs. Verdict ``ok`` or ``incomplete``.
    """
    calls = launch_calls(ev, launches, devices)
    per_device = {dev: device_integrity(ev, dev, ops, calls, step_starts, windows.get(dev, {}))
                  for dev, ops in devices.items()}
    reasons = [f"device {dev}: {r}" for dev, d in per_device.items() for r in d["reasons"]]
    unknown = calls.device < 0
    if unknown.any() and not devices:
        reasons.append(f"{int(unknown.sum())} launches and no GPU record at all (launches_without_gpu)")
    expected = sum(d["launches_expected_to_run"] for d in per_device.values())
    lost = sum(d["launches_without_gpu"] + d["graph_replays_short"] for d in per_device.values())
    return {
        "verdict": "incomplete" if reasons else "ok",
        "reasons": reasons,
        "codes": sorted({r.rsplit("(", 1)[-1].rstrip(")") for r in reasons}),
        "missing_gpu_records_pct": _pct(lost, expected) if expected else None,
        "launches_without_device": int(unknown.sum()),
        "thresholds": THRESHOLDS,
        "devices": {str(dev): d for dev, d in per_device.items()},
    }
