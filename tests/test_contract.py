"""The metric contract module: names, windows and lookups in metrics.json documents."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from asyncbatch_prof.analysis.contract import METRICS, UnknownMetricError, lookup, parse_name

CONTRACT = Path(__file__).resolve().parents[2] / "shared" / "docs" / "metrics.md"


@pytest.mark.skipif(not CONTRACT.exists(), reason="shared/docs/metrics.md not beside the checkout")
def test_every_contract_name_is_defined():
    text = CONTRACT.read_text()
    names_section = text.split("## Names", 1)[1].split("##", 1)[0]
    names = set(re.findall(r"`([a-z0-9_]+)`", names_section))
    # "ttft_ms_p50 / _p90 / _p99" abbreviates the other percentiles
    names |= {f"{base}_ms_{p}" for base in ("ttft", "itl", "e2e") for p in ("p50", "p90", "p99")}
    names = {n for n in names if not n.startswith("_")} - {"step", "kernel", "metrics"}
    assert names <= set(METRICS), names - set(METRICS)


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
