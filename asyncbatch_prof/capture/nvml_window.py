"""NVML samples → the contract's metrics over the measured window (utilization, SM activity, energy per
token, clock events). Works on any sampler that exposes ``available``, ``reason``, ``unsupported``,
``marks``, ``snapshot()`` and ``status()`` (``nvml.NvmlSampler``)."""

from __future__ import annotations

from typing import Any

# Reasons that are not a slowdown of a busy GPU: idle, clocks pinned by the admin, display clocks.
_BENIGN_REASONS = 0x1 | 0x2 | 0x100
# Throttling that invalidates a measurement: hardware slowdown, thermal (SW and HW), the HW power brake.
# sw_power_cap (0x4) is not among them: a saturated H100/H200 runs at its power limit, and that is the
# normal state of the part being measured; it is recorded as power_capped_pct. sync_boost (0x10) only
# aligns the clocks of GPUs in a sync-boost group.
THROTTLE_REASONS = 0x8 | 0x20 | 0x40 | 0x80
POWER_CAP_REASON = 0x4
_REASON_NAMES = {0x4: "sw_power_cap", 0x8: "hw_slowdown", 0x10: "sync_boost", 0x20: "sw_thermal",
                 0x40: "hw_thermal", 0x80: "hw_power_brake"}

def _clock_events(reasons: list[float] | None, metrics: dict[str, Any], absent: dict[str, str],
                  why_absent: str) -> list[str]:
    """Fill clock_throttled and power_capped_pct from the clock-event-reason samples; return the reasons seen."""
    if not reasons:
        absent["clock_throttled"] = absent["power_capped_pct"] = why_absent
        return []
    mask = 0
    for value in reasons:
        mask |= int(value)
    metrics["clock_throttled"] = bool(mask & THROTTLE_REASONS)
    capped = sum(1 for value in reasons if int(value) & POWER_CAP_REASON)
    metrics["power_capped_pct"] = round(100.0 * capped / len(reasons), 3)
    return reason_names(mask & ~_BENIGN_REASONS)


def reason_names(mask: int) -> list[str]:
    """Names of the slowdown reasons set in an NVML clock-event-reasons mask (benign bits left out)."""
    return [name for bit, name in _REASON_NAMES.items() if mask & bit]


def nvml_metrics(sampler, start_us: float, end_us: float,
                 output_tokens: int) -> tuple[dict[str, Any], dict[str, str], dict[str, Any]]:
    """Contract metrics over ``[start_us, end_us]`` (epoch µs): ``(metrics, absent, section)``.

    ``nvml_util_pct`` and ``sm_active_pct`` are means of the samples in the window (%); ``joules_per_token``
    is the total-energy counter's difference between the ``generate_start``/``generate_end`` marks (J per
    output token); ``clock_throttled`` is true when any sample in the window carried a thermal or hardware
    slowdown reason (THROTTLE_REASONS); ``power_capped_pct`` is the share of clock-event samples with
    sw_power_cap set (%); ``sm_clock_mhz_mean`` is the mean SM clock (MHz).
    """
    metrics: dict[str, Any] = {}
    absent: dict[str, str] = {}
    names = ("nvml_util_pct", "sm_active_pct", "joules_per_token", "clock_throttled", "power_capped_pct",
             "sm_clock_mhz_mean")
    if not sampler.available:
        why = sampler.reason or "NVML not started"
        return {}, {n: why for n in names}, {"available": False, "reason": why}
    window = [(t, s, v) for t, s, v in sampler.snapshot() if start_us <= t <= end_us]
    by_series: dict[str, list[float]] = {}
    for _, series, value in window:
        by_series.setdefault(series, []).append(value)
    span_s = (end_us - start_us) / 1e6

    def mean_of(metric: str, series: str) -> None:
        values = by_series.get(series)
        if values:
            metrics[metric] = round(sum(values) / len(values), 3)
        elif series in sampler.unsupported or (series.startswith("gpm") and "gpm" in sampler.unsupported):
            absent[metric] = sampler.unsupported.get(series) or sampler.unsupported["gpm"]
        else:
            absent[metric] = f"no {series} sample inside the measured {span_s:.3g} s"

    mean_of("nvml_util_pct", "util_pct")
    mean_of("sm_active_pct", "gpm_sm_active_pct")
    mean_of("sm_clock_mhz_mean", "sm_clock_mhz")
    start, end = sampler.marks.get("generate_start", {}), sampler.marks.get("generate_end", {})
    if "energy_mj" in start and "energy_mj" in end and output_tokens > 0:
        joules = (end["energy_mj"] - start["energy_mj"]) / 1000.0
        metrics["joules_per_token"] = round(joules / output_tokens, 6)
    elif output_tokens <= 0:
        absent["joules_per_token"] = "no output tokens"
    else:
        absent["joules_per_token"] = sampler.unsupported.get("energy_mj", "total energy counter not read")
    throttle_names = _clock_events(by_series.get("clock_event_reasons"), metrics, absent, sampler.unsupported.get(
        "clock_event_reasons", f"no clock-event sample inside the measured {span_s:.3g} s"))
    section = sampler.status()
    section.update(window_epoch_us=[start_us, end_us], samples_in_window={k: len(v) for k, v in by_series.items()},
                   throttle_reasons=throttle_names)
    for series in ("sm_clock_mhz", "mem_clock_mhz", "power_w", "mem_used_mib"):
        values = by_series.get(series)
        if values:
            section[series] = {"min": min(values), "mean": round(sum(values) / len(values), 3), "max": max(values)}
    if "joules_per_token" in metrics:
        section["energy_j"] = round((end["energy_mj"] - start["energy_mj"]) / 1000.0, 3)
    return metrics, absent, section
