"""Legacy Kineto traces (torch 1.8/1.9: categories Operator, Runtime, Kernel, Memcpy, Memset, GPU rows on
"stream N" string tids) are read fully: Runtime rows are the launches, joined to GPU rows by correlation.

The committed excerpt is 300 ms of Kineto's resnet50 sample (tests/data/traces/make_legacy_excerpt.py says
how it was cut). On the whole sample HTA finds 96 % of the idle time host-bound (issue 15); abprof, reading
the Runtime launches, finds 38.40 of 39.43 % idle host-bound (97.4 %) there, and 97.8 % on the excerpt;
before, it ignored the Runtime rows and found 0 %.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from asyncbatch_prof.analysis import analyze
from asyncbatch_prof.analysis.loader import CPU_OP, GPU_CATS, RUNTIME, load_trace

EXCERPT = Path(__file__).resolve().parents[1] / "data" / "traces" / "kineto-resnet50-legacy-excerpt.json.gz"


def test_runtime_rows_are_launches_joined_to_gpu_rows():
    ev = load_trace(EXCERPT)
    runtime = ev.cat == RUNTIME
    assert runtime.sum() > 1000 and (ev.cat == CPU_OP).sum() > 1000  # Runtime and Operator rows are kept
    gpu = np.isin(ev.cat, GPU_CATS)
    gpu_corr = ev.correlation[gpu]
    assert (gpu_corr >= 0).all()
    # nearly every GPU row has its launch (a few at the window's start were launched before it)
    assert np.isin(gpu_corr, ev.correlation[runtime]).mean() > 0.99
    names = {ev.names[i] for i in np.unique(ev.name[runtime])}
    assert {"cudaLaunchKernel", "cudaMemcpyAsync"} <= names


def test_host_bound_idle_is_comparable_to_hta():
    ta = analyze(EXCERPT)
    m = ta.doc["metrics"]
    idle, host = m["gpu_idle_pct"]["kernel"], m["host_bound_pct"]["kernel"]
    assert idle > 10 and host / idle > 0.9  # HTA: 96 % of the idle time host-bound on the whole sample
    parts = sum(m[k]["kernel"] for k in ("host_bound_pct", "launch_latency_pct", "dependency_pct"))
    assert parts == pytest.approx(idle, abs=1e-9)
    engine = ta.doc["trace"]["engine_thread"]
    assert engine["chosen_by"] == "launches" and engine["pid"] == 25738
    assert ta.doc["launches"]["count"] > 1000
