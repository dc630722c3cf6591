"""split_prefill_decode: a mixed step runs as a decode batch and a prefill batch; the tokens do not change.

On the CPU the two batches run one after the other; the ``cuda`` tests run them on two streams.
"""

from __future__ import annotations

import pytest
from torch.profiler import ProfilerActivity, profile

from reference_engine import EngineConfig, LLMEngine, SamplingParams, WorkloadConfig, make_workload
from reference_engine import model_runner
from reference_engine.model_runner import split_batch
from reference_engine.scheduler import ScheduledBatch

WORKLOADS = {  # shapes where steps mix decodes with prefill chunks (and, "preempt", with recomputation)
    "mixed": (dict(), dict(num_requests=12, prompt_len="uniform:4:80", output_len="uniform:1:24",
                           arrival_rate=400.0)),
    "chunked": (dict(max_batch_tokens=24, max_seqs=5),
                dict(num_requests=10, prompt_len="lognormal:40:0.8:150", output_len="uniform:1:16", seed=1)),
    "preempt": (dict(num_blocks=14, block_size=8, max_batch_tokens=64),
                dict(num_requests=14, prompt_len="uniform:8:40", output_len="uniform:8:40", seed=2)),
}


def _run(split: bool, mode: str, engine_kw: dict, workload_kw: dict, sampling=None, device="cpu"):
    engine = LLMEngine(EngineConfig(mode=mode, device=device, split_prefill_decode=split, **engine_kw))
    try:
        reqs = make_workload(WorkloadConfig(**workload_kw), vocab_size=engine.vocab_size)
        result = engine.generate(reqs, sampling=sampling)
    finally:
        engine.close()
    assert result.output_tokens == sum(q.max_new_tokens for q in reqs)
    return [r.output_token_ids for r in result.records], [r.preemptions for r in result.records]


@pytest.fixture
def split_steps(monkeypatch):
    """Counts the steps the runner actually split (so a test cannot pass by never splitting)."""
    counts = {"split": 0}
    real = model_runner.split_batch

    def counting(batch):
        parts = real(batch)
        counts["split"] += parts is not None
        return parts

    monkeypatch.setattr(model_runner, "split_batch", counting)
    return counts


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_split_gives_the_unsplit_greedy_tokens(name, mode, split_steps):
    engine_kw, workload_kw = WORKLOADS[name]
    plain, plain_preempt = _run(False, mode, engine_kw, workload_kw)
    assert split_steps["split"] == 0
    split, split_preempt = _run(True, mode, engine_kw, workload_kw)
    assert split_steps["split"] > 0
    assert split == plain
    assert split_preempt == plain_preempt
    if name == "preempt":
        assert sum(split_preempt) > 0


def test_split_keeps_seeded_sampling(split_steps):
    """The logits are merged back in the step's row order, so each row meets the same random draw."""
    params = SamplingParams(temperature=0.8, top_k=50, top_p=0.9)
    engine_kw, workload_kw = WORKLOADS["chunked"]
    plain, _ = _run(False, "async", engine_kw, workload_kw, params)
    split, _ = _run(True, "async", engine_kw, workload_kw, params)
    greedy, _ = _run(True, "async", engine_kw, workload_kw)
    assert split_steps["split"] > 0
    assert split == plain != greedy


def _batch(lens: list[int], sample_rows: list[int]) -> ScheduledBatch:
    n = len(lens)
    return ScheduledBatch([f"s{i}" for i in range(n)], [10 * i for i in range(n)], lens, sample_rows,
                          [0] * len(sample_rows), sum(lens), False, [[i] for i in range(n)])


