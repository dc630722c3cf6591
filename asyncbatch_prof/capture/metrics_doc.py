"""metrics.json for a run: the trace analysis document with serving and NVML metrics merged in.

Contract names go into ``metrics`` (a value) or ``absent`` (a reason), never both; the sections
``serving``, ``nvml``, ``run`` and, with --measure-overhead, ``profiler_overhead`` carry the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from asyncbatch_prof import __version__
from asyncbatch_prof.analysis.contract import METRICS, SCHEMA_VERSION
from asyncbatch_prof.capture.serving import serving_metrics

TRACE_METRICS = ("gpu_idle_pct", "gpu_busy_us", "window_us", "host_bound_pct", "launch_latency_pct",
                 "dependency_pct", "overlap_pct", "sync_wait_pct", "stream_concurrency_pct")


def analyze_trace(trace: Path | None, window) -> tuple[dict[str, Any], Any]:
    """``(doc, analysis)`` from the analyzer, or a document whose trace metrics are absent with the reason."""
    if trace is None:
        reason = (f"no trace: the run ended before the profiled window ({window.describe()}) was reached; "
                  "lower --profile-start or run more requests")
        return _empty_doc(reason), None
    try:
        from asyncbatch_prof.analysis import analyze
    except ImportError:
        return _empty_doc("trace analysis is not available in this build (asyncbatch_prof.analysis.analyze)"), None
    analysis = analyze(str(trace))
    return dict(analysis.doc), analysis


def _empty_doc(reason: str) -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "tool": {"name": "abprof", "version": __version__},
            "metrics": {}, "absent": {name: reason for name in TRACE_METRICS}}


def merge(doc: dict[str, Any], metrics: dict[str, Any], absent: dict[str, str]) -> None:
    """Put producer metrics into ``doc``: a value replaces an absence; an absence never hides a value."""
    doc.setdefault("metrics", {})
    doc.setdefault("absent", {})
    for name, value in metrics.items():
        doc["metrics"][name] = value
        doc["absent"].pop(name, None)
    for name, reason in absent.items():
        if name not in doc["metrics"]:
            doc["absent"][name] = reason


def build_metrics_doc(trace: Path | None, result, nvml: tuple, run_doc: dict[str, Any],
                      overhead: dict[str, Any] | None, window) -> tuple[dict[str, Any], Any]:
    """The complete metrics.json document for a run, and the analysis object (None without one)."""
    doc, analysis = analyze_trace(trace, window)
    s_metrics, s_absent, s_section = serving_metrics(result.records, result.wall_s, result.output_tokens)
    merge(doc, s_metrics, s_absent)
    n_metrics, n_absent, n_section = nvml
    merge(doc, n_metrics, n_absent)
    for name in METRICS:  # every contract name is either measured or says why not
        if name not in doc["metrics"] and name not in doc["absent"]:
            doc["absent"][name] = "not measured by this run"
    doc["serving"] = s_section
    doc["nvml"] = n_section
    doc["run"] = {"mode": run_doc["mode"], "engine": run_doc["engine"], "profiled_steps": run_doc["profiled_steps"],
                  "num_steps": run_doc.get("num_steps"), "workload": run_doc["workload"],
                  "model": run_doc.get("model", {}).get("model"), "notes": run_doc.get("notes", [])}
    if overhead is not None:
        doc["profiler_overhead"] = overhead
    return doc, analysis
