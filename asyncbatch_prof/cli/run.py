"""`abprof run`: profile a workload on an engine (sync, async or both) and write run folders.

The command's options are not written out here: they are the fields of ``pipeline.options.RunOptions``
(declared once, with their help), turned into typer options by :func:`_parameters`.
"""

from __future__ import annotations

import inspect
import sys
import typing
from dataclasses import MISSING
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from asyncbatch_prof.cli.errors import cli_errors
from asyncbatch_prof.pipeline.options import RunOptions, cli_fields, flag_name


def _typed_command() -> list[str]:
    """The command line as typed, when abprof was started from a shell (not when a test invokes it)."""
    prog = Path(sys.argv[0]).name if sys.argv else ""
    return list(sys.argv) if prog in ("abprof", "__main__.py") else []


def _parameters() -> list[inspect.Parameter]:
    """One keyword-only typer option per declared field. An Enum field is read as its value's text (and
    checked by the plan, so a wrong value gets one line, not click's box), with the values as metavar."""
    hints = typing.get_type_hints(RunOptions)
    params = []
    for f in cli_fields():
        flag = f.metadata["cli"]
        kind = hints[f.name]
        metavar = flag.metavar
        default = f.default if f.default is not MISSING else None
        if isinstance(kind, type) and issubclass(kind, Enum):
            metavar = metavar or "|".join(m.value for m in kind)
            kind, default = str, default.value
        option = typer.Option(*(flag.names or (flag_name(f),)), help=flag.help, metavar=metavar,
                              show_default=flag.show_default, rich_help_panel=flag.panel)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=Annotated[kind, option]))
    return params


def run(**values) -> None:
    """Run a workload under torch.profiler and NVML, analyze it, and write a run folder.

    With no options: on CUDA the [bold]llama-1b[/] shape and the standard workload (256 requests, prompts
    uniform 128-1024, 256 output tokens, greedy), sync and async; without CUDA the [bold]tiny[/] preset on
    the CPU with a small workload.

    A folder holds trace.json.gz, nvml.csv, requests.csv, run.json, metrics.json and report.html;
    [cyan]--mode both[/] writes OUT/sync, OUT/async and OUT/compare.html; [cyan]--repeats N[/] measures
    each mode N times (alternating) into RUN/r1..rN, with the medians and their spread in RUN.
    """
    from asyncbatch_prof.pipeline.plan import plan_runs

    with cli_errors():
        plan = plan_runs(RunOptions(**values), command=_typed_command())
    from asyncbatch_prof.cli.session import execute

    code = execute(plan)
    if code:
        raise typer.Exit(code)


run.__signature__ = inspect.Signature(_parameters())  # type: ignore[attr-defined]
run.__annotations__ = {p.name: p.annotation for p in run.__signature__.parameters.values()}
