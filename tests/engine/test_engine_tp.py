"""Tensor parallelism on the CPU (gloo): TP=2 gives TP=1's tokens, sync and async; the digest; the errors."""

from __future__ import annotations

import hashlib

import pytest
import torch

from reference_engine import EngineConfig, LLMEngine, WorkloadConfig, make_workload
from reference_engine.distributed import RankRun, launch, run_workload
from reference_engine.records import RequestRecord, tokens_sha256
from reference_engine.step_inputs import HostInputs

ENGINE = dict(device="cpu", max_batch_tokens=64, max_seqs=4, num_blocks=40, block_size=8)
WORKLOAD = WorkloadConfig(num_requests=6, prompt_len="uniform:4:40", output_len="uniform:2:8", seed=1)


def _both_modes(rank: int, requests) -> list[RankRun]:
    """One rank: a sync and an async run at TP=2 (one launch for both: spawning costs seconds)."""
    return [run_workload(rank, EngineConfig(mode=mode, tp_size=2, **ENGINE), requests, warmup_steps=2)
            for mode in ("sync", "async")]


def _tp1(mode: str, requests):
    engine = LLMEngine(EngineConfig(mode=mode, **ENGINE))
    try:
        return engine.generate(requests)
    finally:
        engine.close()


@pytest.mark.slow
def test_tp2_gives_the_tp1_tokens_sync_and_async():
    requests = make_workload(WORKLOAD, vocab_size=512)
    per_rank = launch(2, _both_modes, (requests,))
    tp1 = {mode: _tp1(mode, requests) for mode in ("sync", "async")}
    digests = set()
    for i, mode in enumerate(("sync", "async")):
        rank0, rank1 = per_rank[0][i], per_rank[1][i]
        assert [r.output_token_ids for r in rank0.result.records] == [r.output_token_ids for r in tp1[mode].records]
        assert rank0.result.output_tokens == sum(q.max_new_tokens for q in requests)
        assert rank1.result.records == [] and rank1.result.tokens_sha256 is None
        assert rank1.result.num_steps == len(rank1.step_end_s) > 0  # the follower ran rank 0's steps
        assert "tensor parallel: rank 1 of 2" in rank1.notes
        digests |= {rank0.result.tokens_sha256, tp1[mode].tokens_sha256}
    assert len(digests) == 1  # sync, async, TP=1 and TP=2 agree


def test_tokens_sha256_canonical_encoding():
    recs = [RequestRecord(2, 3, 2, 0.0, output_token_ids=[5, 17]), RequestRecord(0, 1, 1, 0.0, output_token_ids=[9])]
    assert tokens_sha256(recs) == hashlib.sha256(b"0:9\n2:5,17\n").hexdigest()
    recs[1].output_token_ids = [8]
    assert tokens_sha256(recs) != hashlib.sha256(b"0:9\n2:5,17\n").hexdigest()


def test_divisibility_error_is_one_line(monkeypatch):
    from reference_engine import tensor_parallel

    group = tensor_parallel.TPGroup(0, 3, None, None)
    monkeypatch.setattr(tensor_parallel, "tp_group", lambda n: group)
    monkeypatch.setattr("reference_engine.engine.tp_group", lambda n: group)
    with pytest.raises(ValueError) as err:
        LLMEngine(EngineConfig(tp_size=3, **ENGINE))
    msg = str(err.value)
    assert "\n" not in msg and "tp_size=3" in msg and "num_attention_heads=4" in msg and "vocab_size=512" in msg


def test_tp_needs_torch_distributed():
    with pytest.raises(ValueError, match="needs torch.distributed"):
        LLMEngine(EngineConfig(tp_size=2, **ENGINE))
    with pytest.raises(ValueError, match="tp_size must be a positive integer"):
        EngineConfig(tp_size=0)


def test_broadcast_size_of_the_docstring():
    """``batch_broadcast``'s cost line: the tiny preset's defaults send 203,016 bytes per step."""
    assert HostInputs(2048, 256, 2048 // 16, 1, pin=False).nbytes == 203_016


@pytest.mark.cuda
def test_tp2_nccl_gives_the_tp1_greedy_tokens():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    from reference_engine.distributed import run_tp

    requests = make_workload(WORKLOAD, vocab_size=512)
    cfg = dict(ENGINE, device="cuda", dtype="float32")
    for mode in ("sync", "async"):
        runs = run_tp(EngineConfig(mode=mode, tp_size=2, **cfg), requests, warmup_steps=2)
        engine = LLMEngine(EngineConfig(mode=mode, **cfg))
        tp1 = engine.generate(requests)
        assert runs[0].result.tokens_sha256 == tp1.tokens_sha256
