"""torch.profiler over a window of engine steps, driven by the engine's ``on_step`` callback.

The cycle is torch's ``schedule(wait, warmup, active, repeat=1)``: ``wait`` engine steps run
unprofiled, ``warmup`` steps run with the profiler on but discarded (CUPTI start-up is not
measured), then ``active`` steps are recorded and the trace is written gzipped, in torch's own
format (it opens in Perfetto). ``prof.step()`` is called after every engine step, so engine step
``k`` is recorded exactly when ``wait + warmup <= k < wait + warmup + active``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from asyncbatch_prof.errors import AbprofError


PROFILER_LOG = "profiler.log"  # next to the trace: what Kineto writes to stderr when it starts and stops
# torch's once-per-process note that a schedule's cycle drops the previous cycle's events: one cycle here.
_CYCLE_WARNING = "Warning: Profiler clears events at the end of each cycle"


@contextlib.contextmanager
def profiler_quiet(log_path: Path | None):
    """Around a profiler start or stop: file descriptor 2 goes to ``log_path`` (appended; os.devnull when
    None), so that Kineto's C++ lines (``SyncActivityProfilerHandler.cpp ... profiler_start``), which no
    environment variable silences, do not land in the middle of the progress line; and torch's
    cycle warning is ignored."""
    sys.stderr.flush()
    saved = os.dup(2)
    target = os.open(str(log_path) if log_path is not None else os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                     0o644)
    os.dup2(target, 2)
    os.close(target)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_CYCLE_WARNING, category=UserWarning)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@dataclass(frozen=True, slots=True)
class ProfileWindow:
    """Which engine steps to profile (counts of steps)."""

    wait: int = 0  # steps before the profiler starts
    warmup: int = 1  # profiler-on steps that are discarded (>= 1)
    active: int = 64  # steps recorded

    def __post_init__(self) -> None:
        if self.wait < 0 or self.warmup < 1 or self.active < 1:
            raise AbprofError(f"bad profile window: wait={self.wait} (>= 0), warmup={self.warmup} (>= 1), "
                              f"active={self.active} (>= 1)")

    @property
    def first(self) -> int:
        """Index of the first recorded engine step."""
        return self.wait + self.warmup

    def profiled_steps(self, num_steps: int) -> list[int] | None:
        """``[first, last]`` recorded engine step indices for a run of ``num_steps`` steps, None if none."""
        last = min(self.first + self.active, num_steps) - 1
        return [self.first, last] if last >= self.first else None

    def describe(self) -> str:
        """Human-readable window, e.g. ``steps 8–71 (after 2 warm-up steps)``."""
        return f"steps {self.first}–{self.first + self.active - 1} (after {self.warmup} profiler warm-up steps)"


def profiler_settings(cuda: bool, cpu: bool = True, all_threads: bool = True, with_stack: bool = False) -> dict:
    """``torch.profiler.profile`` keyword arguments (no schedule) for abprof's recording: CPU ops and
    annotations (``cpu``; of every thread with ``all_threads``) and CUDA activity (``cuda``).
    ``experimental_config`` is left out when torch cannot record every thread (then the dict's
    ``all_threads`` key, popped by the caller, says False)."""
    from torch.profiler import ProfilerActivity

    activities = ([ProfilerActivity.CPU] if cpu or not cuda else []) + ([ProfilerActivity.CUDA] if cuda else [])
    kwargs = {"activities": activities, "with_stack": with_stack, "record_shapes": False, "profile_memory": False}
    config = _all_threads_config() if cpu and all_threads else None
    if config is not None:
        kwargs["experimental_config"] = config
    kwargs["all_threads"] = config is not None
    return kwargs


def _all_threads_config():
    """CPU ops are recorded per thread by default: only the thread that started the profiler. Engines
    that launch from a worker or background thread need every thread (torch >= 2.8 can)."""
    try:
        from torch._C._profiler import _ExperimentalConfig
    except ImportError:
        return None
    try:  # trace_only: no Python event objects built when the window closes (inside an engine step)
        return _ExperimentalConfig(profile_all_threads=True, trace_only=True)
    except TypeError:
        try:
            return _ExperimentalConfig(profile_all_threads=True)
        except TypeError:
            return None


class StepProfiler:
    """Context manager: ``with StepProfiler(path, window) as p: engine.generate(..., on_step=p.step)``.

    After exit, ``trace_written`` says whether a trace reached ``trace_path`` (written through a
    temporary name and a rename, so a half-written trace never has the final name).
    """

    def __init__(self, trace_path: Path, window: ProfileWindow, with_stack: bool = False,
                 cuda: bool | None = None, cpu: bool = True, all_threads: bool = True):
        """``cpu``: record CPU ops and annotations; ``all_threads``: of every thread, not only this one's."""
        self.trace_path = Path(trace_path)
        self.window = window
        self.with_stack = with_stack
        self.cuda = cuda
        self.cpu = cpu
        self.want_all_threads = all_threads
        self.steps_seen = 0
        self.trace_written = False
        self._prof = None
        self._ready = False
        self.all_threads = False  # whether CPU ops of every thread are recorded (set on enter)
        self.log_path = self.trace_path.with_name(PROFILER_LOG)

    def _on_trace_ready(self, prof) -> None:
        # Exporting here would run inside the engine's step (hundreds of ms inside the measured
        # wall time); the trace stays in the profiler and is exported after the run instead.
        self._ready = True

    def _export(self, prof) -> None:
        tmp = self.trace_path.with_name(f".{self.trace_path.name}.part.json.gz")
        prof.export_chrome_trace(str(tmp))  # a .gz suffix makes torch gzip it
        os.replace(tmp, self.trace_path)
        self.trace_written = True

    def __enter__(self) -> "StepProfiler":
        import torch
        from torch.profiler import profile, schedule

        cuda = torch.cuda.is_available() if self.cuda is None else self.cuda
        kwargs = profiler_settings(cuda, self.cpu, self.want_all_threads, self.with_stack)
        self.all_threads = kwargs.pop("all_threads")
        w = self.window
        self._prof = profile(schedule=schedule(wait=w.wait, warmup=w.warmup, active=w.active, repeat=1),
                             on_trace_ready=self._on_trace_ready, **kwargs)
        with profiler_quiet(self.log_path):
            self._prof.__enter__()
        return self

    def describe(self) -> dict:
        """run.json's ``profiler`` section: the schedule and what the trace can hold."""
        return {"wait": self.window.wait, "warmup": self.window.warmup, "active": self.window.active,
                "with_stack": self.with_stack, "all_threads": self.all_threads, "trace_written": self.trace_written,
                "cpu_ops_recorded_for": "every thread" if self.all_threads else "the thread that started the profiler"}

    def step(self, step_index: int | None = None) -> None:
        """The engine's ``on_step``: advance the profiler schedule by one engine step."""
        self.steps_seen += 1
        prof = self._prof
        if prof is None:
            return
        if prof.schedule(prof.step_num) == prof.schedule(prof.step_num + 1):
            prof.step()  # no start or stop in this step: nothing to keep off the terminal
            return
        with profiler_quiet(self.log_path):
            prof.step()

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._prof is not None:
            prof, self._prof = self._prof, None
            with profiler_quiet(self.log_path):
                prof.__exit__(exc_type, exc, tb)
            # a failed run's partial trace is not worth the export time
            if exc_type is None and self._ready:
                self._export(prof)
            if self.log_path.exists() and not self.log_path.stat().st_size:
                self.log_path.unlink()


def warm_up_profiler(cuda: bool, log_path: Path | None = None) -> None:
    """Start and stop the profiler once on a trivial op, so its one-time start-up cost (CUPTI
    initialisation: 0.05-0.09 s on the H200, reports/h200/overhead*.md) is paid before the measured run,
    not inside it.
    Kineto's stderr lines go to ``log_path`` (None: discarded).

    CUPTI stays attached from here on: Kineto detaches it only with ``TEARDOWN_CUPTI=1``, with which on torch
    2.11 + CUDA 13.0 the CPU+CUDA sessions that followed a CUDA-only one recorded no GPU activity
    (benchmarks/graph_cupti.py, H200), while two consecutive windows of this module's StepProfiler both
    recorded all of it (benchmarks/cupti_lingering.py); abprof leaves it unset until that is understood.
    Attached, it makes every CUDA graph launch cost more on the host with nothing recording
    (reports/h200/overhead.md measures how much)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    device = "cuda" if cuda else "cpu"
    with profiler_quiet(log_path), profile(activities=activities):
        x = torch.ones(8, device=device)
        (x + x).sum().item()
