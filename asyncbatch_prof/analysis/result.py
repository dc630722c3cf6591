"""``analyze(path)``: a torch.profiler trace in, the metric contract out, as a :class:`TraceAnalysis`.

Times in the tables are trace µs (``epoch_us = base_time_ns / 1e3 + ts_us``); shares are percent
of the window. The headline attributes are for the busiest device and the default window (step when
the trace carries abprof's annotations, else kernel).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from asyncbatch_prof.analysis import contract
from asyncbatch_prof.analysis.comm import add_comm_metrics
from asyncbatch_prof.analysis.errors import TraceError
from asyncbatch_prof.analysis.gpu import DeviceOps, device_ops, join_launches
from asyncbatch_prof.analysis.host import device_engine_threads, engine_thread
from asyncbatch_prof.analysis.integrity import trace_integrity
from asyncbatch_prof.analysis.loader import CAT_NAMES, TraceEvents, load_trace
from asyncbatch_prof.analysis.document import build_doc, gaps_table, phases_table
from asyncbatch_prof.analysis.step_sources import StepsConfig, detect_steps, phase_segments
from asyncbatch_prof.analysis.step_time import step_categories_table, step_time_doc
from asyncbatch_prof.analysis.steps import launches_table, step_window, steps_table
from asyncbatch_prof.analysis.table import FrameAttribute, Table
from asyncbatch_prof.analysis.windows import PhaseCache, WindowResult, window_metrics

NO_GPU = "no GPU activity in trace"
HEADLINE = contract.TRACE_METRICS


class TraceAnalysis:
    """The analysis of one trace: ``doc`` (metrics.json), tables and headline attributes.

    Headline attributes (``gpu_idle_pct``, ``overlap_pct``, ...) are floats in the units of their
    names for ``device`` and the default window, or None when absent (``absent`` says why). ``tables``
    holds the per-op, per-gap, per-step ... tables as numpy columns; the attributes of the same names
    are those tables as pandas DataFrames, built on first access (the report's figures read them).
    """

    gpu_ops = FrameAttribute()
    launches = FrameAttribute()
    gaps = FrameAttribute()
    steps = FrameAttribute()
    step_categories = FrameAttribute()
    phases = FrameAttribute()
    cpu_phases = FrameAttribute()

    def __init__(self, path: Path, ev: TraceEvents, threshold_us: float, steps_config: StepsConfig | None = None,
                 tool_version: str | None = None):
        self.path = Path(path)
        self.tool_version = tool_version
        self.launch_latency_threshold_us = float(threshold_us)
        self.base_time_ns = ev.base_time_ns
        self.origin_us = ev.origin_us
        launches = join_launches(ev)
        self.devices: dict[int, DeviceOps] = device_ops(ev, launches)
        self.engine = engine_thread(ev, launches.pid, launches.tid)
        # each device gets the thread that launched to it: in a file holding two ranks, two engine threads
        self.engines = device_engine_threads(ev, launches.pid, launches.tid,
                                             {d: ops.launch for d, ops in self.devices.items()}, self.engine)
        # steps come from each device's own engine thread (two ranks in one file step independently)
        def key(thread):
            return None if thread is None else (thread.pid, thread.tid)

        detected = {}
        for thread in [self.engine, *(self.engines.get(d) for d in self.devices)]:
            if key(thread) not in detected:
                detected[key(thread)] = detect_steps(ev, thread, launches, steps_config)
        self.step_ranges, self.step_source = detected[key(self.engine)]
        engine_phases = self.step_source.get("phases") or {}
        phases = PhaseCache(ev, lambda pid, tid: phase_segments(ev, pid, tid, engine_phases))
        self.windows: dict[int, dict[str, WindowResult | str]] = {}
        for dev, ops in self.devices.items():
            ranges, source = detected[key(self.engines.get(dev))]
            self.windows[dev] = _device_windows(ops, launches, self.engines.get(dev), ranges, phases,
                                                threshold_us, source)
            for res in self.windows[dev].values():
                if isinstance(res, WindowResult):
                    add_comm_metrics(res, ev, ops)
        self.device = max(self.devices, key=lambda d: (self.windows[d]["kernel"].metrics.get("gpu_busy_us", 0.0), -d),
                          default=None)
        if self.device is not None and self.engines.get(self.device) is not None:
            self.engine = self.engines[self.device]
            self.step_ranges, self.step_source = detected[key(self.engine)]
        self.window = self._default_window()
        self.tables: dict[str, Table] = {
            "gpu_ops": _gpu_ops_table(ev, self.devices), "launches": launches_table(ev, launches, self.devices),
            "gaps": gaps_table(ev, self.devices, self.windows), "steps": self._steps_table(ev, launches),
        }
        self.tables["step_categories"] = step_categories_table(ev, self)
        self.tables["phases"] = phases_table(self.windows.get(self.device, {}).get(self.window))
        self.tables["cpu_phases"] = _cpu_phases_table(ev, self.engine, phases)
        spans = {dev: {w: (r.lo, r.hi) for w, r in per.items() if isinstance(r, WindowResult)}
                 for dev, per in self.windows.items()}
        self.integrity = trace_integrity(ev, launches, self.devices,
                                         None if self.step_ranges is None else self.step_ranges.start_us, spans)
        self.doc = build_doc(self, ev)
        self.doc["steps"].update(source=self.step_source["source"], source_detail=self.step_source["detail"])
        self.doc["step_time"] = step_time_doc(ev, self)
        self.absent: dict[str, str] = self.doc["absent"]
        for name in HEADLINE:
            value, _ = contract.lookup(self.doc, name)
            setattr(self, name, value)

    def _default_window(self) -> str | None:
        if self.device is None:
            return None
        return "step" if isinstance(self.windows[self.device].get("step"), WindowResult) else "kernel"

    def _steps_table(self, ev: TraceEvents, launches) -> Table:
        step = self.windows.get(self.device, {}).get("step")
        if not isinstance(step, WindowResult) or self.step_ranges is None or not step.hi > step.lo:
            return Table.empty(["step", "start_us", "end_us", "wall_us", "cpu_us", "gpu_busy_us", "idle_us",
                                "host_work_us", "sync_wait_us", "kernels", "launches", "h2d_bytes", "d2h_bytes"])
        table = steps_table(ev, self.step_ranges, (step.lo, step.hi), self.devices[self.device], launches, self.engine)
        assert abs(table["wall_us"].sum() - (step.hi - step.lo)) <= 1e-6 * (step.hi - step.lo) + 1e-9
        return table

    @property
    def has_gpu(self) -> bool:
        """Whether the trace holds any GPU op (kernel, memcpy, memset)."""
        return self.device is not None


def _device_windows(ops, launches, engine, steps, phases, threshold_us, source) -> dict[str, WindowResult | str]:
    out: dict[str, WindowResult | str] = {}
    if steps is None:
        out["step"] = f"no steps in trace ({source['detail']})"
    else:
        span = step_window(steps, ops, launches)
        out["step"] = span if isinstance(span, str) else window_metrics(
            "step", span[0], span[1], ops, launches, engine, phases, threshold_us)
    out["kernel"] = window_metrics("kernel", float(ops.start_us.min()), float(ops.end_us.max()), ops, launches,
                                   engine, phases, threshold_us)
    return out


def _gpu_ops_table(ev: TraceEvents, devices: dict[int, DeviceOps]) -> Table:
    names, cats = np.array(ev.names, dtype=object), np.array(CAT_NAMES, dtype=object)
    parts = [Table({
        "device": np.full(ops.row.size, dev), "stream": ops.stream, "start_us": ops.start_us + ev.origin_us,
        "end_us": ops.end_us + ev.origin_us, "dur_us": ops.end_us - ops.start_us, "name": names[ev.name[ops.row]],
        "cat": cats[ev.cat[ops.row]], "correlation": ev.correlation[ops.row],
    }) for dev, ops in devices.items()]
    return Table.concat(parts, ["device", "stream", "start_us", "end_us", "dur_us", "name", "cat", "correlation"])


def _cpu_phases_table(ev: TraceEvents, engine, phases: PhaseCache) -> Table:
    if engine is None:
        return Table.empty(["tid", "phase", "start_us", "end_us"])
    s, e, names = phases.get(engine.pid, engine.tid)
    return Table({"tid": np.full(len(names), engine.tid), "phase": names, "start_us": s + ev.origin_us,
                  "end_us": e + ev.origin_us})


def analyze(path: str | Path, launch_latency_threshold_us: float = 30.0,
            steps_config: StepsConfig | None = None, max_trace_bytes: int | None = None,
            tool_version: str | None = None) -> TraceAnalysis:
    """Analyze a ``.json``/``.json.gz`` torch.profiler trace; the threshold separates launch latency from
    dependency gaps (µs); ``steps_config`` maps range names to steps and phases for engines abprof does not
    know; ``max_trace_bytes`` caps the decompressed bytes read (loader.load_trace). ``tool_version`` goes
    into the document's ``tool`` (the caller knows it; the analysis does not import the package above it).
    Raises TraceError (exit 2 in the CLI) for unreadable input."""
    return analyze_with_events(path, launch_latency_threshold_us, steps_config, max_trace_bytes, tool_version)[0]


def analyze_with_events(path: str | Path, launch_latency_threshold_us: float = 30.0,
                        steps_config: StepsConfig | None = None, max_trace_bytes: int | None = None,
                        tool_version: str | None = None) -> tuple[TraceAnalysis, TraceEvents]:
    """:func:`analyze`, also returning the loaded events: a file holding several devices is then merged as a
    rank set from the same parse (rankset.rank_set_of_file)."""
    if not 0 <= launch_latency_threshold_us < float("inf"):  # NaN fails both comparisons
        raise TraceError(f"the launch-latency threshold must be a finite non-negative number of µs, "
                         f"not {launch_latency_threshold_us}")
    ev = load_trace(path, max_trace_bytes)
    analysis = TraceAnalysis(Path(path), ev, launch_latency_threshold_us, steps_config, tool_version)
    _check_finite(analysis.doc, path)
    return analysis, ev


def _check_finite(doc: dict[str, Any], path: str | Path) -> None:
    """Timestamps near the float limit (ts 1e308) overflow to inf in the window arithmetic: refuse the trace
    rather than write a metrics.json that no JSON reader accepts or a gate that compares infinities."""
    where = _non_finite(doc, "")
    if where is not None:
        raise TraceError(f"{path}: timestamps or durations out of range ({where} is not a finite number)")


def _non_finite(value: Any, where: str) -> str | None:
    if isinstance(value, float):
        return None if np.isfinite(value) else where
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _non_finite(item, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None
