"""Helpers of the fuzz suite (a module of its own: every test folder has a conftest.py, so importing
from "conftest" would pick whichever one was imported first)."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

SCALE = 10 if os.environ.get("HYPOTHESIS_PROFILE") == "dev" else 1
DATA = Path(__file__).resolve().parents[1] / "data"
EXIT_CODES = {0, 1, 2, 3, 4}  # the documented ones; 1 only from the gate (regression)


def examples(n: int) -> int:
    """``n`` examples in CI, ``10 n`` with the dev profile."""
    return n * SCALE


@contextmanager
def scratch() -> Iterator[Path]:
    """A fresh folder per example (pytest's tmp_path is one per test, shared by all examples)."""
    with tempfile.TemporaryDirectory(prefix="abprof-fuzz-") as tmp:
        yield Path(tmp)


def invoke(*args):
    """``abprof ARGS`` in-process; returns typer's Result. Raises nothing: the result carries the exception."""
    from typer.testing import CliRunner

    from asyncbatch_prof.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def assert_no_traceback(result, allowed: set[int]) -> None:
    """The exit code is a documented one and no exception escaped (a traceback would exit 1)."""
    exc = result.exception
    assert exc is None or isinstance(exc, SystemExit), f"uncaught {type(exc).__name__}: {exc}\n{result.output}"
    assert result.exit_code in allowed, (result.exit_code, result.output[-2000:])
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        errors = [line for line in result.output.splitlines() if line.startswith("abprof: error:")]
        assert len(errors) == 1, result.output[-2000:]
