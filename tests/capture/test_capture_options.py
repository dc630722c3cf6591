"""Options → runs: windows, the default window from the workload, the defaults per machine."""

from __future__ import annotations

import pytest

from asyncbatch_prof.pipeline.plan import (ALL_STEPS, RunOptions, default_window, estimate_steps, parse_window,
                                           plan_runs)
from asyncbatch_prof.errors import AbprofError

STANDARD = dict(num_requests=256, prompt_len="uniform:128:1024", output_len="fixed:256", arrival_rate=None, seed=0,
                jsonl=None)


def test_capture_default_window_is_in_the_decode_part():
    prefill, total = estimate_steps(STANDARD, max_batch_tokens=2048, max_seqs=256)
    assert 80 <= prefill <= 90 and 330 <= total <= 345  # the reference engine ran this workload in 335 steps
    assert default_window(STANDARD, 2048, 256, warmup=2) == (150, 64)


def test_capture_default_window_matches_a_real_run():
    from reference_engine import EngineConfig, LLMEngine, make_workload

    from asyncbatch_prof.engines import workload_config

    workload = dict(STANDARD, num_requests=12, prompt_len="uniform:16:96", output_len="fixed:12")
    engine = LLMEngine(EngineConfig(model="tiny", max_batch_tokens=128))
    steps = engine.generate(make_workload(workload_config(workload), engine.vocab_size)).num_steps
    _, total = estimate_steps(workload, 128, 256)
    assert abs(total - steps) <= max(2, steps // 10), (total, steps)
    first, active = default_window(workload, 128, 256, warmup=2)
    # the window is reached with steps to spare (the analyzer leaves the first recorded step out)
    assert first + 2 < steps and active >= 2


@pytest.mark.parametrize("text, wait, warmup, active", [
    ("10", 148, 2, 10), ("3:7", 1, 2, 5), ("all", 0, 2, ALL_STEPS), ("5-5", 3, 2, 1),
])
def test_capture_parse_window(text, wait, warmup, active):
    w = parse_window(text, (150, 64), warmup=2)
    assert (w.wait, w.warmup, w.active) == (wait, warmup, active)


def test_capture_plan_both_and_defaults(tmp_path):
    plan = plan_runs(RunOptions(out=tmp_path / "o", cuda=False))
    assert [label for label, _, _ in plan.runs] == ["sync", "async"]
    assert plan.compare_path == tmp_path / "o" / "compare.html"
    spec = plan.runs[1][1]
    assert spec.mode == "async" and spec.engine_config["model"] == "tiny" and spec.workload["num_requests"] == 32
    assert spec.command[:4] == ["abprof", "run", "--mode", "async"]
    assert spec.command[-2:] == ["--out", str(tmp_path / "o" / "async")]
    gpu = plan_runs(RunOptions(out=tmp_path / "g", cuda=True, mode="sync"))
    _, gspec, gdir = gpu.runs[0]
    assert gspec.engine_config["model"] == "llama-1b" and gspec.workload["prompt_len"] == "uniform:128:1024"
    assert gspec.window.first == 150 and gdir == tmp_path / "g" and not gpu.notes
    with pytest.raises(AbprofError, match="transformers' async batching needs a CUDA device"):
        plan_runs(RunOptions(out=tmp_path / "t", engine="transformers", cuda=False))
