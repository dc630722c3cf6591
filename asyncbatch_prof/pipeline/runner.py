"""One run into a run folder: engine → capture → analysis → files → report, from what is in memory.

Order: the folder gets ``INCOMPLETE`` (and run.json with ``"status": "incomplete"``) first; the engine
is built and the capture records the workload (the profiler writes the trace); the trace is parsed
once; requests.csv, nvml.csv, metrics.json and report.html are written from memory, each atomically;
only then does run.json say complete and ``INCOMPLETE`` go. Ctrl-C, out-of-memory or any exception
leaves ``INCOMPLETE`` holding the reason; a killed process leaves it as it was (``running``).
"""

from __future__ import annotations

import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from asyncbatch_prof import __version__
from asyncbatch_prof import runfolder as rf
from asyncbatch_prof.analysis.run_metrics import build_metrics_doc
from asyncbatch_prof.capture.nvml import nvml_csv
from asyncbatch_prof.capture.recorder import Capture, StepCallback, record, window_step_overhead
from asyncbatch_prof.engines import tokens_digest
from asyncbatch_prof.errors import AbprofError
from asyncbatch_prof.pipeline.outcome import RunOutcome, check_rejected, jsonable, now_iso
from asyncbatch_prof.pipeline.plan import RunSpec
from asyncbatch_prof.report.run_view import view_from_memory


def fail_reason(exc: BaseException) -> str:
    """One line saying why a run stopped (Ctrl-C, out of memory, or the exception)."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (Ctrl-C) before the run finished"
    text = (str(exc) or "").strip().splitlines()
    message = text[0] if text else ""
    if type(exc).__name__ == "OutOfMemoryError" or "out of memory" in message.lower():
        return f"out of memory: {message}"
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


@dataclass
class EngineSession:
    """A built engine kept across repeats of one mode: built and warmed up once, before the first measured
    pass, and closed by its owner."""

    engine: Any
    requests: list
    warmed: bool = False

    def close(self) -> None:
        """Close the engine (frees its KV cache and threads)."""
        self.engine.close()


def run_one(spec: RunSpec, run_dir: Path, on_step: StepCallback | None = None,
            on_phase: Callable[[str], None] | None = None, session: EngineSession | None = None) -> RunOutcome:
    """Run ``spec`` into the new folder ``run_dir``; on failure leave it INCOMPLETE with the reason and re-raise.
    With ``session`` the run uses that engine (warming it up only the first time) and leaves it open."""
    run_dir = rf.prepare_folder(run_dir)
    run_doc: dict[str, Any] = {
        "status": "incomplete", "reason": "running", "mode": str(spec.mode), "engine": str(spec.engine),
        "command": list(spec.command), "argv": list(spec.argv), "config": dict(spec.engine_config),
        "workload": dict(spec.workload), "seed": spec.workload.get("seed", 0), "environment": None,
        "started_at": now_iso(), "finished_at": None, "profile_window": asdict(spec.window), "profiled_steps": None,
        "nvml": None, "notes": list(spec.notes),
    }
    rf.atomic_write_json(run_dir / rf.RUN_JSON, run_doc)
    try:
        if spec.tp is not None:  # through the tensor-parallel launcher, --tp 1 included
            from asyncbatch_prof.pipeline.tp import run_tp_capture

            return run_tp_capture(spec, run_dir, run_doc, on_step, on_phase or (lambda _: None))
        return _run(spec, run_dir, run_doc, on_step, on_phase or (lambda _: None), session)
    except BaseException as exc:
        reason = fail_reason(exc)
        run_doc.update(status="incomplete", reason=reason, finished_at=now_iso(),
                       traceback=traceback.format_exc(limit=20))
        try:
            rf.atomic_write_json(run_dir / rf.RUN_JSON, jsonable(run_doc))
        finally:
            rf.atomic_write_text(run_dir / rf.INCOMPLETE, reason + "\n")
        raise


def _run(spec: RunSpec, run_dir: Path, run_doc: dict, on_step: StepCallback | None,
         phase: Callable[[str], None], session: EngineSession | None = None) -> RunOutcome:
    own = session is None
    if own:
        session = build_session(spec, phase)
    try:
        run_doc["model"] = session.engine.describe()
        capture = record(session.engine, session.requests, spec.settings, run_dir / rf.TRACE, on_step, phase,
                         warmed=session.warmed)
        session.warmed = True
    finally:
        if own:
            session.close()
    check_evidence(capture, spec)
    phase("analyzing")
    return _finish(spec, run_dir, run_doc, capture)


def build_session(spec: RunSpec, phase: Callable[[str], None] = lambda _: None) -> EngineSession:
    """Build the engine of ``spec`` and its workload's requests (not yet warmed up)."""
    from asyncbatch_prof.engines import build_engine

    phase("building the engine")
    return EngineSession(*build_engine(spec.engine, spec.mode, spec.engine_config, spec.workload))


def check_evidence(capture: Capture, spec: RunSpec) -> None:
    """Fail the run (exit 1, the folder left INCOMPLETE with the reason) when it measured nothing: every
    request rejected, or the workload ended before the profiled window so there is no trace."""
    check_rejected(capture.result.records)
    if capture.trace_path is None:
        raise AbprofError(f"no trace: the workload ended after {capture.result.num_steps} engine steps, before "
                          f"the profiled window ({spec.window.describe()}); choose an earlier --profile-steps "
                          "window or more requests", exit_code=1)


def _finish(spec: RunSpec, run_dir: Path, run_doc: dict, capture: Capture) -> RunOutcome:
    result = capture.result
    profiled = capture.profiled_steps(spec.window)
    run_doc["notes"] += capture.notes
    run_doc.update(model=capture.model, environment=capture.environment, profiled_steps=profiled,
                   nvml=capture.nvml_status, num_steps=result.num_steps, profiler=capture.profiler,
                   generate_start_epoch_ns=result.start_epoch_ns, wall_s=round(result.wall_s, 6),
                   tokens_sha256=tokens_digest(result.records))
    overhead = capture.overhead
    if overhead is not None:
        profiled_tps = result.output_tokens / result.wall_s
        overhead.update(profiled_tokens_per_s=round(profiled_tps, 3), profiled_wall_s=round(result.wall_s, 6),
                        overhead_pct=round(100 * (1 - profiled_tps / overhead["unprofiled_tokens_per_s"]), 3),
                        profiled_steps=profiled,
                        **window_step_overhead(getattr(result, "step_spans_s", None) or [], capture.unprofiled_spans,
                                               profiled))
    from asyncbatch_prof.analysis import analyze

    analysis = analyze(capture.trace_path, tool_version=__version__)  # the one parse of this trace
    doc = jsonable(build_metrics_doc(analysis.doc, result, capture.nvml, run_doc, overhead))
    requests_text, nvml_text = rf.requests_csv(result.records), nvml_csv(capture.nvml_samples)
    rf.atomic_write_text(run_dir / rf.REQUESTS_CSV, requests_text)
    rf.atomic_write_text(run_dir / rf.NVML_CSV, nvml_text)
    rf.atomic_write_json(run_dir / rf.METRICS_JSON, doc)
    run_doc.update(status="complete", reason=None, finished_at=now_iso())
    view = view_from_memory(run_dir, jsonable(run_doc), doc, analysis, requests_text, nvml_text)
    from asyncbatch_prof.report.plain import write_run_report

    run_doc["report"] = write_run_report(view)
    run_doc = jsonable(run_doc)
    view.run = run_doc
    rf.mark_complete(run_dir, run_doc)
    return RunOutcome(run_dir, doc, run_doc, view)
