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
]

METRICS: dict[str, Metric] = {m.name: m for m in _METRICS}


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
