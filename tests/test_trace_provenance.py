"""Every committed test trace says where it comes from: its name appears in the README.md of its folder."""

from __future__ import annotations

from pathlib import Path

import pytest

TRACES = Path(__file__).resolve().parent / "data" / "traces"


@pytest.mark.parametrize("trace", sorted(TRACES.rglob("*.json*")), ids=lambda p: str(p.relative_to(TRACES)))
def test_committed_trace_has_a_provenance_line(trace):
    readme = trace.parent / "README.md"
    assert readme.exists() and f"`{trace.name}`" in readme.read_text(), f"{trace}: no line in {readme}"
    assert trace.stat().st_size < 1 << 20, "committed test traces stay well under 1 MB"
