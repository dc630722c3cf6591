"""Trace integrity on real traces: intact ones stay clean, damaged ones are flagged with the right reason.

The damaged traces are the reference engine's H100 trace with records taken out the way CUPTI loses them
(graph replays recorded without their kernels, the GPU tail cut off), written into tmp_path at test time,
and a committed excerpt of vLLM's graph-capture trace from the TraceLens repository.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from asyncbatch_prof.analysis import analyze

ROOT = Path(__file__).resolve().parents[2]
ENGINE_ASYNC = ROOT / "reports" / "engine-h100" / "trace-async.json.gz"
VLLM_CAPTURE = ROOT / "tests" / "data" / "traces" / "vllm-graph-capture-excerpt.json.gz"
SHARED = ROOT.parent / "shared" / "traces"
GPU_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}


def _read(path: Path) -> dict:
    with gzip.open(path, "rt") as f:
        return json.load(f)


def _write(doc: dict, path: Path) -> Path:
    with gzip.open(path, "wt") as f:
        json.dump(doc, f)
    return path


def _graph_correlations(events: list[dict]) -> list[int]:
    launches = [e for e in events if e.get("name") == "cudaGraphLaunch" and e.get("ph") == "X"]
    return [e["args"]["correlation"] for e in sorted(launches, key=lambda e: e["ts"])]


def _drop_graph_kernels(doc: dict, share_of_kernels: float) -> dict:
    """Every other graph replay loses ``share_of_kernels`` of its kernels (the last ones, by start)."""
    events = doc["traceEvents"]
    hit = set(_graph_correlations(events)[::2])
    drop: set[int] = set()
    for corr in hit:
        mine = sorted((e for e in events if e.get("cat") in GPU_CATS and e["args"].get("correlation") == corr),
                      key=lambda e: e["ts"])
        cut = len(mine) - int(round(len(mine) * share_of_kernels))
        drop.update(id(e) for e in mine[cut:])
    return {**doc, "traceEvents": [e for e in events if id(e) not in drop]}


def _drop_gpu_tail(doc: dict, share: float) -> dict:
    """The last ``share`` of the GPU records (by start) are lost, as when CUPTI's buffer fills."""
    events = doc["traceEvents"]
    gpu = sorted((e for e in events if e.get("cat") in GPU_CATS and e.get("ph") == "X"), key=lambda e: e["ts"])
    drop = {id(e) for e in gpu[len(gpu) - int(len(gpu) * share):]}
    return {**doc, "traceEvents": [e for e in events if id(e) not in drop]}


@pytest.fixture(scope="module")
def engine_doc() -> dict:
    return _read(ENGINE_ASYNC)


def _codes(ta) -> list[str]:
    return ta.doc["trace_integrity"]["codes"]


def test_intact_engine_trace_is_clean():
    ta = analyze(ENGINE_ASYNC)
    integrity = ta.doc["trace_integrity"]
    assert integrity["verdict"] == "ok", integrity["reasons"]
    assert ta.doc["metrics"]["trace_complete"] is True
    assert ta.doc["metrics"]["missing_gpu_records_pct"] == 0.0
    dev = integrity["devices"]["0"]
    assert dev["graph_launches"] == 10 and dev["launches_with_gpu"] == dev["launches"]


@pytest.mark.parametrize("share", [1.0, 0.5], ids=["whole-replays", "half-of-each-replay"])
def test_graph_replays_without_their_kernels_are_flagged(engine_doc, tmp_path, share):
    damaged = analyze(_write(_drop_graph_kernels(engine_doc, share), tmp_path / "t.json.gz"))
    intact = analyze(ENGINE_ASYNC)
    assert damaged.gpu_idle_pct > intact.gpu_idle_pct + 5  # the damage matters to the headline number
    assert damaged.doc["metrics"]["trace_complete"] is False
    dev = damaged.doc["trace_integrity"]["devices"]["0"]
    if share == 1.0:
        assert dev["graph_replays_without_kernels"] == 5
        assert "launches_without_gpu" in _codes(damaged)
    else:
        assert dev["graph_replays_short"] == 5
    assert "graph_replays_short" in _codes(damaged)
    assert damaged.doc["metrics"]["missing_gpu_records_pct"] > 1.0


def test_gpu_tail_cut_off_is_flagged(engine_doc, tmp_path):
    damaged = analyze(_write(_drop_gpu_tail(engine_doc, 0.3), tmp_path / "t.json.gz"))
    assert damaged.doc["metrics"]["trace_complete"] is False
    assert "gpu_tail_cut" in _codes(damaged)
    dev = damaged.doc["trace_integrity"]["devices"]["0"]
    assert dev["host_launching_after_last_gpu_record_us"] > 1000


def test_a_launch_in_flight_at_the_end_is_not_a_fault(engine_doc, tmp_path):
    """Only the GPU records of the last launch are missing: the profiler stopped while it was queued."""
    events = engine_doc["traceEvents"]
    launches = sorted((e for e in events if e.get("cat") == "cuda_runtime" and "correlation" in e.get("args", {})
                       and any(g.get("args", {}).get("correlation") == e["args"]["correlation"]
                               for g in events if g.get("cat") in GPU_CATS)), key=lambda e: e["ts"])
    last = launches[-1]["args"]["correlation"]
    kept = [e for e in events if not (e.get("cat") in GPU_CATS and e["args"].get("correlation") == last)]
    ta = analyze(_write({**engine_doc, "traceEvents": kept}, tmp_path / "t.json.gz"))
    assert ta.doc["trace_integrity"]["verdict"] == "ok", ta.doc["trace_integrity"]["reasons"]
    assert ta.doc["trace_integrity"]["devices"]["0"]["launches_in_flight_at_end"] == 1


def test_vllm_graph_capture_trace_is_flagged_as_capture():
    ta = analyze(VLLM_CAPTURE)
    assert ta.doc["metrics"]["trace_complete"] is False
    assert _codes(ta) == ["capture"]
    (dev,) = ta.doc["trace_integrity"]["devices"].values()
    assert dev["launches_captured"] > 10 * dev["gpu_records"]


_INTACT = [ROOT / "reports" / "engine-h100" / "trace-sync.json.gz", ENGINE_ASYNC,
           *sorted((ROOT / "tests" / "data" / "traces").glob("hta-*.json.gz")),
           *sorted((ROOT / "tests" / "data" / "traces").glob("transformers-*.json.gz")),
           *sorted((SHARED / "h100").glob("*.json.gz")), *sorted((SHARED / "hta-samples").glob("*.json.gz"))]


@pytest.mark.parametrize("path", _INTACT, ids=lambda p: p.name)
def test_intact_traces_stay_clean(path):
    if not path.exists():
        pytest.skip(f"{path} is not on this machine")
    integrity = analyze(path).doc["trace_integrity"]
    assert integrity["verdict"] == "ok", integrity["reasons"]


def test_cli_prints_one_warning_line_for_an_incomplete_trace(cli, tmp_path):
    r = cli("analyze", VLLM_CAPTURE, "--out", tmp_path)
    assert r.exit_code == 0, r.output
    warnings = [line for line in r.output.splitlines() if line.startswith("warning: trace incomplete")]
    assert len(warnings) == 1 and "(capture)" in warnings[0], r.output
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"]["trace_complete"] is False


def test_cli_prints_no_warning_for_an_intact_trace(cli, tmp_path):
    r = cli("analyze", ENGINE_ASYNC, "--out", tmp_path)
    assert r.exit_code == 0, r.output
    assert "trace incomplete" not in r.output
