"""`abprof analyze` (being built: see its issue)."""

from __future__ import annotations

from asyncbatch_prof.cli.errors import fail


def analyze() -> None:
    """Not available yet in this build."""
    raise fail("'abprof analyze' is not available in this build yet")
