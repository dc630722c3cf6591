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

    from asyncbatch_prof.engines.transformers_cb import TransformersCBEngine

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


def test_capture_transformers_loop_failure_is_one_line(tmp_path, cli, no_nvml, monkeypatch):
    """An exception in transformers' loop (it reports it per request) fails the run in one line, no run folder."""
    from transformers import LlamaForCausalLM

    original = LlamaForCausalLM.forward
    calls = {"n": 0}

    def failing_forward(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:  # after warmup and a few steps, like the cuDNN failure seen on the H100
            raise RuntimeError("Expected mha_graph.execute(handle).is_good() to be true, but got false.\nmore")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, "forward", failing_forward)
    out = tmp_path / "hf"
    result = cli("run", "--engine", "transformers", "--mode", "sync", "--out", out, "--requests", "4",
                 "--prompt-len", "uniform:8:24", "--output-len", "fixed:5", "--max-batch-tokens", "64",
                 "--profile-steps", "2:4", "--warmup-steps", "1")
    assert result.exit_code != 0
    errors = [line for line in result.output.splitlines() if line.startswith("abprof: error:")]
    assert len(errors) == 1, result.output
    assert "transformers' continuous batching failed 4 of 4 requests: Expected mha_graph" in errors[0]
    assert "\nmore" not in result.output and "Traceback" not in result.output
    with pytest.raises(Exception):
        rf.check_complete(out)
