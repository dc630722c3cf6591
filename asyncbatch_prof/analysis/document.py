"""The metrics.json document of an analysis and its gap/phase tables (see contract.py for the format)."""

from __future__ import annotations

from typing import Any

import numpy as np

from asyncbatch_prof.analysis import contract, intervals
from asyncbatch_prof.analysis.loader import TraceEvents
from asyncbatch_prof.analysis.table import Table
from asyncbatch_prof.analysis.windows import WindowResult

_PERCENTILES = (50, 90, 99)
GAP_COLUMNS = ("device", "window", "start_us", "end_us", "duration_us", "gap_class", "cpu_phase", "prev_op",
               "next_op", "in_step_window")
PHASE_COLUMNS = ("phase", "host_bound_us", "host_bound_pct")


def gaps_table(ev: TraceEvents, devices: dict, windows: dict) -> Table:
    """Idle gaps of every device (trace µs): all kernel-window gaps, plus the step window's own gaps
    (window='step') where they differ from a kernel-window gap (clipped at the step window's edges, or
    before the first GPU op). Summing ``duration_us`` over ``in_step_window`` gives the step window's idle."""
    names = np.array(ev.names + ["(window edge)"], dtype=object)
    parts = []
    for dev, per_window in windows.items():
        ops = devices[dev]
        kernel, step = per_window.get("kernel"), per_window.get("step")
        kernel_gaps = set()
        if isinstance(kernel, WindowResult) and kernel.gaps is not None:
            kernel_gaps = set(zip(kernel.gaps.start_us.tolist(), kernel.gaps.end_us.tolist()))
        for res in (kernel, step):
            if not isinstance(res, WindowResult) or res.gaps is None:
                continue
            g = res.gaps
            in_step = np.zeros(g.start_us.size, dtype=bool)
            if isinstance(step, WindowResult):
                in_step = (g.start_us >= step.lo) & (g.end_us <= step.hi)
            keep = np.ones(g.start_us.size, dtype=bool)
            if res is step:
                keep = np.array([(a, b) not in kernel_gaps for a, b in zip(g.start_us.tolist(), g.end_us.tolist())],
                                dtype=bool)
            n = g.start_us.size
            parts.append(Table({
                "device": np.full(n, dev), "window": np.full(n, res.name, dtype=object),
                "start_us": g.start_us + ev.origin_us, "end_us": g.end_us + ev.origin_us,
                "duration_us": g.duration_us, "gap_class": g.gap_class, "cpu_phase": res.gap_phase,
                "prev_op": _op_names(names, ev, ops, g.prev_op), "next_op": _op_names(names, ev, ops, g.next_op),
                "in_step_window": in_step,
            }).take(keep))
    table = Table.concat(parts, GAP_COLUMNS)
    return table.take(np.lexsort((table["start_us"], table["device"])))


def _op_names(names: np.ndarray, ev: TraceEvents, ops, idx: np.ndarray) -> np.ndarray:
    """Names of ops by index into DeviceOps; '(window edge)' for −1."""
    return names[np.where(idx >= 0, ev.name[ops.row[np.maximum(idx, 0)]], len(ev.names))]


def phases_table(res: WindowResult | None) -> Table:
    """Host-bound idle per CPU phase for one window: µs and percent of the window, largest first."""
    if not isinstance(res, WindowResult) or not res.phases:
        return Table.empty(PHASE_COLUMNS)
    window = res.hi - res.lo
    rows = sorted(res.phases.items(), key=lambda kv: (-kv[1], kv[0]))
    return Table({"phase": np.array([k for k, _ in rows], dtype=object),
                  "host_bound_us": np.array([v for _, v in rows], dtype=np.float64),
                  "host_bound_pct": np.array([100.0 * v / window for _, v in rows], dtype=np.float64)})


def _percentiles(values, prefix: str) -> dict[str, float]:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {}
    out = {f"{prefix}_p{p}": float(np.percentile(values, p)) for p in _PERCENTILES}
    out[f"{prefix}_mean"] = float(values.mean())
    return out


def _window_doc(res: WindowResult | str, origin: float) -> dict[str, Any]:
    if isinstance(res, str):
        return {"absent": res}
    return {"start_us": res.lo + origin, "end_us": res.hi + origin, "metrics": res.metrics, "absent": res.absent,
            **res.details, "host_bound_phases_us": dict(sorted(res.phases.items(), key=lambda kv: -kv[1]))}


def _contract_metrics(ta, doc: dict[str, Any]) -> None:
    """Fill doc['metrics'] / doc['absent'] with the windowed contract metrics of the headline device."""
    metrics, absent = doc["metrics"], doc["absent"]
    per_window = ta.windows.get(ta.device, {})
    for name, metric in contract.METRICS.items():
        if not metric.windowed:
            continue
        if ta.device is None:
            absent[name] = "no GPU activity in trace"
            continue
        values, reasons = {}, {}
        for wname in contract.WINDOWS:
            res = per_window.get(wname)
            if isinstance(res, str):
                reasons[wname] = res
            elif name in res.metrics:
                values[wname] = res.metrics[name]
            else:
                reasons[wname] = res.absent.get(name, "not computed")
        if values:
            metrics[name] = values
            for wname, why in reasons.items():
                absent[f"{name}.{wname}"] = why
        else:
            absent[name] = "; ".join(f"{w}: {why}" for w, why in reasons.items())


