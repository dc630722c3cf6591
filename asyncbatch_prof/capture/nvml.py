"""NVML sampler on a background thread: utilization history, clocks, throttle reasons, power, energy, GPM.

Utilization comes from the driver's ring buffer (``nvmlDeviceGetSamples`` with the last-seen
timestamp), so polling once every ``buffer_poll_s`` loses nothing; the point reads (clocks, power,
energy, memory, clock-event reasons, GPM) are taken every ``interval_s``. Every sample is
``(epoch_us, series, value)`` with NVML's own CPU timestamp where it gives one, else the host's
``time.time_ns()`` at the read, so samples line up with the trace through ``baseTimeNanoseconds``.

No NVML, no GPU, or a call the GPU does not support: the sampler says why in ``reason`` (or in
``unsupported``), and the run goes on without those series.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

SERIES = ("util_pct", "mem_util_pct", "sm_clock_mhz", "mem_clock_mhz", "power_w", "energy_mj", "mem_used_mib",
          "clock_event_reasons", "gpm_sm_active_pct", "gpm_sm_occupancy_pct", "gpm_tensor_active_pct",
          "gpm_dram_bw_pct")

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
# GPM metric ids (nvmlGpmMetricId_t) → our series.
_GPM = {2: "gpm_sm_active_pct", 3: "gpm_sm_occupancy_pct", 5: "gpm_tensor_active_pct", 10: "gpm_dram_bw_pct"}


def _import_pynvml():
    import pynvml  # nvidia-ml-py

    return pynvml


def _sample_value(pynvml, value_type: int, sample) -> float:
    """Read the union ``nvmlValue_t`` by the type NVML says it holds."""
    field_name = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal"}.get(value_type, "uiVal")
    return float(getattr(sample.sampleValue, field_name))


@dataclass
class NvmlSampler:
    """Background NVML sampler for one GPU (``device_index``); use as a context manager or start()/stop()."""

    device_index: int = 0
    interval_s: float = 0.1
    buffer_poll_s: float = 1.0
    available: bool = False
    reason: str | None = None
    gpu_name: str | None = None
    driver: str | None = None
    gpm_supported: bool = False
    unsupported: dict[str, str] = field(default_factory=dict)
    samples: list[tuple[float, str, float]] = field(default_factory=list)
    marks: dict[str, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._nvml = None
        self._handle = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._last_seen = {1: 0, 2: 0}
        self._gpm_prev = None
        self._gpm_cur = None
        self.error: str | None = None

    # ---- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> "NvmlSampler":
        """Open NVML and start sampling; on any failure record ``reason`` and stay unavailable."""
        try:
            pynvml = _import_pynvml()
            pynvml.nvmlInit()
        except Exception as exc:  # no library, no driver, no GPU: a reason, never a crash
            self.reason = f"NVML not available: {_describe(exc)}"
            return self
        try:
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(self.device_index)
            self.gpu_name = _text(pynvml.nvmlDeviceGetName(self._handle))
            self.driver = _text(pynvml.nvmlSystemGetDriverVersion())
        except Exception as exc:
            self.reason = f"NVML has no GPU {self.device_index}: {_describe(exc)}"
            _quiet(pynvml.nvmlShutdown)
            return self
        self._nvml = pynvml
        self.available = True
        self._init_gpm()
        now_us = time.time_ns() / 1e3
        self._last_seen = {1: int(now_us), 2: int(now_us)}  # only samples from now on
        self._thread = threading.Thread(target=self._loop, name="abprof-nvml", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread, take the last readings and close NVML."""
        if not self.available or self._nvml is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._poll_buffers()
        for sample in (self._gpm_prev, self._gpm_cur):
            if sample is not None:
                _quiet(self._nvml.nvmlGpmSampleFree, sample)
        _quiet(self._nvml.nvmlShutdown)
        self._nvml = None

    def __enter__(self) -> "NvmlSampler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def mark(self, label: str) -> None:
        """Record the time (epoch µs) and the total energy counter (mJ) now, from the calling thread.

        The point series are read here too, so even a run shorter than ``interval_s`` has samples at its edges.
        """
        entry = {"epoch_us": time.time_ns() / 1e3}
        if self.available and self._nvml is not None:
            self._poll_points(gpm=False)  # GPM samples are swapped by the thread only
            energy = self._read("energy_mj", self._nvml.nvmlDeviceGetTotalEnergyConsumption, self._handle)
            if energy is not None:
                entry["energy_mj"] = float(energy)
        self.marks[label] = entry

    # ---- sampling ----------------------------------------------------------------------------------
    def _init_gpm(self) -> None:
        pynvml = self._nvml
        try:
            support = pynvml.nvmlGpmQueryDeviceSupport(self._handle)
            self.gpm_supported = bool(getattr(support, "isSupportedDevice", 0))
            if not self.gpm_supported:
                self.unsupported["gpm"] = "nvmlGpmQueryDeviceSupport: GPM not supported on this GPU"
                return
            self._gpm_prev = pynvml.nvmlGpmSampleAlloc()
            self._gpm_cur = pynvml.nvmlGpmSampleAlloc()
            pynvml.nvmlGpmSampleGet(self._handle, self._gpm_prev)
        except Exception as exc:
            self.gpm_supported = False
            self.unsupported["gpm"] = f"GPM unavailable: {_describe(exc)}"

    def _loop(self) -> None:
        next_buffer = 0.0
        while not self._stop.is_set():
            try:
                self._poll_points()
                if time.monotonic() >= next_buffer:
                    self._poll_buffers()
                    next_buffer = time.monotonic() + self.buffer_poll_s
            except Exception as exc:  # keep the run alive; say what broke
                self.error = f"NVML sampling stopped: {_describe(exc)}"
                return
            self._stop.wait(self.interval_s)

    def _add(self, epoch_us: float, series: str, value: float) -> None:
        with self._lock:
            self.samples.append((epoch_us, series, float(value)))

    def _read(self, series: str, fn, *args):
        """Call one NVML getter; a NotSupported-style failure marks the series unsupported once."""
        if series in self.unsupported:
            return None
        try:
            return fn(*args)
        except Exception as exc:
            self.unsupported[series] = f"{getattr(fn, '__name__', series)}: {_describe(exc)}"
            return None

    def _poll_points(self, gpm: bool = True) -> None:
        pynvml, h = self._nvml, self._handle
        now = time.time_ns() / 1e3
        reads = {
            "sm_clock_mhz": (pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_SM),
            "mem_clock_mhz": (pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_MEM),
            "power_w": (pynvml.nvmlDeviceGetPowerUsage, h),
            "energy_mj": (pynvml.nvmlDeviceGetTotalEnergyConsumption, h),
            "mem_used_mib": (pynvml.nvmlDeviceGetMemoryInfo, h),
            "clock_event_reasons": (pynvml.nvmlDeviceGetCurrentClocksEventReasons, h),
        }
        for series, (fn, *args) in reads.items():
            value = self._read(series, fn, *args)
            if value is None:
                continue
            if series == "power_w":
                value = value / 1000.0  # NVML reports mW
            elif series == "mem_used_mib":
                value = value.used / 2**20
            self._add(now, series, value)
        if gpm and self.gpm_supported:
            self._poll_gpm(now)

    def _poll_gpm(self, now_us: float) -> None:
        pynvml = self._nvml
        try:
            pynvml.nvmlGpmSampleGet(self._handle, self._gpm_cur)
            get = pynvml.c_nvmlGpmMetricsGet_t()
            get.version = pynvml.NVML_GPM_METRICS_GET_VERSION
            get.numMetrics = len(_GPM)
            get.sample1 = self._gpm_prev
            get.sample2 = self._gpm_cur
            for i, metric_id in enumerate(_GPM):
                get.metrics[i].metricId = metric_id
            pynvml.nvmlGpmMetricsGet(get)
        except Exception as exc:
            self.gpm_supported = False
            self.unsupported["gpm"] = f"GPM sampling failed: {_describe(exc)}"
            return
        for i, series in enumerate(_GPM.values()):
            self._add(now_us, series, get.metrics[i].value)
        self._gpm_prev, self._gpm_cur = self._gpm_cur, self._gpm_prev

    def _poll_buffers(self) -> None:
        pynvml = self._nvml
        if pynvml is None:
            return
        for kind, series in ((pynvml.NVML_GPU_UTILIZATION_SAMPLES, "util_pct"),
                             (pynvml.NVML_MEMORY_UTILIZATION_SAMPLES, "mem_util_pct")):
            if series in self.unsupported:
                continue
            try:
                value_type, samples = pynvml.nvmlDeviceGetSamples(self._handle, kind, self._last_seen[kind])
            except Exception as exc:
                if "not found" in _describe(exc).lower():  # no new samples since last seen
                    continue
                self.unsupported[series] = f"nvmlDeviceGetSamples: {_describe(exc)}"
                continue
            for s in samples:
                if s.timeStamp > self._last_seen[kind]:
                    self._add(float(s.timeStamp), series, _sample_value(pynvml, value_type, s))
                    self._last_seen[kind] = s.timeStamp

    # ---- results -----------------------------------------------------------------------------------
    def snapshot(self) -> list[tuple[float, str, float]]:
        """The samples so far, sorted by time (epoch µs)."""
        with self._lock:
            return sorted(self.samples)

    def status(self) -> dict[str, Any]:
        """run.json's ``nvml`` section: whether NVML was measured, and what was not."""
        doc: dict[str, Any] = {"available": self.available, "reason": self.reason}
        if self.available:
            doc.update(gpu=self.gpu_name, driver=self.driver, gpm=self.gpm_supported,
                       interval_s=self.interval_s, unsupported=dict(self.unsupported))
            if self.error:
                doc["error"] = self.error
        return doc


def nvml_csv(samples: list[tuple[float, str, float]]) -> str:
    """nvml.csv text: ``epoch_us,series,value`` (µs as NVML/host gave them, values in the series' unit)."""
    lines = ["epoch_us,series,value"]
    lines += [f"{t:.3f},{s},{v:.6g}" for t, s, v in samples]
    return "\n".join(lines) + "\n"


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


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


def _quiet(fn, *args) -> None:
    try:
        fn(*args)
    except Exception:
        pass


def nvml_metrics(sampler: NvmlSampler, start_us: float, end_us: float,
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
