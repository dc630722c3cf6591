"""`abprof run` (being built: see its issue)."""

from __future__ import annotations

from asyncbatch_prof.cli.errors import fail


def run() -> None:
    """Not available yet in this build."""
    raise fail("'abprof run' is not available in this build yet")
