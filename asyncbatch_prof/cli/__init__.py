"""The ``abprof`` command line: thin commands over plain functions that tests can call too.

Each command lives in its own module and imports its heavy dependencies (torch, pandas, plotly)
inside the command, so that ``abprof --help`` answers at once.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from asyncbatch_prof import __version__
from asyncbatch_prof.cli import analyze as _analyze
from asyncbatch_prof.cli import gate as _gate
from asyncbatch_prof.cli import report as _report
from asyncbatch_prof.cli import run as _run

app = typer.Typer(
    name="abprof",
    help="Profile LLM continuous batching and explain why the GPU is idle.",
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"abprof {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Show the version and exit."),
    ] = None,
) -> None:
    """abprof: why is my GPU idle?"""


app.command("run")(_run.run)
app.command("analyze")(_analyze.analyze)
app.command("report")(_report.report)
app.command("compare")(_report.compare)
app.command("gate")(_gate.gate)


def main() -> None:
    """Console entry point."""
    app()
