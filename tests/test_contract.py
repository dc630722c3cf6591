"""The metric contract module: names, windows and lookups in metrics.json documents."""

from __future__ import annotations

from pathlib import Path

import pytest

from asyncbatch_prof.analysis.contract import METRICS, UnknownMetricError, lookup, parse_name

CONTRACT = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"


def _documented_rows() -> dict[str, tuple[str, bool, str]]:
    """The rows of docs/metrics.md's names table: name -> (unit, windowed, better)."""
    section = CONTRACT.read_text().split("## Names", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = (cells[1], cells[2] != "-", cells[3])
    return rows


def test_the_contract_document_is_in_the_repository():
    # not skipped anywhere: a clean clone must carry the contract its numbers follow
    assert CONTRACT.is_file(), "docs/metrics.md is missing"


def test_document_and_code_define_the_same_metrics():
    rows = _documented_rows()
    assert set(rows) == set(METRICS), (set(rows) ^ set(METRICS))
    for name, (unit, windowed, better) in rows.items():
        m = METRICS[name]
        assert (unit, windowed, better) == (m.unit, m.windowed, m.better), name


def test_lookup_prefers_step_window_and_reports_absent():
    doc = {"metrics": {"gpu_idle_pct": {"step": 20.0, "kernel": 18.5}, "tokens_per_s": 100},
           "absent": {"overlap_pct": "no annotations"}}
    assert lookup(doc, "gpu_idle_pct") == (20.0, None)
    assert lookup(doc, "gpu_idle_pct.kernel") == (18.5, None)
    assert lookup(doc, "tokens_per_s") == (100.0, None)
    assert lookup(doc, "overlap_pct") == (None, "no annotations")
    doc["metrics"]["gpu_idle_pct"] = {"kernel": 18.5}
    assert lookup(doc, "gpu_idle_pct") == (18.5, None)


@pytest.mark.parametrize("bad", ["gpu_idle", "tokens_per_s.step", "gpu_idle_pct.wall"])
def test_unknown_names_are_errors(bad):
    with pytest.raises(UnknownMetricError):
        parse_name(bad)
