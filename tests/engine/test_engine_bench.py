"""python -m reference_engine.bench: a workload shorter than the profiled window, and --compare of a folder
without both modes, end in a result or one line, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys


def _bench(*args, cwd):
    return subprocess.run([sys.executable, "-m", "reference_engine.bench", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_short_workload_reports_why_there_is_no_trace(tmp_path):
    out = tmp_path / "b"
    r = _bench("--model", "tiny", "--mode", "sync", "--num-requests", "3", "--prompt-len", "fixed:8",
               "--output-len", "fixed:3", "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "sync.json").read_text())
    assert doc["profiled_run"]["idle_pct"] is None
    assert "ended after" in doc["profiled_run"]["reason"]
    assert not list(out.glob("trace-*"))
    # --compare with one mode only: one line, exit 2
    r = _bench("--compare", str(out), cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "tokens-async.json" in r.stderr


def test_out_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    r = _bench("--model", "tiny", "--mode", "sync", "--out", str(f), cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "is a file" in r.stderr
