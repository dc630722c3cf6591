"""Run folders for report tests: a sync run, an async run of the same workload, and one of another workload."""

from __future__ import annotations

import pytest
from report_synthetic import METRICS, write_run


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """Three run folders; re-analysis is answered with each trace's synthetic analysis, so these tests
    exercise the report, not the analyzer (test_report_real_analysis.py covers the two together)."""
    faster = dict(METRICS, gpu_idle_pct={"step": 1.8, "kernel": 1.5}, tokens_per_s=1617.3,
                  overlap_pct={"step": 95.0}, sync_wait_pct={"step": 0.4})
    made = {
        "sync": write_run(tmp_path / "both" / "sync", mode="sync"),
        "async": write_run(tmp_path / "both" / "async", mode="async", metrics=faster, seed=1),
        "other": write_run(tmp_path / "other", workload={"num_requests": 16, "prompt_len": "uniform:16:64"}),
    }
    by_trace = {str(d / "trace.json.gz"): a for d, a in made.values()}
    monkeypatch.setattr("asyncbatch_prof.report.run_view._analyze", lambda trace, doc: by_trace[str(trace)])
    return {name: d for name, (d, _) in made.items()}
