"""The ``abprof`` command line: thin commands over plain functions that tests can call too.

Each command lives in its own module and imports its heavy dependencies (torch, pandas, plotly)
inside the command, so that ``abprof --help`` answers at once.
"""

from __future__ import annotations

import sys

from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from asyncbatch_prof import __version__
from asyncbatch_prof.cli import analyze as _analyze
from asyncbatch_prof.cli import gate as _gate
from asyncbatch_prof.cli import report as _report
from asyncbatch_prof.cli import run as _run



class _OneLineErrors(TyperGroup):
    """Usage errors (unknown option, missing argument, bad value) as one line on stderr, exit 2.

    Click's standalone mode prints usage, a hint and a boxed panel; a CI log wants one greppable line.
    """

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        try:  # typer >= 0.24 vendors click as typer._click; older typer uses click itself
            from typer._click import exceptions as click
        except ImportError:  # pragma: no cover - depends on the installed typer
            import click

        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click.NoArgsIsHelpError as exc:  # the help has been printed
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            from asyncbatch_prof.textsafe import printable

            ctx = getattr(exc, "ctx", None)
            where = ctx.command_path if ctx is not None else "abprof"
            hint = f" (see '{where} -h')" if isinstance(exc, click.UsageError) else ""
            typer.echo(f"abprof: error: {printable(exc.format_message())}{hint}", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("abprof: aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
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
