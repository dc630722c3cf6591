"""The merged view of a rank set: idle per rank, communication, wait vs transfer, the straggler.

Per-rank figures come unchanged from each rank's own analysis (analysis/ranks.py); the merge adds
what needs several ranks at once: collective instances matched across ranks on one clock (the
traces' ``baseTimeNanoseconds``, or their absolute epoch timestamps), each rank's time in them split
into waiting for the last rank and transfer, and the rank the others waited for most often, with what
its engine thread was doing while it was late.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asyncbatch_prof.analysis import contract, intervals
from asyncbatch_prof.analysis.comm import MATCH_COLUMNS, match_collectives, straggler
from asyncbatch_prof.analysis.host import attribute_to_phases
from asyncbatch_prof.analysis.loader import load_trace
from asyncbatch_prof.analysis.ranks import (RankPart, RankSetSource, analyze_files, assign_ranks, default_jobs,
                                            find_rank_traces, parts_of)
from asyncbatch_prof.analysis.result import TraceAnalysis
from asyncbatch_prof.analysis.table import Table

SAME_FILE = "one trace file: all devices share its clock"


@dataclass
class RankSet:
    """A merged rank set: the parts by rank, matched collectives (one row per instance and rank, µs on
    the common clock whose 0 is ``clock_ns``), and the merged metrics.json document."""

    source: RankSetSource
    ranks: dict[int, RankPart]
    matched: Table
    shift_us: dict[int, float]  # rank-local trace µs + shift = common-clock µs
    doc: dict[str, Any]


def analyze_rank_set(path: str | Path, threshold_us: float = 30.0, jobs: int | None = None,
                     tool_version: str | None = None) -> RankSet:
    """Analyze a folder of per-rank traces, a run folder or one multi-device trace as a rank set.

    ``jobs`` worker processes analyze the files (default: one per file up to the usable cores);
    ``tool_version`` goes into the merged document's ``tool`` (the caller knows it).
    """
    source = find_rank_traces(path)
    if source.kind in ("file", "run"):
        ev = load_trace(source.files[0])
        ta = TraceAnalysis(source.files[0], ev, threshold_us, tool_version=tool_version)
        return rank_set_of_file(source, ta, ev)
    jobs = default_jobs(len(source.files)) if jobs is None else jobs
    parts = [p for per_file in analyze_files(source.files, threshold_us, jobs) for p in per_file]
    rs = merge(source, parts, by_device=False, jobs=jobs)
    rs.doc["tool"]["version"] = tool_version
    return rs


def rank_set_of_file(source: RankSetSource, ta: TraceAnalysis, ev) -> RankSet:
    """The rank set of one file holding several devices (``source``: that file or its run folder), from its
    analysis and the events it was made of (``abprof analyze`` parses the file once for both)."""
    rs = merge(source, parts_of(ta, ev), by_device=True, jobs=1)
    rs.doc["tool"]["version"] = ta.tool_version
    return rs


def _shifts(ranks: dict[int, RankPart], by_device: bool) -> tuple[dict[int, float] | None, str]:
    """Per-rank shift onto a common clock (µs), or None with the reason clocks cannot be aligned."""
    if by_device:
        return {r: 0.0 for r in ranks}, SAME_FILE
    missing = [r for r, p in ranks.items() if p.clock_ns is None]
    if missing:
        return None, (f"rank {missing[0]}'s trace has relative timestamps and no baseTimeNanoseconds, so the "
                      "ranks' clocks cannot be aligned")
    ref = min(p.clock_ns for p in ranks.values())
    return ({r: (p.clock_ns - ref) / 1000.0 for r, p in ranks.items()},
            "aligned through each trace's baseTimeNanoseconds / absolute epoch timestamps (assumes the hosts' "
            "clocks agree, e.g. NTP/PTP; their skew adds to or hides wait)")


def merge(source: RankSetSource, parts: list[RankPart], by_device: bool, jobs: int) -> RankSet:
    """Assign ranks, match collectives on the common clock and build the merged metrics.json."""
    ranks = assign_ranks(parts, by_device)
    shifts, clock = _shifts(ranks, by_device)
    matched, counts = Table.empty(MATCH_COLUMNS), {"matched": 0, "unmatched": 0, "clamped": 0}
    if shifts is not None and len(ranks) > 1:
        matched, counts = match_collectives({r: p.collectives.shifted(shifts[r]) for r, p in ranks.items()})
    doc = _doc(source, ranks, matched, counts, shifts, clock, jobs)
    return RankSet(source, ranks, matched, shifts or {r: 0.0 for r in ranks}, doc)


def _window_sum(part: RankPart, window: str, key: str) -> float | None:
    per = part.doc.get("devices", {}).get(str(part.device), {}).get(window)
    if not isinstance(per, dict):
        return None
    value = per.get(key, per.get("metrics", {}).get(key))
    return None if value is None else float(value)


def _rank_row(part: RankPart, matched: Table) -> dict[str, Any]:
    row: dict[str, Any] = {"path": part.path, "device": part.device, "distributed_rank": part.distributed_rank,
                           "engine_thread": part.doc["trace"].get("engine_thread"), "window": part.window,
                           "other_devices_in_file": part.other_devices}
    for name in ("gpu_idle_pct", "comm_pct", "comm_overlap_pct"):
        row[name] = contract.lookup(part.doc, f"{name}.{part.window}")[0]
    for key in ("window_us", "comm_us", "comm_overlapped_us", "comm_exposed_us"):
        row[key] = _window_sum(part, part.window, key)
    if len(matched):
        mine = matched.take(matched["rank"] == part.rank)
        row.update(collective_wait_us=float(mine["wait_us"].sum()),
                   collective_transfer_us=float(mine["transfer_us"].sum()), started_last=int(mine["last"].sum()))
    return row


def _doc(source, ranks, matched, counts, shifts, clock, jobs) -> dict[str, Any]:
    rows = {str(r): _rank_row(p, matched) for r, p in ranks.items()}
    metrics: dict[str, Any] = {}
    absent: dict[str, str] = {}
    idle = {r: row["gpu_idle_pct"] for r, row in rows.items() if row["gpu_idle_pct"] is not None}
    worst = max(idle, key=lambda r: (idle[r], -int(r)), default=None)
    if worst is not None:
        metrics["gpu_idle_pct_worst_rank"] = idle[worst]
    else:
        absent["gpu_idle_pct_worst_rank"] = "no rank has a GPU idle share"
    for name, num, den in (("comm_pct", "comm_us", "window_us"), ("comm_overlap_pct", "comm_overlapped_us", "comm_us")):
        values = {}
        for w in contract.WINDOWS:
            pairs = [(_window_sum(p, w, num), _window_sum(p, w, den)) for p in ranks.values()]
            if pairs and all(a is not None and b for a, b in pairs):
                values[w] = 100.0 * sum(a for a, _ in pairs) / sum(b for _, b in pairs)
        if values:
            metrics[name] = values
        else:
            absent[name] = "not computed for every rank (no GPU window, or no collective kernel)"
    straggler_doc = _collective_metrics(ranks, matched, counts, shifts, clock, metrics, absent)
    for name in ("gpu_idle_pct", "host_bound_pct", "overlap_pct"):
        absent[name] = "a rank set: per-rank values are in ranks/rank<N>.metrics.json; see gpu_idle_pct_worst_rank"
    return {
        "schema_version": contract.SCHEMA_VERSION, "tool": {"name": "abprof", "version": None},
        "rank_set": {"source": source.kind, "path": str(source.path), "ranks": len(ranks), "jobs": jobs,
                     "clock": clock, "worst_idle_rank": None if worst is None else int(worst)},
        "ranks": rows, "collectives": counts, "straggler": straggler_doc, "metrics": metrics, "absent": absent,
    }


def _collective_metrics(ranks, matched, counts, shifts, clock, metrics, absent) -> dict[str, Any] | None:
    """collective_wait_pct and the straggler section; reasons in ``absent`` where they cannot be had."""
    if len(ranks) < 2:
        absent["collective_wait_pct"] = "a single rank: nothing to wait for"
        return None
    if shifts is None:
        absent["collective_wait_pct"] = clock
        return None
    if not len(matched):
        absent["collective_wait_pct"] = ("no collective kernel instance found on every rank (point-to-point "
                                         "Send/Recv kernels are not matched)")
        return None
    wait, transfer = float(matched["wait_us"].sum()), float(matched["transfer_us"].sum())
    if wait + transfer > 0:
        metrics["collective_wait_pct"] = 100.0 * wait / (wait + transfer)
    else:
        absent["collective_wait_pct"] = "matched collectives have zero duration"
    counts.update(wait_us=wait, transfer_us=transfer)
    rank, last_counts = straggler(matched)
    if rank is None:
        return {"rank": None, "reason": "every matched collective started at the same time on all ranks"}
    return {"rank": rank, "started_last": {str(r): n for r, n in last_counts.items()}, "instances": counts["matched"],
            **_late_host_phases(ranks[rank], matched, shifts[rank])}


def _late_host_phases(part: RankPart, matched: Table, shift_us: float) -> dict[str, Any]:
    """What the straggler's engine thread ran just before its late collectives: for each instance it
    started last, the ``spread`` µs (latest − earliest start) before its launch call (or kernel start)."""
    late = matched.take((matched["rank"] == part.rank) & matched["last"])
    t = np.where(np.isnan(late["launch_us"]), late["start_us"], late["launch_us"]) - shift_us  # back to rank-local µs
    late_s, late_e = intervals.union(t - late["spread_us"], t)
    seg_s, seg_e, names = part.phases
    totals, _ = attribute_to_phases(late_s, late_e, seg_s, seg_e, names)
    total = intervals.length((late_s, late_e))
    top = sorted(totals.items(), key=lambda kv: -kv[1])[:5]
    return {"late_host_us": total, "host_phases_us": dict(top),
            "top_phase": top[0][0] if top else None,
            "top_phase_pct": 100.0 * top[0][1] / total if top and total > 0 else None}
