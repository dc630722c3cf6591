"""Carry out a plan of runs in the terminal: progress, failures as one line, the summary, the comparison."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rich.console import Console

from asyncbatch_prof import runfolder as rf
from asyncbatch_prof.cli.console import StepProgress, print_summary
from asyncbatch_prof.errors import AbprofError
from asyncbatch_prof.pipeline import compare_outcomes
from asyncbatch_prof.pipeline.plan import RunPlan, RunSpec
from asyncbatch_prof.pipeline.runner import RunOutcome, fail_reason, run_one


def execute(plan: RunPlan, console: Console | None = None, err: Console | None = None) -> int:
    """Run the plan; returns the exit code (0 done, 1 a run failed, 2 bad input, 130 interrupted)."""
    console = console or Console()
    err = err or Console(stderr=True)
    for note in plan.notes:
        err.print(f"abprof: {note}", highlight=False, markup=False)
    outcomes: list[RunOutcome] = []
    separate = plan.runs and plan.runs[0][1].engine == "transformers" and len(plan.runs) > 1
    for label, spec, run_dir in plan.runs:
        outcome = _run_child(spec, run_dir, err) if separate else _run_here(label, spec, run_dir, err)
        if isinstance(outcome, int):
            return outcome
        outcomes.append(outcome)
        console.print(f"{label}: {run_dir}", highlight=False, markup=False)
        rank_set = outcome.metrics.get("rank_set")
        if rank_set and rank_set.get("merged", True):  # --tp N on GPUs: the ranks, as abprof analyze shows them
            from asyncbatch_prof.cli.ranks import print_rank_set

            print_rank_set(console, outcome.metrics)
    print_summary(console, [label for label, _, _ in plan.runs], [o.metrics for o in outcomes])
    if plan.compare_path is not None:
        where = compare_outcomes(outcomes, plan.compare_path)
        console.print(f"comparison: {plan.compare_path}{where}", highlight=False, markup=False)
        from asyncbatch_prof.report.compare import tokens_comparison

        console.print(tokens_comparison([o.view for o in outcomes])["line"], highlight=False, markup=False)
    return 0


def _run_here(label: str, spec: RunSpec, run_dir: Path, err: Console) -> RunOutcome | int:
    try:
        with StepProgress(err, f"{label} ({spec.engine})") as progress:
            return run_one(spec, run_dir, on_step=progress.on_step, on_phase=progress.phase)
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
