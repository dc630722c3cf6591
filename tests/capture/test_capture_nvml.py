"""NVML sampler against a fake pynvml: series, lastSeen handling, GPM, absent NVML, metrics over a window;
in the child process (the default) and on the fallback thread."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from asyncbatch_prof.capture.nvml import NvmlSampler, nvml_csv, nvml_metrics


def _sample(fake, seconds=0.35, process=True):
    sampler = NvmlSampler(interval_s=0.02, buffer_poll_s=0.05, process=process)
    sampler.start()
    sampler.mark("generate_start")
    time.sleep(seconds)
    sampler.mark("generate_end")
    sampler.stop()
    return sampler


@pytest.mark.parametrize("process", [True, False])
def test_capture_nvml_series_and_metrics(fake_nvml, process):
    fake = fake_nvml
    s = _sample(fake, process=process)
    assert s.available and s.gpm_supported and s.status()["sampler"] == ("process" if process else "thread")
    assert fake.shutdown is (not process)  # the child has its own fake; this one is the thread's
    series = {name for _, name, _ in s.snapshot()}
    assert {"util_pct", "mem_util_pct", "sm_clock_mhz", "mem_clock_mhz", "power_w", "energy_mj", "mem_used_mib",
            "clock_event_reasons", "gpm_sm_active_pct", "gpm_dram_bw_pct"} <= series
    # util samples are only those after start (lastSeen starts at now), never repeated
    util_times = [t for t, name, _ in s.snapshot() if name == "util_pct"]
    assert len(util_times) == len(set(util_times)) and util_times
    assert min(util_times) >= s.marks["generate_start"]["epoch_us"] - 1
    assert process or all(last > 0 for _, last in fake.last_seen_args)
    power = [v for _, name, v in s.snapshot() if name == "power_w"]
    assert set(power) == {350.0}  # mW → W
    start, end = s.marks["generate_start"]["epoch_us"], s.marks["generate_end"]["epoch_us"]
    metrics, absent, section = nvml_metrics(s, start, end, output_tokens=10)
    assert metrics["nvml_util_pct"] == 70 and metrics["sm_active_pct"] == 40
    energy_j = (s.marks["generate_end"]["energy_mj"] - s.marks["generate_start"]["energy_mj"]) / 1000
    assert energy_j > 0 and metrics["joules_per_token"] == pytest.approx(energy_j / 10)
    assert metrics["clock_throttled"] is False and not absent
    assert section["sm_clock_mhz"]["max"] == 1980


def test_capture_nvml_throttle_and_no_gpm(fake_nvml):
    s = _sample(fake_nvml.configure(gpm=False, reasons=0x1 | 0x4 | 0x40), seconds=0.2)
    metrics, absent, section = nvml_metrics(s, s.marks["generate_start"]["epoch_us"],
                                            s.marks["generate_end"]["epoch_us"], output_tokens=5)
    assert metrics["clock_throttled"] is True
    assert section["throttle_reasons"] == ["sw_power_cap", "hw_thermal"]
    assert "sm_active_pct" in absent and "GPM not supported" in absent["sm_active_pct"]
    assert not any(name.startswith("gpm") for _, name, _ in s.snapshot())


def test_capture_nvml_absent_library(no_nvml):
    s = NvmlSampler().start()
    s.mark("generate_start")
    s.mark("generate_end")
    s.stop()
    assert not s.available and "pynvml" in s.reason and s.status()["sampler"] == "process"
    metrics, absent, section = nvml_metrics(s, 0, 1, output_tokens=3)
    assert metrics == {} and set(absent) == {"nvml_util_pct", "sm_active_pct", "joules_per_token",
                                             "clock_throttled", "power_capped_pct", "sm_clock_mhz_mean"}
    assert section == {"available": False, "reason": s.reason}
    assert nvml_csv([]) == "epoch_us,series,value\n"


def test_capture_nvml_csv_long_format():
    text = nvml_csv([(1.5, "util_pct", 70.0), (2.0, "power_w", 350.25)])
    assert text.splitlines() == ["epoch_us,series,value", "1.500,util_pct,70", "2.000,power_w,350.25"]


# --- issue 15 item 3: sw_power_cap is the normal state at the power limit, not throttling ---------------


def _window_metrics(fake, reasons):
    s = _sample(fake.configure(gpm=False, reasons=reasons), seconds=0.2)
    return nvml_metrics(s, s.marks["generate_start"]["epoch_us"], s.marks["generate_end"]["epoch_us"],
                        output_tokens=5)


def test_capture_nvml_power_cap_alone_is_not_throttling(fake_nvml):
    metrics, absent, section = _window_metrics(fake_nvml, 0x4)
    assert metrics["clock_throttled"] is False
    assert metrics["power_capped_pct"] == 100.0
    assert metrics["sm_clock_mhz_mean"] == pytest.approx(section["sm_clock_mhz"]["mean"]) and 0 < metrics[
        "sm_clock_mhz_mean"] <= 1980
    assert section["throttle_reasons"] == ["sw_power_cap"]  # still recorded, by name


@pytest.mark.parametrize("bit, name", [(0x8, "hw_slowdown"), (0x20, "sw_thermal"), (0x40, "hw_thermal"),
                                       (0x80, "hw_power_brake")])
def test_capture_nvml_thermal_and_hardware_slowdown_throttle(fake_nvml, bit, name):
    metrics, _, section = _window_metrics(fake_nvml, bit)
    assert metrics["clock_throttled"] is True and metrics["power_capped_pct"] == 0.0
    assert section["throttle_reasons"] == [name]


@pytest.mark.parametrize("reasons", [0x0, 0x1, 0x10, 0x1 | 0x2 | 0x100])
def test_capture_nvml_benign_and_sync_boost_do_not_throttle(fake_nvml, reasons):
    metrics, _, _ = _window_metrics(fake_nvml, reasons)
    assert metrics["clock_throttled"] is False and metrics["power_capped_pct"] == 0.0


def test_capture_nvml_power_capped_share_of_samples():
    from asyncbatch_prof.capture.nvml import _clock_events

    metrics, absent = {}, {}
    seen = _clock_events([0x4, 0x0, 0x4 | 0x1, 0x0], metrics, absent, "unused")
    assert metrics == {"clock_throttled": False, "power_capped_pct": 50.0} and not absent and seen == ["sw_power_cap"]
    metrics, absent = {}, {}
    assert _clock_events(None, metrics, absent, "no samples") == []
    assert metrics == {} and absent == {"clock_throttled": "no samples", "power_capped_pct": "no samples"}


# --- issue 19 item 1: the sampler runs in a child process, not on a thread competing for the GIL --------


def test_capture_nvml_child_samples_and_shuts_nvml_down(fake_nvml, tmp_path):
    log = tmp_path / "nvml.log"
    fake_nvml.configure(log=str(log))
    s = _sample(fake_nvml, seconds=0.2)
    assert s.sampler == "process" and s.status()["sampler"] == "process" and "sampler_fallback" not in s.status()
    lines = log.read_text().split()
    pids = set(lines[1::2])
    assert lines[0::2] == ["init", "shutdown"] and len(pids) == 1 and pids != {str(os.getpid())}
    # the energy counter was read by the child when each mark arrived; the time is the parent's
    assert s.marks["generate_end"]["energy_mj"] > s.marks["generate_start"]["energy_mj"]
    assert not fake_nvml.last_seen_args  # the parent never called NVML


def test_capture_nvml_falls_back_to_a_thread_when_the_child_cannot_start(fake_nvml, monkeypatch):
    monkeypatch.setattr(sys, "executable", "/nonexistent/python3")
    s = _sample(fake_nvml, seconds=0.2)
    status = s.status()
    assert s.available and status["sampler"] == "thread" and "child process did not start" in status[
        "sampler_fallback"]
    assert fake_nvml.shutdown and {"util_pct", "power_w"} <= {name for _, name, _ in s.snapshot()}


_ORPHAN = """
import sys, time
from asyncbatch_prof.capture.nvml import NvmlSampler
s = NvmlSampler(interval_s=0.02).start()
print(s._link.pid, flush=True)
time.sleep(60)
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.split()[:2] == ["State:", "Z"] for line in f)
    except FileNotFoundError:
        return True


def test_capture_nvml_child_exits_when_its_parent_is_killed(fake_nvml, tmp_path):
    log = tmp_path / "nvml.log"
    fake_nvml.configure(log=str(log))
    parent = subprocess.Popen([sys.executable, "-c", _ORPHAN], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    child = int(parent.stdout.readline())
    assert not _gone(child)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(child)
    assert log.read_text().split()[0::2] == ["init", "shutdown"]  # it closed NVML on its way out
