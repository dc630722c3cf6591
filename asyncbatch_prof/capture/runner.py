"""One profiled run of a workload into a run folder, written so that it never looks complete by accident.

Order: the folder gets ``INCOMPLETE`` (and run.json with ``"status": "incomplete"``) first; the
engine is built and warmed up; optionally the workload runs once unprofiled (profiler overhead);
then it runs under torch.profiler and NVML; the trace is analyzed and metrics.json, requests.csv,
nvml.csv and report.html are written; only then does run.json say complete and ``INCOMPLETE`` go.
Ctrl-C, out-of-memory or any exception leaves ``INCOMPLETE`` holding the reason.
"""

from __future__ import annotations

import datetime as _dt
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from asyncbatch_prof import runfolder as rf
from asyncbatch_prof.capture.environment import environment
from asyncbatch_prof.capture.metrics_doc import build_metrics_doc
from asyncbatch_prof.capture.nvml import NvmlSampler, nvml_csv, nvml_metrics
from asyncbatch_prof.capture.profiler import ProfileWindow, StepProfiler, warm_up_profiler
from asyncbatch_prof.capture.serving import requests_csv
from asyncbatch_prof.errors import AbprofError

ENGINES = ("reference", "transformers")


@dataclass
class RunSpec:
    """Everything one run needs; ``engine_config`` and ``workload`` are the engine's own config fields."""

    mode: str = "sync"
    engine: str = "reference"
    engine_config: dict[str, Any] = field(default_factory=dict)
    workload: dict[str, Any] = field(default_factory=dict)
    window: ProfileWindow = field(default_factory=ProfileWindow)
    engine_warmup_steps: int = 8
    warmup_runs: int = 1  # unprofiled passes over the whole workload before measuring (JIT, graphs, allocator)
    with_stack: bool = False
    measure_overhead: bool = False
    nvml: bool = True
    command: list[str] = field(default_factory=list)  # an abprof run command that repeats this run
    argv: list[str] = field(default_factory=list)  # the command line as typed
    notes: list[str] = field(default_factory=list)


@dataclass
class RunOutcome:
    """What a finished run left: its folder, metrics.json document and run.json document."""

    run_dir: Path
    metrics: dict[str, Any]
    run: dict[str, Any]


StepCallback = Callable[[int], None]


def now_iso() -> str:
    """Current UTC time, ISO 8601 with seconds."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def prepare_folder(run_dir: Path) -> Path:
    """Create ``run_dir`` (it must not exist or be empty) and mark it incomplete before anything runs."""
    run_dir = Path(run_dir)
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise AbprofError(f"output folder {run_dir} already exists and is not empty; choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    rf.atomic_write_text(run_dir / rf.INCOMPLETE, "running: the run has not finished\n")
    return run_dir


def fail_reason(exc: BaseException) -> str:
    """One line saying why a run stopped (Ctrl-C, out of memory, or the exception)."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (Ctrl-C) before the run finished"
    text = (str(exc) or "").strip().splitlines()
    message = text[0] if text else ""
    if type(exc).__name__ == "OutOfMemoryError" or "out of memory" in message.lower():
        return f"out of memory: {message}"
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def run_capture(spec: RunSpec, run_dir: Path, on_step: StepCallback | None = None,
                on_phase: Callable[[str], None] | None = None) -> RunOutcome:
    """Run ``spec`` into the new folder ``run_dir``; on failure leave it INCOMPLETE with the reason and re-raise."""
    run_dir = prepare_folder(run_dir)
    run_doc: dict[str, Any] = {
        "status": "incomplete", "reason": "running", "mode": spec.mode, "engine": spec.engine,
        "command": list(spec.command), "argv": list(spec.argv), "config": dict(spec.engine_config), "workload": dict(spec.workload),
        "seed": spec.workload.get("seed", 0), "environment": None, "started_at": now_iso(), "finished_at": None,
        "profile_window": asdict(spec.window), "profiled_steps": None, "nvml": None, "notes": list(spec.notes),
    }
    rf.atomic_write_json(run_dir / rf.RUN_JSON, run_doc)
    try:
        outcome = _run(spec, run_dir, run_doc, on_step, on_phase or (lambda _: None))
    except BaseException as exc:
        reason = fail_reason(exc)
        run_doc.update(status="incomplete", reason=reason, finished_at=now_iso(),
                       traceback=traceback.format_exc(limit=20))
        try:
            rf.atomic_write_json(run_dir / rf.RUN_JSON, _jsonable(run_doc))
        finally:
            rf.atomic_write_text(run_dir / rf.INCOMPLETE, reason + "\n")
        raise
    return outcome


