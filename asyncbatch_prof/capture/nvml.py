"""NVML sampler in a child process: utilization history, clocks, throttle reasons, power, energy, GPM.

The polling runs in a child process (``nvml_child``) so that it never competes with the engine's loop for
the GIL; when the child cannot start, a thread in this process samples instead, and ``status()`` says which
one ran (``sampler``: ``process`` or ``thread``) and why the child did not.

Utilization comes from the driver's ring buffer (``nvmlDeviceGetSamples`` with the last-seen
timestamp), so polling once every ``buffer_poll_s`` loses nothing; the point reads (clocks, power,
energy, memory, clock-event reasons, GPM) are taken every ``interval_s``. Every sample is
``(epoch_us, series, value)`` with NVML's own CPU timestamp where it gives one, else the host's
``time.time_ns()`` at the read, so samples line up with the trace through ``baseTimeNanoseconds``.

No NVML, no GPU, or a call the GPU does not support: the sampler says why in ``reason`` (or in
``unsupported``), and the run goes on without those series.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from asyncbatch_prof.capture.nvml_window import (THROTTLE_REASONS, POWER_CAP_REASON, _clock_events,  # noqa: F401
                                                  nvml_metrics, reason_names)

SERIES = ("util_pct", "mem_util_pct", "sm_clock_mhz", "mem_clock_mhz", "power_w", "energy_mj", "mem_used_mib",
          "clock_event_reasons", "gpm_sm_active_pct", "gpm_sm_occupancy_pct", "gpm_tensor_active_pct",
          "gpm_dram_bw_pct")

# GPM metric ids (nvmlGpmMetricId_t) → our series.
_GPM = {2: "gpm_sm_active_pct", 3: "gpm_sm_occupancy_pct", 5: "gpm_tensor_active_pct", 10: "gpm_dram_bw_pct"}


# Names the pynvml stand-in (a module name, or a .py file): the seam by which tests give the child process a
# fake NVML, since a child cannot see the parent's monkeypatches.
PYNVML_ENV = "ABPROF_PYNVML"


def _import_pynvml():
    name = os.environ.get(PYNVML_ENV) or "pynvml"  # nvidia-ml-py
    if not name.endswith(".py"):
        return importlib.import_module(name)
    spec = importlib.util.spec_from_file_location("abprof_pynvml_standin", name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sample_value(pynvml, value_type: int, sample) -> float:
    """Read the union ``nvmlValue_t`` by the type NVML says it holds."""
    field_name = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal"}.get(value_type, "uiVal")
    return float(getattr(sample.sampleValue, field_name))


@dataclass
class NvmlSampler:
    """NVML sampler for one GPU (``device_index``); use as a context manager or start()/stop().

    ``process=True`` samples in a child process (the thread here is the fallback); ``interval_s`` and
    ``buffer_poll_s`` are in seconds.
    """

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
    process: bool = True
    sampler: str | None = None  # "process" or "thread", once started
    fallback: str | None = None  # why the child process did not sample

    def __post_init__(self) -> None:
        self._link = None
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
        """Start sampling (a child process, else a thread); on any NVML failure record ``reason`` and stay
        unavailable."""
        if self.process:
            from asyncbatch_prof.capture.nvml_child import ChildLink

            try:
                self._link, hello = ChildLink.start(self.device_index, self.interval_s, self.buffer_poll_s)
            except Exception as exc:  # no child: sample on a thread here, and say why
                self.fallback = f"NVML child process did not start: {_describe(exc)}"
            else:
                self.sampler = "process"
                for key in ("available", "reason", "gpu_name", "driver", "gpm_supported", "unsupported"):
                    setattr(self, key, hello[key])
                if not self.available:
                    self._link.close()
                    self._link = None
                return self
        self.sampler = "thread"
        if self.open():
            self._thread = threading.Thread(target=self._loop, name="abprof-nvml", daemon=True)
            self._thread.start()
        return self

    def open(self) -> bool:
        """Open NVML and the GPU in this process (no sampling yet); False with ``reason`` when there is none."""
        try:
            pynvml = _import_pynvml()
            pynvml.nvmlInit()
        except Exception as exc:  # no library, no driver, no GPU: a reason, never a crash
            self.reason = f"NVML not available: {_describe(exc)}"
            return False
        try:
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(self.device_index)
            self.gpu_name = _text(pynvml.nvmlDeviceGetName(self._handle))
            self.driver = _text(pynvml.nvmlSystemGetDriverVersion())
        except Exception as exc:
            self.reason = f"NVML has no GPU {self.device_index}: {_describe(exc)}"
            _quiet(pynvml.nvmlShutdown)
            return False
        self._nvml = pynvml
        self.available = True
        self._init_gpm()
        now_us = time.time_ns() / 1e3
        self._last_seen = {1: int(now_us), 2: int(now_us)}  # only samples from now on
        return True

    def stop(self) -> None:
        """Stop sampling, take the last readings and close NVML (the child's samples come back here)."""
        if self._link is not None:
            link, self._link = self._link, None
            self._take_child_results(link.stop())
            return
        if not self.available or self._nvml is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self.close()

    def close(self) -> None:
        """The last utilization readings, then free GPM samples and shut NVML down (this process)."""
        if self._nvml is None:
            return
        self._poll_buffers()
        for sample in (self._gpm_prev, self._gpm_cur):
            if sample is not None:
                _quiet(self._nvml.nvmlGpmSampleFree, sample)
        _quiet(self._nvml.nvmlShutdown)
        self._nvml = None

    def _take_child_results(self, results: dict | None) -> None:
        if results is None:
            self.error = "NVML child process ended without returning its samples"
            return
        with self._lock:
            self.samples = [tuple(sample) for sample in results["samples"]]
        for label, entry in results["marks"].items():
            if label in self.marks and "energy_mj" in entry:
                self.marks[label]["energy_mj"] = entry["energy_mj"]
        self.unsupported.update(results["unsupported"])
        self.gpm_supported = results["gpm_supported"]
        self.error = results["error"] or self.error

    def __enter__(self) -> "NvmlSampler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def mark(self, label: str) -> None:
        """Record the time (epoch µs) and the total energy counter (mJ) now, from the calling thread.

        The point series are read here too, so even a run shorter than ``interval_s`` has samples at its edges.
        """
        entry = {"epoch_us": time.time_ns() / 1e3}
        if self._link is not None:  # the child reads the energy counter when the mark arrives
            self._link.send({"mark": label, "epoch_us": entry["epoch_us"]})
        elif self.available and self._nvml is not None:
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
        if self.sampler:
            doc["sampler"] = self.sampler
        if self.fallback:
            doc["sampler_fallback"] = self.fallback
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
