"""metrics.json for a run: the trace analysis document with serving and NVML metrics merged in.

Pure functions over in-memory records: the caller loads the trace (or says why there is none) and
writes the result. Contract names go into ``metrics`` (a value) or ``absent`` (a reason), never both;
the sections ``serving``, ``nvml``, ``run`` and, when the profiler's overhead was measured,
``profiler_overhead`` carry the rest.
"""

from __future__ import annotations

from typing import Any

from asyncbatch_prof.analysis.contract import METRICS
from asyncbatch_prof.analysis.result import NO_GPU
from asyncbatch_prof.analysis.serving import serving_metrics

# what a CPU run's trace lacks, said where its idle and overlap shares are absent
CPU_RUN = NO_GPU + " (a CPU run: these shares are measured against GPU activity; run on a GPU for them)"


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


def build_metrics_doc(trace_doc: dict[str, Any], result, nvml: tuple, run_doc: dict[str, Any],
                      overhead: dict[str, Any] | None) -> dict[str, Any]:
    """The complete metrics.json document of a run.

    ``trace_doc``: the trace analysis' document; ``result``: the engine's
    GenerateResult (records, ``wall_s`` in s, ``output_tokens``); ``nvml``: ``(metrics, absent, section)``.
    """
    doc = dict(trace_doc)
    doc["metrics"], doc["absent"] = dict(doc.get("metrics", {})), dict(doc.get("absent", {}))
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
                  "model": run_doc.get("model", {}).get("model"), "device": run_doc.get("model", {}).get("device"),
                  "notes": run_doc.get("notes", [])}
    if overhead is not None:
        doc["profiler_overhead"] = overhead
    if run_doc.get("model", {}).get("device") == "cpu":
        doc["absent"] = {name: CPU_RUN if why == NO_GPU else why for name, why in doc["absent"].items()}
    return doc
