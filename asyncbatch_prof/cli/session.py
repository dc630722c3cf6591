"""Carry out a plan of runs in the terminal: progress, failures as one line, the summary, the comparison."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rich.console import Console

from asyncbatch_prof import runfolder as rf
from asyncbatch_prof.capture.recorder import warm_up
from asyncbatch_prof.cli.console import StepProgress, print_summary
from asyncbatch_prof.errors import AbprofError
from asyncbatch_prof.analysis.repeats import spread_warnings
from asyncbatch_prof.pipeline import compare_outcomes
from asyncbatch_prof.pipeline.repeats import fail_folder, merge_folder, start_folder
from asyncbatch_prof.pipeline.plan import RunPlan, RunSpec
from asyncbatch_prof.pipeline.outcome import RunOutcome
from asyncbatch_prof.pipeline.runner import EngineSession, build_session, fail_reason, run_one


def execute(plan: RunPlan, console: Console | None = None, err: Console | None = None) -> int:
    """Run the plan; returns the exit code (0 done, 1 a run failed, 2 bad input, 130 interrupted)."""
    console = console or Console()
    err = err or Console(stderr=True)
    for note in plan.notes:
        err.print(f"abprof: {note}", highlight=False, markup=False)
    outcomes: list[RunOutcome] = []
    separate = bool(plan.runs) and plan.runs[0][1].engine == "transformers" and len(plan.runs) > 1
    if plan.repeats > 1:
        merged = _execute_repeats(plan, separate, err)
        if isinstance(merged, int):
            return merged
        outcomes = merged
    for i, (label, spec, run_dir) in enumerate(plan.runs):
        if plan.repeats == 1:
            outcome = _run_child(spec, run_dir, err) if separate else _run_here(label, spec, run_dir, err)
            if isinstance(outcome, int):
                return outcome
            outcomes.append(outcome)
        outcome = outcomes[i]
        console.print(f"{label}: {run_dir}", highlight=False, markup=False)
        rank_set = outcome.metrics.get("rank_set")
        if rank_set and rank_set.get("merged", True):  # --tp N on GPUs: the ranks, as abprof analyze shows them
            from asyncbatch_prof.cli.ranks import print_rank_set

            print_rank_set(console, outcome.metrics)
    print_summary(console, [label for label, _, _ in plan.runs], [o.metrics for o in outcomes])
    for (label, _, _), outcome in zip(plan.runs, outcomes):
        for line in spread_warnings(outcome.metrics):
            err.print(f"abprof: warning: {label}: {line}", highlight=False, markup=False)
    if plan.compare_path is not None:
        where = compare_outcomes(outcomes, plan.compare_path)
        console.print(f"comparison: {plan.compare_path}{where}", highlight=False, markup=False)
        from asyncbatch_prof.report.compare import tokens_comparison

        console.print(tokens_comparison([o.view for o in outcomes])["line"], highlight=False, markup=False)
    return 0


def _execute_repeats(plan: RunPlan, separate: bool, err: Console) -> list[RunOutcome] | int:
    """Every measured pass in the plan's (alternating) order, then each mode's folder merged from its
    repeats. In this process one engine per mode is built and warmed up once and measured N times; with
    ``separate`` (transformers, both modes) every repeat runs in a process of its own."""
    reuse = ("one process per repeat (engine built and warmed up in each)" if separate else
             "one engine per mode, all built and warmed up once in this process before the first measured pass")
    done: dict[str, list[RunOutcome]] = {label: [] for label, _, _ in plan.runs}
    order: dict[str, list[int]] = {label: [] for label in done}
    sessions: dict[str, EngineSession] = {}
    for label, spec, run_dir in plan.runs:
        start_folder(spec, run_dir, plan.repeats)
    try:
        if not separate:  # every engine built and warm before the first measured pass, so all passes see one state
            for label, spec, run_dir in plan.runs:
                code = _prepare(label, spec, err, sessions)
                if code:
                    for _, _, mode_dir in plan.runs:
                        fail_folder(mode_dir, f"building or warming up the {label} engine failed (exit {code})")
                    return code
        for position, (label, k, spec, run_dir) in enumerate(plan.passes, 1):
            outcome = (_run_child(spec, run_dir, err) if separate else
                       _run_here(f"{label} r{k}/{plan.repeats}", spec, run_dir, err, sessions))
            if isinstance(outcome, int):
                for _, _, mode_dir in plan.runs:
                    fail_folder(mode_dir, f"repeat {run_dir.name} of {label} did not finish (exit {outcome})")
                return outcome
            done[label].append(outcome)
            order[label].append(position)
    finally:
        for engine_session in sessions.values():
            engine_session.close()
    try:
        return [merge_folder(spec, run_dir, done[label], order[label], reuse) for label, spec, run_dir in plan.runs]
    except Exception as exc:  # the repeats are written; only the merged folder is missing
        for _, _, mode_dir in plan.runs:
            fail_folder(mode_dir, f"merging the repeats failed: {fail_reason(exc)}")
        err.print(f"abprof: error: merging the repeats failed ({fail_reason(exc)})", highlight=False, markup=False)
        return 1


def _prepare(label: str, spec: RunSpec, err: Console, sessions: dict[str, EngineSession]) -> int:
    """Build and warm up the engine of ``spec``'s mode into ``sessions``; returns 0 or the exit code."""
    try:
        with StepProgress(err, f"{label} ({spec.engine})") as progress:
            session = sessions[spec.mode] = build_session(spec, progress.phase)
            warm_up(session.engine, session.requests, spec.settings, progress.on_step, progress.phase)
            session.warmed = True
        return 0
    except KeyboardInterrupt:
        err.print("abprof: interrupted while warming up", highlight=False, markup=False)
        return 130
    except Exception as exc:
        err.print(f"abprof: error: {label} engine: {fail_reason(exc)}", highlight=False, markup=False)
        return getattr(exc, "exit_code", 1)


