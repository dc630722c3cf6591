"""The metric contract of ``docs/metrics.md`` in code: names, units, windows, directions.

Everything that prints, plots or gates a number (analyze, run, report, compare, gate) looks its
name up here, so a budget written today means the same thing next year.

``metrics.json`` (``schema_version`` 1) holds::

    {
      "schema_version": 1,
      "tool": {"name": "abprof", "version": "..."},
      "metrics": {"gpu_idle_pct": {"step": 23.1, "kernel": 20.4}, "tokens_per_s": 1234.5, ...},
      "absent": {"overlap_pct": "no host activity recorded for the engine thread", ...},
      ...   # sections written by the producers (trace, devices, steps, serving, nvml, run)
    }

A windowed metric is a ``{"step": x, "kernel": y}`` mapping (either key may be missing); the
unqualified name means the step window when present, else the kernel window; ``name.kernel`` or
``name.step`` names one window. A metric that could not be computed is not in ``metrics``: it is
in ``absent`` with the reason, never 0.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

SCHEMA_VERSION = 1
SCHEMA_VERSIONS = (1,)  # the versions this code reads; a document of another is refused
WINDOWS = ("step", "kernel")


@dataclass(frozen=True, slots=True)
class Metric:
    """One contract metric: its unit, whether it has a value per window, and which way is better."""

    name: str
    unit: str
    windowed: bool
    better: str  # "lower" or "higher"
    description: str


def _m(name: str, unit: str, windowed: bool, better: str, description: str) -> Metric:
    return Metric(name, unit, windowed, better, description)


_METRICS = [
    _m("gpu_idle_pct", "%", True, "lower", "share of the window with no GPU op running on the device"),
    _m("gpu_busy_us", "us", True, "higher", "union of GPU op intervals, all streams merged"),
    _m("window_us", "us", True, "lower", "length of the analysis window"),
    _m("host_bound_pct", "%", True, "lower", "idle share whose next op was launched after the gap began"),
    _m("launch_latency_pct", "%", True, "lower", "idle share in short gaps with the next op already launched"),
    _m("dependency_pct", "%", True, "lower", "idle share in long gaps with the next op already launched"),
    _m("overlap_pct", "%", True, "higher", "share of engine host work during which the GPU was busy"),
    _m("sync_wait_pct", "%", True, "lower", "share of the window the engine thread was blocked on the GPU"),
    _m("stream_concurrency_pct", "%", True, "higher", "share of the window with ops on two or more streams at once"),
    _m("tokens_per_s", "tok/s", False, "higher", "output tokens per second of measured wall time"),
    _m("requests_per_s", "req/s", False, "higher", "finished requests per second of measured wall time"),
    _m("ttft_ms_p50", "ms", False, "lower", "time to first token, median"),
    _m("ttft_ms_p90", "ms", False, "lower", "time to first token, 90th percentile"),
    _m("ttft_ms_p99", "ms", False, "lower", "time to first token, 99th percentile"),
    _m("itl_ms_p50", "ms", False, "lower", "inter-token latency, median"),
    _m("itl_ms_p90", "ms", False, "lower", "inter-token latency, 90th percentile"),
    _m("itl_ms_p99", "ms", False, "lower", "inter-token latency, 99th percentile"),
    _m("e2e_ms_p50", "ms", False, "lower", "end-to-end request latency, median"),
    _m("e2e_ms_p90", "ms", False, "lower", "end-to-end request latency, 90th percentile"),
    _m("e2e_ms_p99", "ms", False, "lower", "end-to-end request latency, 99th percentile"),
    _m("preemptions", "count", False, "lower", "requests preempted (blocks freed, recomputed later)"),
    _m("nvml_util_pct", "%", False, "higher", "NVML 'a kernel was running' share (not SM utilization)"),
    _m("sm_active_pct", "%", False, "higher", "GPM SM activity"),
    _m("joules_per_token", "J/tok", False, "lower", "GPU energy per output token"),
    _m("clock_throttled", "bool", False, "lower", "thermal or hardware clock slowdown during the run (NVML)"),
    # clocks (issue 15 item 3): power capping is recorded, not treated as throttling; the gate compares SM clocks
    _m("power_capped_pct", "%", False, "lower", "share of NVML clock-event samples with sw_power_cap set"),
    _m("sm_clock_mhz_mean", "MHz", False, "higher", "mean SM clock over the measured window (NVML)"),
    # trace integrity (issue 15): whether the trace holds the GPU side of every launch
    _m("trace_complete", "bool", False, "higher", "every launch and GPU record accounted for (trace_integrity ok)"),
    _m("missing_gpu_records_pct", "%", False, "lower", "share of kernel/graph launches with GPU records missing"),
    # rank sets and communication (tensor parallelism, issue 17): analysis/comm.py, analysis/ranks.py
    _m("comm_pct", "%", True, "lower", "share of the window with a collective (NCCL) kernel running"),
    _m("comm_overlap_pct", "%", True, "higher", "share of collective time with compute on another stream"),
    _m("gpu_idle_pct_worst_rank", "%", False, "lower", "gpu_idle_pct of the rank that idled most"),
    _m("collective_wait_pct", "%", False, "lower", "share of matched collective time spent waiting for the last rank"),
]

METRICS: dict[str, Metric] = {m.name: m for m in _METRICS}
# A metric with a value per window is computed from the trace (the windows are trace windows); these are
# the trace analysis' headline numbers, in the contract's order.
TRACE_METRICS: tuple[str, ...] = tuple(m.name for m in _METRICS if m.windowed)


class UnknownMetricError(KeyError):
    """A metric name that the contract does not define."""

    def __str__(self) -> str:  # KeyError quotes its message; say it plainly
        return str(self.args[0])


def parse_name(qualified: str) -> tuple[Metric, str | None]:
    """Split ``gpu_idle_pct.kernel`` into the contract metric and the window (None: the default)."""
    name, _, window = qualified.partition(".")
    metric = METRICS.get(name)
    if metric is None:
        known = ", ".join(sorted(METRICS))
        raise UnknownMetricError(f"unknown metric {name!r} (known: {known})")
    if window:
        if not metric.windowed:
            raise UnknownMetricError(f"metric {name!r} has no per-window values, so {qualified!r} is not a name")
        if window not in WINDOWS:
            raise UnknownMetricError(f"unknown window {window!r} in {qualified!r} (windows: step, kernel)")
    return metric, window or None


def lookup(doc: Mapping[str, Any], qualified: str) -> tuple[float | None, str | None]:
    """Return ``(value, None)`` for a metric of a metrics.json document, or ``(None, reason)`` when absent.

    The unqualified name of a windowed metric means the step window when present, else the kernel window.
    """
    metric, window = parse_name(qualified)
    metrics = doc.get("metrics", {})
    absent = doc.get("absent", {})
    value = metrics.get(metric.name)
    if isinstance(value, Mapping):
        for w in ([window] if window else list(WINDOWS)):
            if value.get(w) is not None:
                return float(value[w]), None
        value = None
    if value is not None:
        return float(value), None
    reason = absent.get(qualified) or absent.get(metric.name) or "not in metrics.json"
    return None, str(reason)


def format_value(qualified: str, value: float | None) -> str:
    """A metric value for people, in the metric's unit (%, ms, µs, tok/s, J/tok, yes/no); '—' for None.

    The one formatter of the CLI summaries, the HTML report and the comparison, so a number reads the
    same wherever it is shown."""
    if value is None:
        return "—"
    metric, _ = parse_name(qualified)
    unit = metric.unit
    if unit == "%":
        return f"{value:.1f}%"
    if unit == "ms":
        return f"{value:.2f} ms" if abs(value) < 100 else f"{value:.1f} ms"
    if unit == "us":
        return f"{value:,.1f} µs"
    if unit in ("tok/s", "req/s"):
        return f"{value:,.0f} {unit}" if abs(value) >= 100 else f"{value:.2f} {unit}"
    if unit == "J/tok":
        return f"{value:.3g} J/tok"
    if unit == "bool":
        return "yes" if value else "no"
    if unit == "count":
        return f"{value:.0f}"
    return f"{value:g} {unit}"


def metrics_problems(doc: dict[str, Any]) -> list[str]:
    """What makes ``doc`` unusable as contract evidence, one phrase each (empty: usable).

    Values are never coerced: ``true`` is not 1, ``"true"`` is not a bool, NaN and infinity are not numbers.
    """
    version = doc.get("schema_version")
    if isinstance(version, bool) or version not in SCHEMA_VERSIONS:
        known = ", ".join(map(str, SCHEMA_VERSIONS))
        return [f"schema_version {version!r} is not one this abprof reads ({known})"]
    metrics, absent = doc.get("metrics"), doc.get("absent", {})
    problems = []
    if not isinstance(metrics, dict):
        problems.append(f"'metrics' must be an object, not {type(metrics).__name__}")
        metrics = {}
    if not isinstance(absent, dict):
        problems.append(f"'absent' must be an object, not {type(absent).__name__}")
    elif any(not isinstance(v, str) for v in absent.values()):
        problems.append("'absent' must map metric names to reasons (strings)")
    for name, value in metrics.items():
        metric = METRICS.get(name)
        if metric is not None and not _valid_value(value, metric.unit, metric.windowed):
            problems.append(f"metric {name} has an invalid value {_short(value)} ({_expected(metric.unit)})")
    return problems


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _valid_value(value: Any, unit: str, windowed: bool) -> bool:
    if unit == "bool":
        return isinstance(value, bool)
    if windowed and isinstance(value, dict):
        return bool(value) and all(k in ("step", "kernel") and (v is None or _is_number(v)) for k, v in value.items())
    return _is_number(value)


def _expected(unit: str) -> str:
    return "expected true or false" if unit == "bool" else "expected a finite number"


def _short(value: Any) -> str:
    text = json.dumps(value, allow_nan=True, default=str)
    return text if len(text) <= 40 else text[:37] + "..."
