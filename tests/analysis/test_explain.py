"""Steps for any engine, GPU time by category and the explanation of two runs, on traces with known answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from asyncbatch_prof.analysis import analyze
from asyncbatch_prof.analysis.errors import TraceError
from asyncbatch_prof.analysis.explain import explain, verdict
from asyncbatch_prof.analysis.step_sources import load_steps_config

DATA = Path(__file__).resolve().parents[1] / "data" / "traces"


def _two_streams(tb, tmp_path):
    """GEMM on stream 7 [0, 100), attention on stream 8 [50, 150), a 1 MB H2D copy [200, 210)."""
    t = tb()
    t.launch(0.0, 2.0, [(0.0, 100.0)], op_name="sm90_xmma_gemm_bf16", stream=7)
    t.launch(1.0, 2.0, [(50.0, 100.0)], op_name="flash_fwd_kernel", stream=8)
    t.launch(150.0, 5.0, [(200.0, 10.0)], name="cudaMemcpyAsync", op_cat="gpu_memcpy",
             op_name="Memcpy HtoD (Pinned -> Device)", nbytes=1_000_000)
    return analyze(t.write(tmp_path / "two.json.gz"))


def test_categories_split_overlap_half_and_half_and_sum_to_busy(trace_builder, tmp_path):
    ta = _two_streams(trace_builder, tmp_path)
    st = ta.doc["step_time"]
    busy = st["gpu_busy_us"]
    # [50, 100) is covered by both kernels: 25 µs each; the union is 150 + 10 µs
    assert busy["gemm"] == pytest.approx(75.0) and busy["attention"] == pytest.approx(75.0)
    assert busy["memcpy_h2d"] == pytest.approx(10.0)
    assert sum(busy.values()) == pytest.approx(ta.doc["metrics"]["gpu_busy_us"]["kernel"])
    work = st["gpu_work"]
    assert work["multi_stream_us"] == pytest.approx(50.0)
    assert work["categories"]["memcpy_h2d"]["bytes"] == 1_000_000
    assert work["categories"]["memcpy_h2d"]["gb_per_s"] == pytest.approx(100.0)  # 1 MB in 10 µs
    assert work["kernels"] == 2 and work["ops"] == 3
    assert {o["name"] for o in work["top_ops"][:2]} == {"flash_fwd_kernel", "sm90_xmma_gemm_bf16"}


def _steps_trace(tb, path, step_us, ops):
    """Two ProfilerStep ranges of ``step_us``; ``ops``: (launch offset, start offset, length, name) per step."""
    t = tb()
    for k in range(2):
        t0 = k * step_us
        t.cpu(f"ProfilerStep#{k + 1}", t0, step_us, cat="user_annotation")
        for launch, start, length, name in ops:
            t.launch(t0 + launch, 1.0, [(t0 + start, length)], op_name=name)
    return analyze(t.write(path))


@pytest.fixture
def pair(trace_builder, tmp_path):
    # A: per step 40 µs host-bound, then a 60 µs GEMM. B: 10 µs host-bound, GEMM 60, attention 50
    a = _steps_trace(trace_builder, tmp_path / "a.json.gz", 100.0, [(35.0, 40.0, 60.0, "cutlass_gemm")])
    b = _steps_trace(trace_builder, tmp_path / "b.json.gz", 120.0,
                     [(5.0, 10.0, 60.0, "cutlass_gemm"), (6.0, 70.0, 50.0, "flash_fwd")])
    return a, b


def test_profiler_steps_found_and_the_explanation_sums_exactly(pair):
    a, b = pair
    assert a.doc["steps"]["source"] == "profiler_steps" and a.doc["steps"]["count"] == 2
    ex = explain(a.doc["step_time"], b.doc["step_time"])
    assert ex["unit"] == "step"
    assert ex["a_ms"] == pytest.approx(0.100) and ex["b_ms"] == pytest.approx(0.120)
    assert ex["total_delta_ms"] == pytest.approx(0.020)
    by_name = {c["name"]: c for c in ex["components"]}
    assert by_name["GPU busy"]["delta_ms"] == pytest.approx(0.050)
    assert by_name["host-bound idle"]["delta_ms"] == pytest.approx(-0.030)
    kids = {k["name"]: k["delta_ms"] for k in by_name["GPU busy"]["children"]}
    assert kids["attention"] == pytest.approx(0.050) and kids["GEMM"] == pytest.approx(0.0, abs=1e-12)
    assert sum(c["delta_ms"] for c in ex["components"]) == pytest.approx(ex["total_delta_ms"], rel=1e-9)
    assert [abs(c["delta_ms"]) for c in ex["components"]] == sorted((abs(c["delta_ms"]) for c in ex["components"]),
                                                                    reverse=True)
    text = verdict(ex, "B")
    assert text.startswith("B is 1.2× slower per step") and "+0.05 ms GPU busy, of which +0.05 ms in attention" in text


def test_per_token_unit_carries_the_tokens_per_step_change(pair):
    a, b = pair
    ex = explain(a.doc["step_time"], b.doc["step_time"], (1.0, 2.0))
    assert ex["unit"] == "output token"
    # A: 100 µs per token; B: 120 µs per step over 2 tokens = 60 µs per token
    assert ex["total_delta_ms"] == pytest.approx(-0.040)
    assert sum(c["delta_ms"] for c in ex["components"]) == pytest.approx(-0.040, rel=1e-9)
    tokens = next(c for c in ex["components"] if c["kind"] == "tokens_per_step")
    assert tokens["delta_ms"] == pytest.approx(0.120 * (1 / 2 - 1))


def test_steps_config_maps_names_to_steps_and_phases(trace_builder, tmp_path):
    t = trace_builder()
    for k in range(3):
        t0 = 100.0 * k
        t.cpu("myengine.iteration", t0, 100.0, cat="user_annotation")
        t.cpu("myengine.build_batch", t0, 30.0, cat="user_annotation")
        t.launch(t0 + 30.0, 1.0, [(t0 + 32.0, 60.0)], op_name="gemm")
    trace = t.write(tmp_path / "custom.json.gz")
    cfg = tmp_path / "abprof.toml"
    cfg.write_text('[steps]\n"myengine.iteration" = "step"\n"myengine.build_*" = "build batch"\n')
    ta = analyze(trace, steps_config=load_steps_config(cfg))
    assert ta.doc["steps"]["source"] == "config" and ta.doc["steps"]["count"] == 3
    phases = dict(zip(ta.phases["phase"], ta.phases["host_bound_us"]))
    assert phases["build batch"] == pytest.approx(3 * 30.0)
    # idle: [0, 32) then [92, 132) and [192, 232); only the build_batch part of each gap has a phase name
    assert sum(phases.values()) == pytest.approx(32.0 + 2 * 40.0)
    bad = tmp_path / "bad.toml"
    bad.write_text("[steps]\nx = 3\n")
    with pytest.raises(TraceError, match="must map to"):
        load_steps_config(bad)


def test_host_syncs_delimit_steps_without_markers(trace_builder, tmp_path):
    t = trace_builder()
    for k in range(4):
        t0 = 100.0 * k
        t.launch(t0, 2.0, [(t0 + 5.0, 50.0)], op_name="gemm")
        t.cpu("cudaStreamSynchronize", t0 + 3.0, 55.0, cat="cuda_runtime")
    ta = analyze(t.write(tmp_path / "sync.json.gz"))
    assert ta.doc["steps"]["source"] == "structure" and "host synchronizations" in ta.doc["steps"]["source_detail"]
    assert ta.doc["steps"]["count"] == 4


@pytest.mark.parametrize("name, source, phase", [
    ("sglang-qwen3-8b-decode.json.gz", "sglang", "prepare inputs"),
    ("vllm-prefilldecode-piecewise-excerpt.json.gz", "vllm", "update states"),
])
def test_outside_engines_steps_and_phases(name, source, phase):
    ta = analyze(DATA / name)
    assert ta.doc["steps"]["source"] == source and ta.doc["steps"]["count"] == 1 and ta.window == "step"
    assert phase in set(ta.phases["phase"])
    st = ta.doc["step_time"]
    parts = sum(st["gpu_busy_us"].values()) + sum(st["idle_us"]["host_bound"].values()) + \
        st["idle_us"]["launch_latency"] + st["idle_us"]["dependency"]
    assert parts == pytest.approx(st["window_us"], rel=1e-9)
    assert st["gpu_busy_us"]["gemm"] > 0 and st["gpu_busy_us"]["attention"] > 0


def test_analyze_cli_prints_the_step_split_and_reads_abprof_toml(cli, trace_builder, tmp_path, monkeypatch):
    t = trace_builder()
    for k in range(2):
        t.cpu("loop.iter", 100.0 * k, 100.0, cat="user_annotation")
        t.launch(100.0 * k + 20.0, 1.0, [(100.0 * k + 25.0, 50.0)], op_name="cutlass_gemm")
    trace = t.write(tmp_path / "t.json.gz")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "abprof.toml").write_text('[steps]\n"loop.iter" = "step"\n')
    result = cli("analyze", trace)
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["steps"]["source"] == "config" and doc["steps"]["count"] == 2
    first = result.output.splitlines()[0]
    assert first.startswith("per step (2 steps)") and "GEMM 0.05" in first
    assert "steps from: 'loop.iter' from" in result.output
    (tmp_path / "abprof.toml").write_text("[steps]\nnothing = 'x'\n")
    result = cli("analyze", trace)
    assert result.exit_code == 2 and "maps no name to \"step\"" in result.output and "Traceback" not in result.output
