"""Fixtures for the gate tests: metrics.json documents and run folders built in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def metrics_doc(idle=5.0, tokens_per_s=1000.0, overlap=95.0, throttled=False, absent=None, **extra):
    """A metrics.json document in the contract's shape (windowed shares per window)."""
    metrics = {
        "gpu_idle_pct": {"step": idle, "kernel": max(idle - 1.0, 0.0)},
        "host_bound_pct": {"step": idle * 0.8, "kernel": idle * 0.7},
        "overlap_pct": {"step": overlap},
        "tokens_per_s": tokens_per_s,
        "ttft_ms_p50": 40.0,
        "preemptions": 0,
        "clock_throttled": throttled,
        **extra,
    }
    absent = dict(absent or {})
    for name in absent:
        metrics.pop(name, None)
    if throttled is None:
        metrics.pop("clock_throttled")
        absent["clock_throttled"] = "NVML not available"
    return {"schema_version": 1, "tool": {"name": "abprof", "version": "0.1.0"}, "metrics": metrics, "absent": absent}


@pytest.fixture
def run_dir(tmp_path):
    """``run_dir("head", idle=7)`` writes a complete run folder and returns its path."""
    counter = {"n": 0}

    def make(name=None, *, complete=True, **doc_args) -> Path:
        counter["n"] += 1
        folder = tmp_path / (name or f"run{counter['n']}")
        folder.mkdir()
        (folder / "metrics.json").write_text(json.dumps(metrics_doc(**doc_args)))
        (folder / "run.json").write_text(json.dumps({"status": "complete" if complete else "incomplete"}))
        if not complete:
            (folder / "INCOMPLETE").write_text("killed by the test")
        return folder

    return make


@pytest.fixture
def metrics_file(tmp_path):
    """``metrics_file(idle=7)`` writes a bare metrics.json and returns its path."""
    counter = {"n": 0}

    def make(**doc_args) -> Path:
        counter["n"] += 1
        path = tmp_path / f"metrics{counter['n']}.json"
        path.write_text(json.dumps(metrics_doc(**doc_args)))
        return path

    return make


@pytest.fixture
def gate_cli(cli, tmp_path, monkeypatch):
    """``gate_cli(args...)``: ``abprof gate`` run in an empty folder (no abprof.toml picked up)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)

    def invoke(*args):
        return cli("gate", *args)

    return invoke
