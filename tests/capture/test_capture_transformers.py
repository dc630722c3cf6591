"""transformers' continuous batching behind the engine interface (CPU: the sync loop; async needs CUDA)."""

from __future__ import annotations

import gzip
import json

import pytest

from asyncbatch_prof import runfolder as rf

pytest.importorskip("transformers", minversion="5.0")


@pytest.fixture(scope="module")
def workload():
    from reference_engine import WorkloadConfig

    return WorkloadConfig(num_requests=4, prompt_len="uniform:8:24", output_len="uniform:3:6", seed=3)


def test_capture_transformers_same_tokens_as_reference(workload):
    """Same preset, same seed, greedy: transformers' loop must produce the reference engine's tokens."""
    from reference_engine import EngineConfig, LLMEngine, make_workload

    from asyncbatch_prof.capture.transformers_engine import TransformersCBEngine

    cfg = EngineConfig(model="tiny", mode="sync", max_batch_tokens=64, seed=5)
    hf = TransformersCBEngine(cfg)
    try:
        requests = make_workload(workload, hf.vocab_size)
        steps = []
        result = hf.generate(requests, on_step=steps.append)
    finally:
        hf.close()
    ref = LLMEngine(cfg).generate(requests)
    assert [r.output_token_ids for r in result.records] == [r.output_token_ids for r in ref.records]
    assert [len(r.output_token_ids) for r in result.records] == [r.max_new_tokens for r in requests]
    assert steps == list(range(result.num_steps)) and result.num_steps > 0
    for rec in result.records:  # times are seconds since generate() started, in order
        assert 0 <= rec.first_token_s <= rec.finish_s <= result.wall_s + 1e-3
        assert rec.token_times_s == sorted(rec.token_times_s)


def test_capture_transformers_cli_sync(tmp_path, cli, no_nvml):
    out = tmp_path / "hf"
    result = cli("run", "--engine", "transformers", "--mode", "sync", "--out", out, "--requests", "4",
                 "--prompt-len", "uniform:8:24", "--output-len", "fixed:5", "--max-batch-tokens", "64",
                 "--profile-steps", "2:4", "--warmup-steps", "1")
    assert result.exit_code == 0, result.output
    rf.check_complete(out)
    run = json.loads((out / rf.RUN_JSON).read_text())
    assert run["engine"] == "transformers" and run["profiled_steps"] == [2, 4]
    assert any("background thread" in note for note in run["notes"])
    doc = rf.load_metrics(out)
    assert doc["metrics"]["tokens_per_s"] > 0 and doc["serving"]["output_tokens"] == 20
    with gzip.open(out / rf.TRACE, "rt") as f:
        events = json.load(f)["traceEvents"]
    steps = sorted(e["name"] for e in events if e.get("name", "").startswith("ProfilerStep#"))
    assert steps == ["ProfilerStep#2", "ProfilerStep#3", "ProfilerStep#4"]
    ops_by_thread = {e["tid"] for e in events if e.get("cat") == "cpu_op"}
    step_threads = {e["tid"] for e in events if e.get("name", "").startswith("ProfilerStep#")}
    assert step_threads <= ops_by_thread  # the loop thread's CPU ops are recorded, not just its steps


def test_capture_transformers_async_needs_cuda(tmp_path, cli, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = cli("run", "--engine", "transformers", "--mode", "async", "--out", tmp_path / "x")
    assert result.exit_code == 2
    assert result.output.strip() == ("abprof: error: transformers' async batching needs a CUDA device; "
                                     "use --mode sync on the CPU")