def test_split_batch_rows_and_merge_index():
    # rows: 0 decode, 1 prefill chunk that samples, 2 decode, 3 chunk that does not sample, 4 one-token
    # chunk that does not sample (not a decode: it samples nothing)
    batch = _batch([1, 7, 1, 5, 1], [0, 1, 2])
    dec, rest, merge = split_batch(batch)
    assert dec.seqs == ["s0", "s2"] and dec.lens == [1, 1] and dec.decode_only and dec.sample_rows == [0, 1]
    assert rest.seqs == ["s1", "s3", "s4"] and rest.starts == [10, 30, 40] and rest.num_tokens == 13
    assert rest.sample_rows == [0] and not rest.decode_only and rest.block_tables == [[1], [3], [4]]
    assert merge == [0, 2, 1]  # sampled rows s0, s1, s2 ← decode sample 0, other sample 0 (at 2), decode 1
    assert split_batch(_batch([4, 5], [0, 1])) is None  # no decode
    decode_only = _batch([1, 1], [0, 1])
    decode_only.decode_only = True
    assert split_batch(decode_only) is None


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_split_annotations_nest_inside_forward(mode):
    # in this process (with the default device process the batches' annotations are the child's)
    engine = LLMEngine(EngineConfig(mode=mode, device="cpu", split_prefill_decode=True, max_batch_tokens=24,
                                    cpu_worker_process=False))
    reqs = make_workload(WorkloadConfig(num_requests=4, prompt_len="fixed:40", output_len="fixed:3", seed=4),
                         vocab_size=engine.vocab_size)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        engine.generate(reqs)
    engine.close()
    names = {e.name for e in prof.events()}
    assert {"abprof.step", "abprof.forward"} <= names
    inner = {"abprof.forward.decode", "abprof.forward.prefill"}
    if mode == "sync":
        assert inner <= names
        assert any("split_prefill_decode" in note for note in engine.notes)
    else:  # the worker thread plays the device and is not annotated
        assert not inner & names
    assert engine.describe()["split_prefill_decode"] is True


CUDA_WORKLOAD = dict(num_requests=24, prompt_len="uniform:4:300", output_len="uniform:1:40", seed=7)


@pytest.mark.cuda
@pytest.mark.parametrize("graphs", [False, True])
@pytest.mark.parametrize("cache", ["roomy", "tight"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_split_on_two_streams_gives_the_unsplit_tokens_on_cuda(mode, cache, graphs, split_steps):
    """fp32 (bf16 GEMMs round differently at other row counts): decode batch on the compute stream (a
    CUDA graph where one fits), prefill batch on the second stream, joined before sampling."""
    kw = dict(max_batch_tokens=256, max_seqs=16, dtype="float32", cuda_graphs=graphs)
    if cache == "tight":
        kw.update(num_blocks=40, block_size=16)
    plain, plain_preempt = _run(False, mode, kw, CUDA_WORKLOAD, device="cuda")
    split, split_preempt = _run(True, mode, kw, CUDA_WORKLOAD, device="cuda")
    assert split_steps["split"] > 0
    differ = [i for i, (a, b) in enumerate(zip(split, plain)) if a != b]
    assert not differ, f"requests {differ} of {len(plain)} differ (first: {split[differ[0]]} vs {plain[differ[0]]})"
    assert split_preempt == plain_preempt
    if cache == "tight":
        assert sum(split_preempt) > 0


@pytest.mark.cuda
def test_split_bf16_sync_equals_async_and_seeded_sampling_on_cuda(split_steps):
    """bf16 with graphs (the benchmark's setting): both loops give the same split tokens, greedy and seeded."""
    kw = dict(max_batch_tokens=256, max_seqs=16)
    params = SamplingParams(temperature=0.8, top_k=50, top_p=0.9)
    sync, _ = _run(True, "sync", kw, CUDA_WORKLOAD, device="cuda")
    asyn, _ = _run(True, "async", kw, CUDA_WORKLOAD, device="cuda")
    seeded_sync, _ = _run(True, "sync", kw, CUDA_WORKLOAD, params, device="cuda")
    seeded_async, _ = _run(True, "async", kw, CUDA_WORKLOAD, params, device="cuda")
    assert split_steps["split"] > 0
    assert sync == asyn
    assert seeded_sync == seeded_async != sync
