"""Carry out a plan of runs in the terminal: progress, failures as one line, the summary, the comparison."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from asyncbatch_prof import runfolder as rf
from asyncbatch_prof.capture.console import StepProgress, print_summary
from asyncbatch_prof.capture.options import RunPlan
from asyncbatch_prof.capture.runner import RunSpec, fail_reason, run_capture
from asyncbatch_prof.errors import AbprofError


def execute(plan: RunPlan, console: Console | None = None, err: Console | None = None) -> int:
    """Run the plan; returns the exit code (0 done, 1 a run failed, 2 bad input, 130 interrupted)."""
    console = console or Console()
    err = err or Console(stderr=True)
    for note in plan.notes:
        err.print(f"abprof: {note}", highlight=False, markup=False)
    docs: list[dict[str, Any]] = []
    separate = plan.runs and plan.runs[0][1].engine == "transformers" and len(plan.runs) > 1
    for label, spec, run_dir in plan.runs:
        code = _run_child(spec, run_dir, err) if separate else _run_here(label, spec, run_dir, err)
        if code:
            return code
        docs.append(rf.load_metrics(run_dir))
        console.print(f"{label}: {run_dir}", highlight=False, markup=False)
    print_summary(console, [label for label, _, _ in plan.runs], docs)
    if plan.compare_path is not None:
        where = write_compare([d for _, _, d in plan.runs], plan.compare_path)
        console.print(f"comparison: {plan.compare_path}{where}", highlight=False, markup=False)
    return 0


def _run_here(label: str, spec: RunSpec, run_dir: Path, err: Console) -> int:
    try:
        with StepProgress(err, f"{label} ({spec.engine})") as progress:
            run_capture(spec, run_dir, on_step=progress.on_step, on_phase=progress.phase)
    except KeyboardInterrupt:
        err.print(f"abprof: interrupted; {run_dir} is marked INCOMPLETE", highlight=False, markup=False)
        return 130
    except AbprofError as exc:
        err.print(f"abprof: error: {exc}", highlight=False, markup=False)
        return exc.exit_code
    except Exception as exc:  # the folder holds the reason and the traceback; the terminal gets one line
        err.print(f"abprof: error: run failed ({fail_reason(exc)}); {run_dir} is marked INCOMPLETE, "
                  f"see its run.json", highlight=False, markup=False)
        return 1
    return 0


def _run_child(spec: RunSpec, run_dir: Path, err: Console) -> int:
    """One mode in its own process (transformers' KV cache takes most of the GPU; two would not fit)."""
    err.print(f"abprof: running {spec.mode} in its own process: {' '.join(spec.command)}", highlight=False,
              markup=False)
    proc = subprocess.run([sys.executable, "-m", "asyncbatch_prof", *spec.command[1:]], check=False)
    return proc.returncode


def write_compare(run_dirs: list[Path], out_path: Path) -> str:
    """Write the comparison page; returns '' or a note saying the plain fallback was written and why."""
    try:
        from asyncbatch_prof.report import write_comparison

        write_comparison(run_dirs, out_path)
        return ""
    except AbprofError:
        raise
    except Exception as exc:
        from asyncbatch_prof.capture.plain_report import plain_comparison

        reason = f"write_comparison unavailable: {type(exc).__name__}: {exc}"
        rf.atomic_write_text(out_path, plain_comparison(run_dirs, reason))
        return f" (plain fallback: {reason})"