def _run_here(label: str, spec: RunSpec, run_dir: Path, err: Console,
              sessions: dict[str, EngineSession] | None = None) -> RunOutcome | int:
    """One run in this process; with ``sessions`` the mode's engine is taken from there (built the first
    time) and left open for the next repeat."""
    try:
        with StepProgress(err, f"{label} ({spec.engine})") as progress:
            session = None
            if sessions is not None:
                if spec.mode not in sessions:
                    sessions[spec.mode] = build_session(spec, progress.phase)
                session = sessions[spec.mode]
            return run_one(spec, run_dir, on_step=progress.on_step, on_phase=progress.phase, session=session)
    except KeyboardInterrupt:
        err.print(f"abprof: interrupted; {run_dir} is marked INCOMPLETE", highlight=False, markup=False)
        return 130
    except AbprofError as exc:
        marked = f"; {run_dir} is marked INCOMPLETE" if (run_dir / rf.INCOMPLETE).exists() else ""
        err.print(f"abprof: error: {exc}{marked}", highlight=False, markup=False)
        return exc.exit_code
    except Exception as exc:  # the folder holds the reason and the traceback; the terminal gets one line
        err.print(f"abprof: error: run failed ({fail_reason(exc)}); {run_dir} is marked INCOMPLETE, "
                  f"see its run.json", highlight=False, markup=False)
        return 1


def _run_child(spec: RunSpec, run_dir: Path, err: Console) -> RunOutcome | int:
    """One mode in its own process (transformers' KV cache takes most of the GPU; two would not fit). Its
    results come back through its run folder, the only way another process can hand them over."""
    err.print(f"abprof: running {spec.mode} in its own process: {' '.join(spec.command)}", highlight=False,
              markup=False)
    proc = subprocess.run([sys.executable, "-m", "asyncbatch_prof", *spec.command[1:]], check=False)
    if proc.returncode:
        return proc.returncode
    from asyncbatch_prof.report.run_view import load_run

    view = load_run(run_dir)
    return RunOutcome(run_dir, view.doc, view.run, view)
