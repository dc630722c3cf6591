"""`abprof report` and `abprof compare` (being built: see their issue)."""

from __future__ import annotations

from asyncbatch_prof.cli.errors import fail


def report() -> None:
    """Not available yet in this build."""
    raise fail("'abprof report' is not available in this build yet")


def compare() -> None:
    """Not available yet in this build."""
    raise fail("'abprof compare' is not available in this build yet")
