"""Communication on one device: collective kernels, their share of a window, and how much compute hid them.

A collective kernel is a GPU kernel whose name says NCCL/RCCL (``ncclKernel_*``, ``ncclDevKernel_*``)
or a known custom all-reduce (``cross_device_reduce*``, vLLM's). Its collective (AllReduce, AllGather,
SendRecv, ...) is read from the name. Communication time is the union of collective kernels; it is
*overlapped* where a non-collective kernel ran at the same time on another stream of the same device,
*exposed* otherwise. Times are trace µs like the rest of the analysis.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from asyncbatch_prof.analysis import intervals
from asyncbatch_prof.analysis.gpu import DeviceOps, Launches
from asyncbatch_prof.analysis.loader import KERNEL, TraceEvents
from asyncbatch_prof.analysis.table import Table

_COLLECTIVE = re.compile(r"(?i)nccl|rccl|cross_device_reduce")
_KIND = re.compile(r"(?i)(all_?reduce|all_?gather|reduce_?scatter|all_?to_?all|broadcast|sendrecv|send|recv|reduce)")
_CANONICAL = {"allreduce": "AllReduce", "allgather": "AllGather", "reducescatter": "ReduceScatter",
              "alltoall": "AllToAll", "broadcast": "Broadcast", "sendrecv": "SendRecv", "send": "Send",
              "recv": "Recv", "reduce": "Reduce"}


def is_collective_name(name: str) -> bool:
    """Whether a kernel name is a collective (NCCL/RCCL kernel or a custom all-reduce)."""
    return _COLLECTIVE.search(name) is not None


def collective_kind(name: str) -> str:
    """The collective a kernel runs, e.g. 'AllReduce' for ``ncclDevKernel_AllReduce_Sum_bf16_RING_LL``."""
    if "cross_device_reduce" in name:
        return "AllReduce"
    m = _KIND.search(name.split("(")[0])
    return _CANONICAL[m.group(1).lower().replace("_", "")] if m else name.split("(")[0][:80]


@dataclass
class Collectives:
    """The collective kernels of one device, sorted by start (µs; ``launch_us`` NaN where unrecorded)."""

    stream: np.ndarray
    kind: np.ndarray  # object array of collective names
    start_us: np.ndarray
    end_us: np.ndarray
    launch_us: np.ndarray

    def shifted(self, offset_us: float) -> "Collectives":
        """The same collectives with every time moved by ``offset_us`` (e.g. trace µs → epoch µs)."""
        return Collectives(self.stream, self.kind, self.start_us + offset_us, self.end_us + offset_us,
                           self.launch_us + offset_us)


def collective_mask(ev: TraceEvents, ops: DeviceOps) -> np.ndarray:
    """Per op of the device: whether it is a collective kernel."""
    by_name = np.fromiter((is_collective_name(n) for n in ev.names), dtype=bool, count=len(ev.names))
    return by_name[ev.name[ops.row]] & (ev.cat[ops.row] == KERNEL)


def device_collectives(ev: TraceEvents, ops: DeviceOps, launches: Launches) -> Collectives:
    """The collective kernels of one device with the start of their launch call (trace µs)."""
    idx = np.flatnonzero(collective_mask(ev, ops))
    launch = ops.launch[idx]
    launch_us = np.full(idx.size, np.nan)
    launch_us[launch >= 0] = launches.start_us[launch[launch >= 0]]
    kinds = np.array([collective_kind(ev.names[c]) for c in ev.name[ops.row[idx]]], dtype=object)
    return Collectives(ops.stream[idx], kinds, ops.start_us[idx], ops.end_us[idx], launch_us)


def comm_intervals(ev: TraceEvents, ops: DeviceOps, lo: float, hi: float):
    """(communication, overlapped communication) interval sets of one device inside [lo, hi) (µs)."""
    coll = collective_mask(ev, ops)
    compute = ~coll & (ev.cat[ops.row] == KERNEL)
    comm = intervals.clip(intervals.union(ops.start_us[coll], ops.end_us[coll]), lo, hi)
    hidden_s, hidden_e = [], []
    # per stream of collectives: hidden where compute ran on any *other* stream at the same time
    for s in np.unique(ops.stream[coll]):
        on_s = coll & (ops.stream == s)
        mine = intervals.clip(intervals.union(ops.start_us[on_s], ops.end_us[on_s]), lo, hi)
        other = compute & (ops.stream != s)
        busy = intervals.clip(intervals.union(ops.start_us[other], ops.end_us[other]), lo, hi)
        both = intervals.intersect(mine, busy)
        hidden_s.append(both[0])
        hidden_e.append(both[1])
    hidden = intervals.union(np.concatenate(hidden_s), np.concatenate(hidden_e)) if hidden_s else intervals.EMPTY
    return comm, hidden


def add_comm_metrics(res, ev: TraceEvents, ops: DeviceOps) -> None:
    """Add comm_pct / comm_overlap_pct (percent) and their µs to a WindowResult of one device."""
    window = res.hi - res.lo
    if not window > 0:
        empty = f"the {res.name} window is empty"
        res.absent.update(comm_pct=empty, comm_overlap_pct=empty)
        return
    comm, hidden = comm_intervals(ev, ops, res.lo, res.hi)
    comm_us, hidden_us = intervals.length(comm), intervals.length(hidden)
    assert hidden_us <= comm_us * (1 + 1e-9) + 1e-9 and comm_us <= window * (1 + 1e-9), (hidden_us, comm_us, window)
    res.metrics["comm_pct"] = 100.0 * comm_us / window
    res.details.update(comm_us=comm_us, comm_overlapped_us=hidden_us, comm_exposed_us=comm_us - hidden_us)
    if comm_us > 0:
        res.metrics["comm_overlap_pct"] = 100.0 * hidden_us / comm_us
    else:
        res.absent["comm_overlap_pct"] = f"no collective (NCCL) kernel in the {res.name} window"


P2P = ("Send", "Recv", "SendRecv")
MATCH_COLUMNS = ("stream", "collective", "rank", "start_us", "end_us", "launch_us", "seq", "latest_start_us",
                 "wait_us", "transfer_us", "last", "spread_us")


def match_collectives(per_rank: dict[int, Collectives]) -> tuple[Table, dict[str, int]]:
    """Match collective instances across ranks and split each rank's time in them into wait and transfer.

    Instances are matched by order per (stream, collective): the k-th AllReduce on stream 7 of every
    rank is one instance. Times must be on one clock (µs). For rank r: wait = latest start among ranks
    − start on r, transfer = end on r − latest start, both clamped to the kernel's duration so that
    wait + transfer = duration (a clamp means skewed clocks; counted in ``clamped``). ``last`` marks the
    rank that started last (the one the others waited for; the lowest such rank on a tie), ``spread_us``
    the instance's latest − earliest start. Returns (one row per instance and rank, sorted by stream,
    collective, ordinal and rank; counts of matched / unmatched instances). Point-to-point kernels (Send,
    Recv, SendRecv) are left out: their peer is not in the kernel name, so matching them by order would
    pair unrelated transfers.
    """
    parts, p2p = [], 0
    for rank, c in per_rank.items():
        order = np.argsort(c.start_us, kind="stable")
        is_p2p = np.fromiter((k in P2P for k in c.kind[order]), dtype=bool, count=order.size)
        p2p += int(is_p2p.sum())
        keep = order[~is_p2p]
        parts.append(Table({"stream": c.stream[keep], "collective": c.kind[keep], "rank": np.full(keep.size, rank),
                            "start_us": c.start_us[keep], "end_us": c.end_us[keep], "launch_us": c.launch_us[keep]}))
    rows = Table.concat(parts, MATCH_COLUMNS)
    if not len(rows):
        return Table.empty(MATCH_COLUMNS), {"matched": 0, "unmatched": 0, "clamped": 0, "p2p_kernels": p2p}
    # collectives by code in name order (a dict, not np.unique: sorting millions of strings takes seconds)
    code = {name: i for i, name in enumerate(sorted(set(rows["collective"].tolist())))}
    kind = np.fromiter(map(code.__getitem__, rows["collective"]), dtype=np.int64, count=len(rows))
    seq = _ordinal(rows["rank"], rows["stream"], kind)  # rows of a rank are in start order
    order = np.lexsort((rows["rank"], seq, kind, rows["stream"]))
    rows = Table({**rows.columns, "seq": seq}).take(order)
    group = np.cumsum(_new_key(rows["stream"], kind[order], rows["seq"])) - 1
    size = np.bincount(group)
    n = len(per_rank)
    counts = {"matched": int((size == n).sum()), "unmatched": int((size < n).sum()), "p2p_kernels": p2p}
    full = rows.take(size[group] == n)  # each instance: n consecutive rows, one per rank in rank order
    start = full["start_us"].reshape(-1, n)
    latest, earliest = start.max(axis=1, keepdims=True), start.min(axis=1, keepdims=True)
    last = np.zeros(start.shape, dtype=bool)
    last[np.arange(start.shape[0]), (start == latest).argmax(axis=1)] = True
    last &= latest > earliest  # all started together: nobody was waited for
    latest_start = np.broadcast_to(latest, start.shape).ravel()
    dur = full["end_us"] - full["start_us"]
    raw_wait = latest_start - full["start_us"]
    wait = np.minimum(raw_wait, dur)
    counts["clamped"] = int((raw_wait > dur).sum())
    spread = np.broadcast_to(latest - earliest, start.shape).ravel()
    return Table({**full.columns, "latest_start_us": latest_start, "wait_us": wait, "transfer_us": dur - wait,
                  "last": last.ravel(), "spread_us": spread}), counts


def _new_key(*keys: np.ndarray) -> np.ndarray:
    """For rows sorted by ``keys``: whether each row's keys differ from the previous row's."""
    new = np.zeros(keys[0].size, dtype=bool)
    new[:1] = True
    for k in keys:
        new[1:] |= k[1:] != k[:-1]
    return new


def _ordinal(*keys: np.ndarray) -> np.ndarray:
    """Each row's number among the rows with its keys, in row order (0 for the first)."""
    order = np.lexsort(keys[::-1])  # stable: rows with equal keys stay in row order
    new = _new_key(*(k[order] for k in keys))
    position = np.arange(order.size)
    out = np.empty(order.size, dtype=np.int64)
    out[order] = position - np.maximum.accumulate(np.where(new, position, 0))
    return out


def straggler(matched: Table) -> tuple[int | None, dict[int, int]]:
    """The rank that started last most often (ties: the lowest rank), and how often each rank was last
    (most often first; equal counts in the order the ranks were first last)."""
    if not len(matched) or not matched["last"].any():
        return None, {}
    ranks, first, times = np.unique(matched["rank"][matched["last"]], return_index=True, return_counts=True)
    counts = {int(ranks[i]): int(times[i]) for i in np.lexsort((first, -times))}
    best = max(counts.items(), key=lambda kv: (kv[1], -kv[0]))
    return best[0], counts
