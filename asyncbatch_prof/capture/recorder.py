"""Record one workload on an engine under torch.profiler and NVML, and return it in memory.

The engine is anything with the small protocol of INTERFACES §1: ``warmup(num_steps=)``,
``generate(requests, on_step=)`` returning records, ``wall_s`` (s), ``output_tokens``, ``num_steps`` and
``start_epoch_ns``, ``describe()``, and optionally ``device``, ``notes`` and ``thread_note(all_threads)``.
The only file written here is the trace, by the profiler, through a temporary name and a rename.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from asyncbatch_prof.capture.device_ops import add_device_ops
from asyncbatch_prof.capture.environment import environment
from asyncbatch_prof.capture.nvml import NvmlSampler, nvml_metrics
from asyncbatch_prof.capture.profiler import PROFILER_LOG, ProfileWindow, StepProfiler, warm_up_profiler

StepCallback = Callable[[int], None]


@dataclass
class RecordSettings:
    """How to record: the profiled window, warm-ups, and what else to measure."""

    window: ProfileWindow = field(default_factory=ProfileWindow)
    engine_warmup_steps: int = 8
    warmup_runs: int = 1  # unprofiled passes over the whole workload before measuring (JIT, graphs, allocator)
    with_stack: bool = False
    measure_overhead: bool = False
    nvml: bool = True


@dataclass
class Capture:
    """What one recorded run holds, in memory: the engine's result, the trace's path (None when the run
    ended before the window), NVML samples and metrics, the environment, and the engine's description."""

    result: Any
    trace_path: Path | None
    nvml_samples: list[tuple[float, str, float]]
    nvml: tuple[dict, dict, dict]  # (metrics, absent, section) over the measured generate() call
    nvml_status: dict[str, Any]
    environment: dict[str, Any]
    profiler: dict[str, Any]
    model: dict[str, Any]
    notes: list[str]
    overhead: dict[str, Any] | None  # unprofiled tokens/s and wall s, when measured
    unprofiled_spans: list | None = None  # the unprofiled pass's step (start, end) s, when measured

    def profiled_steps(self, window: ProfileWindow) -> list[int] | None:
        """``[first, last]`` recorded engine steps of this run, None if the window was never reached."""
        return window.profiled_steps(self.result.num_steps)


def warm_up(engine, requests: list, settings: RecordSettings, on_step: StepCallback | None = None,
            phase: Callable[[str], None] = lambda _: None) -> None:
    """The unrecorded engine warm-up steps and the unprofiled warm-up passes over the workload."""
    phase("warming up")
    engine.warmup(num_steps=settings.engine_warmup_steps)
    for i in range(settings.warmup_runs):
        phase(f"warm-up pass {i + 1}/{settings.warmup_runs} over the workload (unrecorded)")
        engine.generate(requests, on_step=on_step)


def record(engine, requests: list, settings: RecordSettings, trace_path: Path,
           on_step: StepCallback | None = None, phase: Callable[[str], None] = lambda _: None,
           warmed: bool = False) -> Capture:
    """Warm ``engine`` up, optionally run the workload unprofiled, then run it under the profiler and NVML.

    ``trace_path`` receives the trace when the window was reached. The engine is not closed here.
    ``warmed``: the engine was warmed up by an earlier record() (a repeat), so its warm-ups are skipped."""
    notes = list(getattr(engine, "notes", []))
    if not warmed:
        warm_up(engine, requests, settings, on_step, phase)
    overhead = None
    if settings.measure_overhead:
        phase("unprofiled run (profiler overhead)")
        plain = engine.generate(requests, on_step=on_step)
        overhead = {"unprofiled_tokens_per_s": round(plain.output_tokens / plain.wall_s, 3),
                    "unprofiled_wall_s": round(plain.wall_s, 6)}
    sampler = NvmlSampler() if settings.nvml else NvmlSampler(reason="NVML sampling turned off")
    if settings.nvml:
        sampler.start()
    env = environment(driver=sampler.driver)
    phase("profiled run")
    cuda = str(getattr(engine, "device", "cpu")).startswith("cuda")
    warm_up_profiler(cuda, trace_path.with_name(PROFILER_LOG))
    profiler = StepProfiler(trace_path, settings.window, with_stack=settings.with_stack, cuda=cuda)
    try:
        with profiler:
            def step(i: int) -> None:
                profiler.step(i)
                if on_step is not None:
                    on_step(i)

            sampler.mark("generate_start")
            result = engine.generate(requests, on_step=step)
            sampler.mark("generate_end")
        if hasattr(engine, "thread_note"):  # the engine runs its loop on a thread of its own
            notes.append(engine.thread_note(profiler.all_threads))
    finally:
        sampler.stop()
    model = engine.describe()  # engines that size themselves on the workload know more now
    device_spans = getattr(result, "device_spans_ns", None)
    if profiler.trace_written and device_spans:  # a CPU device side: its steps are not in the recording
        added = add_device_ops(trace_path, device_spans)
        notes.append(f"a CPU run: its device is the engine's device {_device_kind(model)}; the trace holds its "
                     f"{added} steps of the window as cpu_device_op rows (docs/metrics.md)")
    start_us = sampler.marks["generate_start"]["epoch_us"]
    end_us = sampler.marks["generate_end"]["epoch_us"]
    return Capture(
        result=result, trace_path=trace_path if profiler.trace_written else None,
        nvml_samples=sampler.snapshot(), nvml=nvml_metrics(sampler, start_us, end_us, result.output_tokens),
        nvml_status=sampler.status(), environment=env, profiler=profiler.describe(),
        model=model,
        notes=notes, overhead=overhead, unprofiled_spans=plain.step_spans_s if settings.measure_overhead else None)


def _device_kind(model: dict) -> str:
    """What runs a CPU engine's device work apart from its host thread (``model``: its ``describe()``), in words."""
    return "process (a forked child)" if model.get("cpu_worker_process") else "thread (a worker)"


def window_step_overhead(spans: list, unprofiled_spans: list | None, steps: list[int] | None) -> dict[str, Any]:
    """The profiled window's steps against the same steps of the unprofiled pass (``--measure-overhead``), from
    each pass's step (start, end) times: ``{"window_step_overhead_pct": 100 × (median over the steps of profiled
    / unprofiled wall time − 1), "window_steps_compared": n}``, or ``{"window_step_overhead_reason": why not}``.
    Step ``k`` holds the same batch in both passes when they scheduled alike (as many steps). One pair of
    passes: benchmarks/overhead.py gives an interval, comparing blocks of steps within passes."""
    if steps is None:
        return {"window_step_overhead_reason": "no profiled window"}
    if not spans or not unprofiled_spans:
        return {"window_step_overhead_reason": "the engine does not report its step times"}
    if len(spans) != len(unprofiled_spans):
        return {"window_step_overhead_reason": f"the passes scheduled differently ({len(unprofiled_spans)} steps "
                                               f"unprofiled, {len(spans)} profiled)"}
    ratios = [(spans[k][1] - spans[k][0]) / (unprofiled_spans[k][1] - unprofiled_spans[k][0])
              for k in range(steps[0], min(steps[1] + 1, len(spans)))
              if unprofiled_spans[k][1] > unprofiled_spans[k][0]]
    if not ratios:
        return {"window_step_overhead_reason": "no step of the window in both passes"}
    return {"window_step_overhead_pct": round(100 * (statistics.median(ratios) - 1), 3),
            "window_steps_compared": len(ratios)}
