"""A fake pynvml: a GPU that answers like an H100, with GPM or without.

Loaded in the test process (the thread sampler) and, through ``ABPROF_PYNVML`` naming this file, in the NVML
child process, which cannot see monkeypatches. In a child its settings come from ``ABPROF_FAKE_NVML``
(JSON: ``gpm``, ``reasons``, ``absent``, ``log``: a file that gets one line per nvmlInit/nvmlShutdown).
"""

from __future__ import annotations

import json
import os
import time
import types

class NVMLError(Exception):
    pass


class _Union:
    def __init__(self, value):
        self.uiVal = value


class FakeNvml(types.SimpleNamespace):
    """Enough of pynvml for the sampler: a GPU whose util buffer fills at 50 ms steps."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM = 1, 2
    NVML_GPU_UTILIZATION_SAMPLES, NVML_MEMORY_UTILIZATION_SAMPLES = 1, 2
    NVML_GPM_METRICS_GET_VERSION = 1

    def __init__(self, gpm=True, reasons=0x1, energy_step_mj=1000.0, log=None):
        super().__init__()
        self.gpm, self.reasons, self.energy_step, self.log = gpm, reasons, energy_step_mj, log
        self.energy = 5_000_000.0
        self.last_seen_args = []
        self.shutdown = False

    def nvmlInit(self):
        self._log(f"init {os.getpid()}")

    def nvmlShutdown(self):
        self.shutdown = True
        self._log(f"shutdown {os.getpid()}")

    def _log(self, line):
        if self.log:
            with open(self.log, "a") as f:
                f.write(line + "\n")

    def nvmlDeviceGetHandleByIndex(self, i):
        return "h0"

    def nvmlDeviceGetName(self, h):
        return b"Fake H100"

    def nvmlSystemGetDriverVersion(self):
        return "580.1"

    def nvmlDeviceGetClockInfo(self, h, kind):
        return 1980 if kind == 1 else 2619

    def nvmlDeviceGetPowerUsage(self, h):
        return 350_000  # mW

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        self.energy += self.energy_step
        return self.energy

    def nvmlDeviceGetMemoryInfo(self, h):
        return types.SimpleNamespace(used=2 * 2**30)

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        return self.reasons

    def nvmlDeviceGetSamples(self, h, kind, last_seen):
        self.last_seen_args.append((kind, last_seen))
        now = int(time.time_ns() / 1e3)
        stamps = [t for t in range(now - 400_000, now, 50_000) if t > last_seen]
        if not stamps:
            raise NVMLError("Not Found")
        value = 70 if kind == 1 else 20
        return 1, [types.SimpleNamespace(timeStamp=t, sampleValue=_Union(value)) for t in stamps]

    def nvmlGpmQueryDeviceSupport(self, h):
        return types.SimpleNamespace(isSupportedDevice=int(self.gpm))

    def nvmlGpmSampleAlloc(self):
        return object()

    def nvmlGpmSampleGet(self, h, sample):
        return sample

    def nvmlGpmSampleFree(self, sample):
        pass

    def c_nvmlGpmMetricsGet_t(self):
        return types.SimpleNamespace(metrics=[types.SimpleNamespace(metricId=0, value=0.0) for _ in range(8)])

    def nvmlGpmMetricsGet(self, get):
        for m in get.metrics[:get.numMetrics]:
            m.value = {2: 40.0, 3: 12.0, 5: 5.0, 10: 30.0}[m.metricId]
        return get


def _from_env():
    config = json.loads(os.environ.get("ABPROF_FAKE_NVML") or "{}")
    if config.pop("absent", False):
        raise ImportError("No module named 'pynvml'")
    return FakeNvml(**config)


if __name__ == "abprof_pynvml_standin":  # loaded as the child's pynvml: be the module
    _FAKE = _from_env()

    def __getattr__(name):
        return getattr(_FAKE, name)
