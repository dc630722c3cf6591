"""The run report's banner for an incomplete trace (metrics.json trace_integrity), from the real analyzer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from asyncbatch_prof.report import write_report

TRACES = Path(__file__).resolve().parents[1] / "data" / "traces"
ROOT = Path(__file__).resolve().parents[2]


def _run_folder(folder: Path, trace: Path) -> Path:
    folder.mkdir()
    shutil.copy(trace, folder / "trace.json.gz")
    (folder / "run.json").write_text(json.dumps({"status": "complete", "mode": "async", "engine": "vllm"}))
    return folder


def test_report_of_a_capture_trace_shows_the_banner(tmp_path):
    run = _run_folder(tmp_path / "capture", TRACES / "vllm-graph-capture-excerpt.json.gz")
    html = write_report(run, out=tmp_path / "r.html", plotly_src="plotly.min.js").read_text()
    assert 'data-metric="trace_complete" data-value="0" data-codes="capture"' in html
    assert "This trace is incomplete" in html and "stream capture" in html


def test_report_of_an_intact_trace_has_no_banner(tmp_path):
    run = _run_folder(tmp_path / "intact", ROOT / "reports" / "engine-h100" / "trace-async.json.gz")
    html = write_report(run, out=tmp_path / "r.html", plotly_src="plotly.min.js").read_text()
    assert "This trace is incomplete" not in html