def _run(spec: RunSpec, run_dir: Path, run_doc: dict, on_step: StepCallback | None,
         phase: Callable[[str], None]) -> RunOutcome:
    from asyncbatch_prof.capture.engines import build_engine

    phase("building the engine")
    engine, requests = build_engine(spec)
    try:
        run_doc["model"] = engine.describe()
        run_doc["notes"] += list(getattr(engine, "notes", []))
        phase("warming up")
        engine.warmup(num_steps=spec.engine_warmup_steps)
        for i in range(spec.warmup_runs):
            phase(f"warm-up pass {i + 1}/{spec.warmup_runs} over the workload (unrecorded)")
            engine.generate(requests, on_step=on_step)
        overhead = None
        if spec.measure_overhead:
            phase("unprofiled run (profiler overhead)")
            plain = engine.generate(requests, on_step=on_step)
            overhead = {"unprofiled_tokens_per_s": round(plain.output_tokens / plain.wall_s, 3),
                        "unprofiled_wall_s": round(plain.wall_s, 6)}
        sampler = NvmlSampler() if spec.nvml else NvmlSampler(reason="NVML sampling turned off")
        if spec.nvml:
            sampler.start()
        run_doc["environment"] = environment(driver=sampler.driver)
        phase("profiled run")
        cuda = str(getattr(engine, "device", "cpu")).startswith("cuda")
        warm_up_profiler(cuda)
        profiler = StepProfiler(run_dir / rf.TRACE, spec.window, with_stack=spec.with_stack, cuda=cuda)
        try:
            with profiler:
                def step(i: int) -> None:
                    profiler.step(i)
                    if on_step is not None:
                        on_step(i)

                sampler.mark("generate_start")
                result = engine.generate(requests, on_step=step)
                sampler.mark("generate_end")
            run_doc["model"] = engine.describe()  # engines that size themselves on the workload know more now
            if hasattr(engine, "thread_note"):  # the engine runs its loop on a thread of its own
                run_doc["notes"].append(engine.thread_note(profiler.all_threads))
        finally:
            sampler.stop()
    finally:
        engine.close()
    phase("analyzing")
    return _finish(spec, run_dir, run_doc, result, sampler, profiler, overhead)


def _finish(spec, run_dir, run_doc, result, sampler, profiler, overhead) -> RunOutcome:
    start_us = sampler.marks["generate_start"]["epoch_us"]
    end_us = sampler.marks["generate_end"]["epoch_us"]
    rf.atomic_write_text(run_dir / rf.REQUESTS_CSV, requests_csv(result.records))
    rf.atomic_write_text(run_dir / rf.NVML_CSV, nvml_csv(sampler.snapshot()))
    nvml = nvml_metrics(sampler, start_us, end_us, result.output_tokens)
    profiled = spec.window.profiled_steps(result.num_steps)
    run_doc.update(profiled_steps=profiled, nvml=sampler.status(), num_steps=result.num_steps,
                   profiler=profiler.describe(),
                   generate_start_epoch_ns=result.start_epoch_ns, wall_s=round(result.wall_s, 6))
    if overhead is not None:
        profiled_tps = result.output_tokens / result.wall_s
        overhead.update(profiled_tokens_per_s=round(profiled_tps, 3), profiled_wall_s=round(result.wall_s, 6),
                        overhead_pct=round(100 * (1 - profiled_tps / overhead["unprofiled_tokens_per_s"]), 3),
                        profiled_steps=profiled)
    doc, analysis = build_metrics_doc(run_dir / rf.TRACE if profiler.trace_written else None, result, nvml,
                                      run_doc, overhead, spec.window)
    rf.atomic_write_json(run_dir / rf.METRICS_JSON, _jsonable(doc))
    from asyncbatch_prof.capture.plain_report import write_run_report

    run_doc.update(status="complete", reason=None, finished_at=now_iso())
    run_doc["report"] = write_run_report(run_dir, _jsonable(run_doc), analysis)
    rf.atomic_write_json(run_dir / rf.RUN_JSON, _jsonable(run_doc))
    (run_dir / rf.INCOMPLETE).unlink()
    return RunOutcome(run_dir, doc, run_doc)


def _jsonable(value: Any) -> Any:
    """Replace NaN/inf (which JSON cannot hold) with None, recursively; other values as they are."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def timestamp() -> str:
    """A folder-name timestamp, local time: ``20261124-031500``."""
    return time.strftime("%Y%m%d-%H%M%S")
