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


def _synthetic(steps: int = 6, per_step: int = 10) -> list[dict]:
    """An intact one-stream trace: abprof.step ranges, each with ``per_step`` launches of a 20 µs kernel."""
    events, corr = [], 0
    for s in range(steps):
        t0 = 1000.0 * s
        events.append({"ph": "X", "cat": "user_annotation", "name": "abprof.step", "pid": 1, "tid": 1, "ts": t0,
                       "dur": 900.0})
        for k in range(per_step):
            corr += 1
            ts = t0 + 10 + 50 * k
            events.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 1,
                           "ts": ts, "dur": 5.0, "args": {"correlation": corr}})
            events.append({"ph": "X", "cat": "kernel", "name": f"k{k}", "pid": 0, "tid": 7, "ts": ts + 8,
                           "dur": 20.0, "args": {"correlation": corr, "stream": 7}})
    return events


def _analyze_events(events: list[dict], tmp_path: Path):
    return analyze(_write({"traceEvents": events}, tmp_path / "s.json.gz"))


def test_synthetic_intact_trace_is_clean(tmp_path):
    assert _analyze_events(_synthetic(), tmp_path).doc["trace_integrity"]["verdict"] == "ok"


def test_records_without_launch_mid_trace_are_flagged_but_not_at_the_start(tmp_path):
    events = _synthetic()
    launches = [e for e in events if e["cat"] == "cuda_runtime"]
    at_start = {id(e) for e in launches[:8]}
    ta = _analyze_events([e for e in events if id(e) not in at_start], tmp_path)
    assert ta.doc["trace_integrity"]["verdict"] == "ok", ta.doc["trace_integrity"]["reasons"]
    mid = {id(e) for e in launches[30:38]}
    ta = _analyze_events([e for e in events if id(e) not in mid], tmp_path)
    assert ta.doc["trace_integrity"]["codes"] == ["records_without_launch"]


def test_a_step_without_gpu_records_is_flagged(tmp_path):
    events = _synthetic()
    lost = {e["args"]["correlation"] for e in events if e["cat"] == "cuda_runtime" and 2000 <= e["ts"] < 3000}
    kept = [e for e in events if not (e["cat"] == "kernel" and e["args"]["correlation"] in lost)]
    integrity = _analyze_events(kept, tmp_path).doc["trace_integrity"]
    assert integrity["devices"]["0"]["steps_without_gpu"] == 1
    assert "steps_without_gpu" in integrity["codes"] and "launches_without_gpu" in integrity["codes"]


def test_a_window_opened_inside_a_capture_counts_its_launches_as_captured(tmp_path):
    events = _synthetic(steps=2)
    captured = [{"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 1, "ts": -500.0 + i,
                 "dur": 0.5, "args": {"correlation": 10_000 + i}} for i in range(100)]
    end = {"ph": "X", "cat": "cuda_runtime", "name": "cudaStreamEndCapture", "pid": 1, "tid": 1, "ts": -300.0,
           "dur": 1.0, "args": {}}
    integrity = _analyze_events(captured + [end] + events, tmp_path).doc["trace_integrity"]
    dev = integrity["devices"]["0"]
    assert dev["launches_captured"] == 100 and dev["launches_without_gpu"] == 0
    assert integrity["codes"] == ["capture"]  # 100 captured against 20 GPU records


ENGINE_PIECES = ROOT / "tests" / "data" / "traces" / "reference-h200-async-pieces.json.gz"


def test_graph_pieces_whose_kernels_nest_are_not_short_replays():
    """The engine's decode graphs in pieces (layers 1-3 and 4-15: the same kernels, fewer in the first) are
    compared only with the replays at the same place in their steps."""
    ta = analyze(ENGINE_PIECES)
    integrity = ta.doc["trace_integrity"]
    assert integrity["verdict"] == "ok", integrity["reasons"]
    dev = integrity["devices"]["0"]
    assert dev["graph_launches"] == 3 * 64 and dev["graph_replays_short"] == 0


def test_a_short_replay_among_graph_pieces_is_still_flagged(tmp_path):
    doc = _read(ENGINE_PIECES)
    events = doc["traceEvents"]
    launches = _graph_correlations(events)
    drop: set[int] = set()
    for corr in launches[2::3][::4]:  # every fourth step's last piece loses its second half
        mine = sorted((e for e in events if e.get("cat") in GPU_CATS and e["args"].get("correlation") == corr),
                      key=lambda e: e["ts"])
        drop.update(id(e) for e in mine[len(mine) // 2:])
    damaged = analyze(_write({**doc, "traceEvents": [e for e in events if id(e) not in drop]}, tmp_path / "t.json.gz"))
    assert damaged.doc["trace_integrity"]["devices"]["0"]["graph_replays_short"] == 16
    assert "graph_replays_short" in _codes(damaged)
