"""`abprof analyze` of a trace never imports pandas or plotly: importing them costs more start-up than
parsing a small trace (issue 19: analyze within half of json.load's time). Only the report builds
DataFrames, when it reads them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRACES = ROOT / "tests" / "data" / "traces"
HEAVY = ("pandas", "plotly")


def _loaded_after(code: str, tmp_path: Path) -> list[str]:
    """Run ``code`` in a fresh interpreter; the heavy modules in sys.modules when it ends."""
    probe = code + f"\nimport sys, json\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_importing_the_analysis_and_analyzing_a_trace_import_no_pandas(tmp_path):
    code = ("import asyncbatch_prof.analysis as a\n"
            f"ta = a.analyze({str(TRACES / 'hta-simple_add.json.gz')!r})\n"
            "assert ta.doc['metrics'] and len(ta.tables['gpu_ops'])\n")
    assert _loaded_after(code, tmp_path) == []


def test_merging_a_rank_set_imports_no_pandas(tmp_path):
    """Matching collectives across ranks is numpy too (writing ranks.html is the report's, and may)."""
    code = ("from asyncbatch_prof.analysis.rankset import analyze_rank_set\n"
            f"rs = analyze_rank_set({str(TRACES / 'hta_ranks')!r}, jobs=1)\n"
            "assert rs.doc['collectives']['p2p_kernels']\n")
    assert _loaded_after(code, tmp_path) == []


def test_abprof_analyze_imports_no_pandas(tmp_path):
    """The command as typed: summary printed, metrics.json written."""
    code = ("import runpy, sys\n"
            f"sys.argv = ['abprof', 'analyze', {str(TRACES / 'hta-simple_add.json.gz')!r}, '--out', 'out']\n"
            "try:\n"
            "    runpy.run_module('asyncbatch_prof', run_name='__main__')\n"
            "except SystemExit as exc:\n"
            "    assert not exc.code, exc.code\n")
    assert _loaded_after(code, tmp_path) == []
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["schema_version"]


def test_the_frames_are_built_on_access(tmp_path):
    """The report's DataFrames are the analysis tables (same columns and rows), built once when first read."""
    code = ("import sys\n"
            "import asyncbatch_prof.analysis as a\n"
            f"ta = a.analyze({str(TRACES / 'hta-simple_add.json.gz')!r})\n"
            "assert 'pandas' not in sys.modules\n"
            "for name, table in ta.tables.items():\n"
            "    frame = getattr(ta, name)\n"
            "    assert getattr(ta, name) is frame, name\n"
            "    assert list(frame.columns) == list(table.columns) and len(frame) == len(table), name\n"
            "assert ta.gaps['duration_us'].tolist() == ta.tables['gaps']['duration_us'].tolist()\n")
    assert "pandas" in _loaded_after(code, tmp_path)
