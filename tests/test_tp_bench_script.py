"""benchmarks/tp_h200x2.py --dry-run: TP=1 and TP=2 on the tiny model on the CPU (gloo), one abprof run per
row, the table and tp.json with every row's tokens equal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tp_bench_dry_run_writes_table_and_identical_tokens(tmp_path):
    out = tmp_path / "h200x2"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tp_h200x2.py"), "--dry-run", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "tp.json").read_text())
    assert [(r["tp"], r["mode"]) for r in doc["rows"]][:4] == [(1, "sync"), (1, "async"), (2, "sync"), (2, "async")]
    for row in doc["rows"]:
        assert row["tokens_per_s"] > 0 and len(row["tokens_sha256"]) == 64
        for key in ("gpu_idle_pct", "comm_pct", "comm_overlap_pct"):
            assert key in row  # None on the CPU (absent with its reason in row["absent"])
    assert doc["tokens_identical"] is True
    assert "identical in every row" in (out / "tp.md").read_text()


def test_tp_bench_refuses_a_used_out(tmp_path):
    (tmp_path / "x").write_text("")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tp_h200x2.py"), "--dry-run", "--out",
                           str(tmp_path)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not empty" in proc.stderr