def build_doc(ta, ev: TraceEvents) -> dict[str, Any]:
    """The metrics.json document (schema_version, tool, trace, metrics, absent, devices, steps, launches)."""
    engine = ta.engine
    engine_doc = None
    if engine is not None:
        engine_doc = {"pid": engine.pid, "tid": engine.tid, "chosen_by": engine.source,
                      "runtime_calls_only": engine.runtime_only}
        if engine.runtime_only:
            engine_doc["note"] = ("only CUDA runtime/driver calls were recorded for this thread, so its host work "
                                  "is a lower bound")
    doc: dict[str, Any] = {
        "schema_version": contract.SCHEMA_VERSION,
        "tool": {"name": "abprof", "version": ta.tool_version},
        "trace": {
            "path": str(ta.path), "base_time_ns": ev.base_time_ns, "origin_us": ev.origin_us,
            "time_base": "absolute epoch µs" if ev.base_time_ns == 0 else "relative to baseTimeNanoseconds"
            if ev.base_time_ns else "unknown",
            "events": ev.counts, "devices": sorted(ta.devices), "engine_thread": engine_doc,
            "device_engine_threads": {str(d): {"pid": t.pid, "tid": t.tid, "chosen_by": t.source}
                                      for d, t in sorted(ta.engines.items())},
            "profiled_steps": None if ta.step_ranges is None else int(ta.step_ranges.index.size),
        },
        "device": ta.device, "default_window": ta.window,
        "launch_latency_threshold_us": ta.launch_latency_threshold_us,
        "metrics": {}, "absent": {},
        "devices": {str(d): {w: _window_doc(r, ev.origin_us) for w, r in per.items()} for d, per in ta.windows.items()},
    }
    _contract_metrics(ta, doc)
    _integrity_metrics(ta.integrity, doc)
    steps = ta.tables["steps"]
    doc["steps"] = {"count": int(len(steps))}
    for col in ("wall_us", "cpu_us", "gpu_busy_us", "idle_us", "host_work_us", "kernels", "launches"):
        doc["steps"].update(_percentiles(steps[col], col) if len(steps) else {})
    launches = ta.tables["launches"]
    launches = launches.take(launches["device"] == ta.device if ta.device is not None
                             else np.zeros(len(launches), dtype=bool))
    doc["launches"] = {"count": int(len(launches)), **_percentiles(launches["launch_delay_us"], "launch_delay_us"),
                       **_percentiles(launches["queue_depth"], "queue_depth")}
    doc["phases"] = ta.tables["phases"].records()
    doc["host"] = _host_doc(ta)
    return doc


def _integrity_metrics(integrity: dict[str, Any], doc: dict[str, Any]) -> None:
    """The trace_integrity section and its contract metrics (trace_complete, missing_gpu_records_pct)."""
    devices = integrity["devices"].values()
    if not any(d["launches"] or d["gpu_records"] for d in devices) and not integrity["launches_without_device"]:
        integrity = {**integrity, "verdict": None}
        doc["absent"]["trace_complete"] = "no launch calls and no GPU records in trace: nothing to account for"
    else:
        doc["metrics"]["trace_complete"] = integrity["verdict"] == "ok"
    if integrity["missing_gpu_records_pct"] is None:
        doc["absent"]["missing_gpu_records_pct"] = ("no kernel or graph launch outside stream capture and the "
                                                    "launches in flight at the trace's end")
    else:
        doc["metrics"]["missing_gpu_records_pct"] = integrity["missing_gpu_records_pct"]
    affected = [m.name for m in contract.METRICS.values() if m.windowed]
    doc["trace_integrity"] = {**integrity, "affected_metrics": affected}


def _host_doc(ta) -> dict[str, Any] | None:
    """CPU-side numbers that need no GPU: the engine thread's host work and sync wait over the profiled steps
    (or, without abprof.step, over the thread's recorded activity), and the steps' CPU lengths (µs)."""
    engine = ta.engine
    if engine is None:
        return None
    steps = ta.step_ranges
    if steps is not None and steps.index.size:
        lo, hi, span = float(steps.start_us[0]), float(steps.end_us.max()), "profiled abprof.step ranges"
    elif engine.work[0].size or engine.blocked[0].size:
        both = np.concatenate((engine.work[0], engine.blocked[0])), np.concatenate((engine.work[1], engine.blocked[1]))
        lo, hi, span = float(both[0].min()), float(both[1].max()), "the engine thread's recorded activity"
    else:
        return {"span": None}
    out: dict[str, Any] = {
        "span": span, "start_us": lo + ta.origin_us, "end_us": hi + ta.origin_us, "span_us": hi - lo,
        "host_work_us": intervals.length(intervals.clip(engine.work, lo, hi)),
        "sync_wait_us": intervals.length(intervals.clip(engine.blocked, lo, hi)),
    }
    if steps is not None:
        out["profiled_steps"] = int(steps.index.size)
        out.update(_percentiles(steps.end_us - steps.start_us, "step_cpu_us"))
    return out
