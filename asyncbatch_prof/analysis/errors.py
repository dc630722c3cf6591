"""The analysis' error type (a leaf: only errors.py of ours is imported)."""

from __future__ import annotations

from asyncbatch_prof.errors import AbprofError


class TraceError(AbprofError):
    """A trace that cannot be analyzed (unreadable, not a trace, no GPU activity); the CLI exits 2."""
