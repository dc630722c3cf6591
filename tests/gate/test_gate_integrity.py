"""`abprof gate` on runs whose trace is incomplete: the trace's metrics are invalid evidence (exit 4) unless
--allow-incomplete (or allow_incomplete in TOML) makes them a warning; metrics not from the trace stay valid."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from asyncbatch_prof.runfolder import atomic_write_json
from asyncbatch_prof.analysis import analyze

ROOT = Path(__file__).resolve().parents[2]
ENGINE_ASYNC = ROOT / "reports" / "engine-h100" / "trace-async.json.gz"


@pytest.fixture(scope="module")
def incomplete_metrics(tmp_path_factory) -> Path:
    """metrics.json of the reference engine's trace with its last 30% of GPU records lost."""
    folder = tmp_path_factory.mktemp("cut")
    with gzip.open(ENGINE_ASYNC, "rt") as f:
        doc = json.load(f)
    gpu = sorted((e for e in doc["traceEvents"] if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")),
                 key=lambda e: e["ts"])
    drop = {id(e) for e in gpu[int(len(gpu) * 0.7):]}
    doc["traceEvents"] = [e for e in doc["traceEvents"] if id(e) not in drop]
    with gzip.open(folder / "trace.json.gz", "wt") as f:
        json.dump(doc, f)
    ta = analyze(folder / "trace.json.gz")
    assert ta.doc["trace_integrity"]["verdict"] == "incomplete"
    return atomic_write_json(folder / "metrics.json", ta.doc)


def _checks(result) -> dict:
    return {c["name"]: c for c in json.loads(result.stdout)["checks"]}


def test_incomplete_trace_is_invalid_evidence(gate_cli, incomplete_metrics):
    r = gate_cli(incomplete_metrics, "--max", "gpu_idle_pct=99")
    assert r.exit_code == 4, r.output
    assert "gpu_tail_cut" in r.output and "incomplete" in r.output


def test_allow_incomplete_turns_it_into_a_warning(gate_cli, incomplete_metrics):
    r = gate_cli(incomplete_metrics, "--max", "gpu_idle_pct=99", "--allow-incomplete", "--json", "-")
    assert r.exit_code == 0, r.output
    check = _checks(r)["gpu_idle_pct max 99"]
    assert check["status"] == "warn" and "gpu_tail_cut" in check["note"]
    assert json.loads(r.stdout)["settings"]["allow_incomplete"] is True


def test_allow_incomplete_from_toml(gate_cli, incomplete_metrics, tmp_path):
    (tmp_path / "abprof.toml").write_text("[gate]\nallow_incomplete = true\n[gate.metrics.gpu_idle_pct]\nmax = 99\n")
    r = gate_cli(incomplete_metrics)
    assert r.exit_code == 0, r.output
    assert "allowed by --allow-incomplete" in r.output


def test_allow_incomplete_must_be_a_boolean(gate_cli, incomplete_metrics, tmp_path):
    (tmp_path / "abprof.toml").write_text("[gate]\nallow_incomplete = 1\n[gate.metrics.gpu_idle_pct]\nmax = 99\n")
    r = gate_cli(incomplete_metrics)
    assert r.exit_code == 2, r.output


def test_a_regression_still_fails_when_incomplete_is_allowed(gate_cli, incomplete_metrics):
    r = gate_cli(incomplete_metrics, "--max", "gpu_idle_pct=1", "--allow-incomplete")
    assert r.exit_code == 1, r.output


def test_an_incomplete_baseline_invalidates_the_comparison(gate_cli, metrics_file, incomplete_metrics):
    r = gate_cli(metrics_file(idle=5.0), "-b", incomplete_metrics, "--max-increase-pp", "gpu_idle_pct=2")
    assert r.exit_code == 4, r.output


def test_metrics_not_from_the_trace_stay_valid(gate_cli, metrics_file):
    path = metrics_file()
    doc = json.loads(path.read_text())
    doc["trace_integrity"] = {"verdict": "incomplete", "codes": ["gpu_tail_cut"], "reasons": ["cut"],
                              "affected_metrics": ["gpu_idle_pct"]}
    path.write_text(json.dumps(doc))
    assert gate_cli(path, "--min", "tokens_per_s=500").exit_code == 0
    assert gate_cli(path, "--max", "gpu_idle_pct=50").exit_code == 4


def test_intact_trace_passes(gate_cli, tmp_path):
    path = atomic_write_json(tmp_path / "metrics.json", analyze(ENGINE_ASYNC).doc)
    r = gate_cli(path, "--max", "gpu_idle_pct=50", "--min", "trace_complete=1")
    assert r.exit_code == 0, r.output
