"""Expected errors end at the CLI edge as one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

import typer

from asyncbatch_prof.errors import AbprofError


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``abprof: error: message`` on stderr and return the Exit to raise."""
    from asyncbatch_prof.textsafe import printable

    one_line = printable(message).replace("\n", "\\n").replace("\t", " ")
    typer.echo(f"abprof: error: {one_line}", err=True)
    return typer.Exit(code=code)


@contextmanager
def cli_errors() -> Iterator[None]:
    """Turn AbprofError (and the usual bad-input errors) into one line and an exit code."""
    try:
        yield
    except AbprofError as exc:
        raise fail(str(exc), exc.exit_code) from None
    except OSError as exc:  # missing, a directory, no permission, a name too long, no space left, ...
        if exc.strerror is None:
            raise
        where = exc.filename if exc.filename is not None else ""
        raise fail(f"{exc.strerror}: {where}" if where else exc.strerror, 2) from None
    except RecursionError:
        raise fail("input nested too deeply to read", 2) from None
    except KeyboardInterrupt:
        typer.echo("abprof: interrupted", err=True)
        sys.exit(130)
