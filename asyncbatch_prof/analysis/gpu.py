"""GPU side of a trace: ops per device joined to their launch calls, busy union, idle gaps and their classes.

GPU ops are kernel, gpu_memcpy and gpu_memset rows (pid = device, tid = stream); not
gpu_user_annotation and not cuda_sync. Launch calls are the cuda_runtime / cuda_driver rows whose
``args.correlation`` matches a GPU op, whatever their name (cudaLaunchKernel, cudaLaunchKernelExC,
cuLaunchKernel(Ex), cudaGraphLaunch, cudaMemcpyAsync, cudaMemsetAsync, ...): many kernels of one
CUDA graph share the correlation of its single cudaGraphLaunch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from asyncbatch_prof.analysis import intervals
from asyncbatch_prof.analysis.loader import DRIVER, GPU_CATS, RUNTIME, TraceEvents

HOST_BOUND, LAUNCH_LATENCY, DEPENDENCY = "host_bound", "launch_latency", "dependency"
GAP_CLASSES = (HOST_BOUND, LAUNCH_LATENCY, DEPENDENCY)


@dataclass
class Launches:
    """Launch calls that issued at least one GPU op, sorted by correlation (times in µs, trace-relative)."""

    correlation: np.ndarray
    row: np.ndarray  # row in TraceEvents
    start_us: np.ndarray
    end_us: np.ndarray
    pid: np.ndarray
    tid: np.ndarray

    def find(self, correlation: np.ndarray) -> np.ndarray:
        """Index of the launch of each correlation id, −1 where there is none (orphan GPU op)."""
        if self.correlation.size == 0:
            return np.full(correlation.size, -1, dtype=np.int64)
        idx = np.searchsorted(self.correlation, correlation)
        idx = np.minimum(idx, self.correlation.size - 1)
        found = (self.correlation[idx] == correlation) & (correlation >= 0)
        return np.where(found, idx, -1)


def join_launches(ev: TraceEvents) -> Launches:
    """The runtime/driver calls whose correlation id appears on a GPU op (one row per correlation)."""
    gpu_corr = np.unique(ev.correlation[np.isin(ev.cat, GPU_CATS) & (ev.correlation >= 0)])
    rows = np.flatnonzero(((ev.cat == RUNTIME) | (ev.cat == DRIVER)) & np.isin(ev.correlation, gpu_corr))
    corr = ev.correlation[rows]
    order = np.lexsort((ev.ts_us[rows], corr))
    rows, corr = rows[order], corr[order]
    first = np.concatenate(([True], corr[1:] != corr[:-1])) if corr.size else np.zeros(0, dtype=bool)
    rows = rows[first]
    return Launches(correlation=ev.correlation[rows], row=rows, start_us=ev.ts_us[rows],
                    end_us=ev.ts_us[rows] + ev.dur_us[rows], pid=ev.pid[rows], tid=ev.tid[rows])


@dataclass
class DeviceOps:
    """The GPU ops of one device sorted by start, with their busy union (µs, trace-relative)."""

    device: int
    row: np.ndarray
    start_us: np.ndarray
    end_us: np.ndarray
    stream: np.ndarray
    launch: np.ndarray  # index into Launches, −1 if the launch was not recorded
    busy_start_us: np.ndarray
    busy_end_us: np.ndarray
    group_first: np.ndarray  # per busy interval: the op that starts it
    group_ender: np.ndarray  # per busy interval: the op that ends it

    @property
    def busy(self) -> tuple[np.ndarray, np.ndarray]:
        """The busy union as an interval set."""
        return self.busy_start_us, self.busy_end_us

    def stream_busy(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Busy union per stream (interval sets, µs)."""
        return {int(s): intervals.union(self.start_us[self.stream == s], self.end_us[self.stream == s])
                for s in np.unique(self.stream)}


def device_ops(ev: TraceEvents, launches: Launches) -> dict[int, DeviceOps]:
    """GPU ops grouped by device (pid), each sorted by start and merged into a busy union."""
    gpu = np.flatnonzero(np.isin(ev.cat, GPU_CATS))
    out: dict[int, DeviceOps] = {}
    for device in np.unique(ev.pid[gpu]):
        rows = gpu[ev.pid[gpu] == device]
        rows = rows[np.lexsort((ev.ts_us[rows] + ev.dur_us[rows], ev.ts_us[rows]))]
        s, e = ev.ts_us[rows], ev.ts_us[rows] + ev.dur_us[rows]
        bs, be, first, ender = intervals.sorted_groups(s, e)
        out[int(device)] = DeviceOps(int(device), rows, s, e, ev.tid[rows], launches.find(ev.correlation[rows]),
                                     bs, be, first, ender)
    return out


@dataclass
class Gaps:
    """Idle gaps of one device inside a window (µs), with the ops around them and their class."""

    start_us: np.ndarray
    end_us: np.ndarray
    prev_op: np.ndarray  # index into DeviceOps, −1 at the window start
    next_op: np.ndarray  # index into DeviceOps, −1 at the window end
    gap_class: np.ndarray  # strings from GAP_CLASSES
    launch_found: np.ndarray

    @property
    def duration_us(self) -> np.ndarray:
        """Gap lengths in µs."""
        return self.end_us - self.start_us


def idle_gaps(ops: DeviceOps, launches: Launches, lo: float, hi: float, threshold_us: float) -> Gaps:
    """The maximal idle sub-intervals of [lo, hi) and their classes (host_bound / launch_latency / dependency).

    host_bound: the next op's launch call began after the gap began (or no op followed in the window);
    otherwise launch_latency if the gap is shorter than ``threshold_us``, else dependency. An op whose
    launch was not recorded is treated as already launched (as Holistic Trace Analysis does).
    """
    s = np.clip(ops.busy_start_us, lo, hi)
    e = np.clip(ops.busy_end_us, lo, hi)
    keep = np.flatnonzero(e > s)
    gs = np.concatenate(([lo], e[keep]))
    ge = np.concatenate((s[keep], [hi]))
    prev_op = np.concatenate(([-1], ops.group_ender[keep]))
    next_op = np.concatenate((ops.group_first[keep], [-1]))
    real = ge > gs
    gs, ge, prev_op, next_op = gs[real], ge[real], prev_op[real], next_op[real]
    launch = np.where(next_op >= 0, ops.launch[np.maximum(next_op, 0)], -1)
    found = launch >= 0
    launch_start = np.where(found, launches.start_us[np.maximum(launch, 0)] if launches.start_us.size else 0.0,
                            np.inf)
    host = (found & (launch_start > gs)) | (next_op < 0)
    cls = np.where(host, HOST_BOUND, np.where(ge - gs < threshold_us, LAUNCH_LATENCY, DEPENDENCY))
    return Gaps(gs, ge, prev_op, next_op, cls.astype(object), found)
