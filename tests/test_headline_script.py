"""benchmarks/headline.py on the CPU: tables and issue #7's goals from saved rows (--tables-only), failed rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "headline.py"


def row(workload, engine, mode, **values):
    return {"workload": workload, "engine": engine, "mode": mode, **values}


def run_tables(tmp_path, rows):
    (tmp_path / "headline.json").write_text(json.dumps(rows))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--tables-only"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return (tmp_path / "headline.md").read_text()


def test_goals_from_rows(tmp_path):
    rows = [
        row("standard", "reference", "sync", tokens_per_s=1000.0, **{"gpu_idle_pct (step)": 30.0},
            window_ms_per_step=10.0, unprofiled_tokens_per_s=1100.0),
        row("standard", "reference", "async", tokens_per_s=1300.0, **{"gpu_idle_pct (step)": 2.0},
            window_ms_per_step=7.2, unprofiled_tokens_per_s=1500.0),
        row("standard", "transformers", "async", tokens_per_s=100.0),
        row("small-batch", "reference", "sync", tokens_per_s=500.0, **{"gpu_idle_pct (step)": 20.0},
            window_ms_per_step=4.0),
        row("small-batch", "reference", "async", tokens_per_s=520.0, **{"gpu_idle_pct (step)": 5.0},
            window_ms_per_step=3.9),
        row("large-batch", "transformers", "sync", error="timeout"),
    ]
    md = run_tables(tmp_path, rows)
    goals = {line.split("|")[1].strip(): line for line in md.split("## Goals")[1].splitlines() if line.startswith("| ")}
    # standard: 2/30 = 0.0667 <= 0.1; window 10/7.2 = 1.389 vs predicted 0.98/0.70 = 1.4 -> 0.992; 1300/100 = 13
    assert "0.0667 (met)" in goals["standard"] and "1.39 / 1.4 = 0.992 (met)" in goals["standard"]
    assert "13 (met)" in goals["standard"]
    # small batch: 5/20 = 0.25 not met; window 4/3.9 = 1.026 vs 0.95/0.8 = 1.1875 -> 0.864 not met; no transformers
    assert "0.25 (**not met**)" in goals["small-batch"] and "0.864 (**not met**)" in goals["small-batch"]
    assert goals["small-batch"].rstrip().endswith("— (—) |")
    assert "large-batch" not in goals  # no reference rows there: nothing to check
    assert "| large-batch | transformers | sync | failed: timeout | — |" in md
    csv_header = (tmp_path / "headline.csv").read_text().splitlines()[0]
    assert csv_header.startswith("workload,engine,mode,tokens_per_s") and "error" in csv_header


def test_tables_only_without_rows_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--tables-only"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [f"headline: error: no rows in {tmp_path / 'headline.json'}"]


def test_committed_h100_table_is_what_its_rows_give(tmp_path):
    """reports/h100/headline.md is headline.py's rendering of reports/h100/headline.json, nothing edited by hand."""
    reports = SCRIPT.parents[1] / "reports" / "h100"
    rows = json.loads((reports / "headline.json").read_text())
    assert run_tables(tmp_path, rows) == (reports / "headline.md").read_text()
