"""tp_overlap: two micro-batches pipelined layer by layer, each one's all-reduce under the other's compute.

The order test runs in one process with the all-reduce replaced by a recorder; the token tests run TP=2
on the CPU (gloo, spawned ranks) against TP=2 without overlap and TP=1.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from reference_engine import EngineConfig, LLMEngine, SamplingParams, WorkloadConfig, make_workload
from reference_engine import model_runner, tensor_parallel, tp_overlap
from reference_engine.attention import AttentionMetadata
from reference_engine.config import preset_config
from reference_engine.distributed import launch, run_workload
from reference_engine.model import CausalLM, init_random_weights
from reference_engine.scheduler import ScheduledBatch
from reference_engine.split_step import micro_batches

ENGINE = dict(device="cpu", max_batch_tokens=64, max_seqs=4, num_blocks=40, block_size=8)
WORKLOAD = WorkloadConfig(num_requests=6, prompt_len="uniform:4:40", output_len="uniform:2:8", seed=1)
SEEDED = SamplingParams(temperature=0.8, top_k=50, top_p=0.9)


def _tiny() -> CausalLM:
    model = CausalLM(preset_config("tiny"))
    init_random_weights(model, 0)
    return model.eval().requires_grad_(False)


def _prefill_meta(n: int, block: int) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
    """A prefill of ``n`` tokens into cache block ``block`` (block size 8)."""
    slots = torch.arange(n) + 8 * block
    meta = AttentionMetadata(slots, torch.tensor([0, n], dtype=torch.int32), torch.tensor([n], dtype=torch.int32),
                             torch.tensor([[block]], dtype=torch.int32), n, n, [0, n], [n])
    return torch.arange(n) * 7 + 3, torch.arange(n), meta


class _Work:
    def __init__(self, log: list, rows: int):
        self.log, self.rows = log, rows

    def wait(self) -> None:
        self.log.append(("wait", self.rows))


def test_all_reduce_of_one_micro_batch_is_issued_before_the_other_computes(monkeypatch):
    """Micro-batch A (5 rows) and B (3 rows): A's all-reduce is issued before B's phase of the same layer
    runs, and waited on only after it; sequential micro-batches would fail the exact order below."""
    log: list = []
    monkeypatch.setattr(tensor_parallel, "all_reduce_async",
                        lambda t, group: log.append(("issue", t.shape[0])) or _Work(log, t.shape[0]))
    model, reference = _tiny(), _tiny()
    tensor_parallel.shard_model(model, tensor_parallel.TPGroup(0, 1, "fake", None))  # a group of one: sum = x
    for i, layer in enumerate(model.layers):
        layer.self_attn.qkv_proj.register_forward_hook(lambda m, a, o, i=i: log.append(("attn", i, a[0].shape[0])))
        layer.mlp.gate_up_proj.register_forward_hook(lambda m, a, o, i=i: log.append(("mlp", i, a[0].shape[0])))
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    caches = [torch.zeros(2, cfg.num_hidden_layers, 4, 8, cfg.num_key_value_heads, head_dim) for _ in range(2)]
    a, b = _prefill_meta(5, 0), _prefill_meta(3, 1)
    with torch.inference_mode():
        hidden = tp_overlap.pipelined_forward([tp_overlap.layer_phases(model, *a, caches[0]),
                                               tp_overlap.layer_phases(model, *b, caches[0])], annotate=False)
        expected = [reference(*a, caches[1]), reference(*b, caches[1])]
    order = []
    for layer in range(cfg.num_hidden_layers):
        for phase in ("attn", "mlp"):
            order += [("wait", 5)] if order else []
            order += [(phase, layer, 5), ("issue", 5)]
            order += [("wait", 3)] if len(order) > 2 else []
            order += [(phase, layer, 3), ("issue", 3)]
    order += [("wait", 5), ("wait", 3)]
    assert log == order
    for got, want in zip(hidden, expected):  # the same arithmetic as CausalLM.forward
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def _batch(lens: list[int], sample_rows: list[int]) -> ScheduledBatch:
    n = len(lens)
    return ScheduledBatch([f"s{i}" for i in range(n)], [10 * i for i in range(n)], lens, sample_rows,
                          [0] * len(sample_rows), sum(lens), False, [[i] for i in range(n)])


def test_micro_batches_balance_tokens_and_keep_row_order():
    first, rest, merge = micro_batches(_batch([20, 1, 1, 1, 30], [4, 1, 2, 3]))
    assert first.seqs == ["s0", "s1", "s2", "s3"] and rest.seqs == ["s4"]  # 23 vs 30 tokens
    assert first.sample_rows == [1, 2, 3] and rest.sample_rows == [0]
    assert merge == [3, 0, 1, 2]  # sampled rows s4, s1, s2, s3 in the first's samples then the rest's
    first, rest, _ = micro_batches(_batch([1, 1, 1, 1], [0, 1, 2, 3]))
    assert first.lens == [1, 1] == rest.lens and first.decode_only and rest.decode_only
    assert micro_batches(_batch([9], [0])) is None  # one sequence: no split


def test_tp_overlap_config_errors():
    for bad, words in ((dict(tp_overlap=True), "tp_size > 1"), (dict(tp_overlap=1, tp_size=2), "bool"),
                       (dict(tp_overlap=True, tp_size=2, split_prefill_decode=True), "choose one"),
                       (dict(tp_overlap=True, tp_size=2, cuda_graphs=True), "cuda_graphs")):
        with pytest.raises(ValueError, match=words):
            EngineConfig(**bad)


# (tp_overlap, mode, sampling): overlap in every loop and sampling; the plain TP=2 runs it is compared with
# (test_engine_tp shows plain TP=2 equals TP=1 in both loops)
RUNS = [(True, "sync", "greedy"), (True, "async", "greedy"), (True, "async", "seeded"),
        (False, "sync", "greedy"), (False, "async", "seeded")]


def _counted(rank: int, requests) -> dict:
    """One rank: the ``RUNS`` at TP=2, the micro-batched step count after the plain and the overlapped
    runs, and the profiler's range names of a sync overlapped run."""
    real, count = model_runner.micro_batches, [0]

    def counting(batch):
        parts = real(batch)
        count[0] += parts is not None
        return parts

    out = {}
    with mock.patch.object(model_runner, "micro_batches", counting):
        for overlap, mode, name in RUNS:
            cfg = EngineConfig(mode=mode, tp_size=2, tp_overlap=overlap, **ENGINE)
            sampling = SEEDED if name == "seeded" else None
            out[overlap, mode, name] = run_workload(rank, cfg, requests, sampling, warmup_steps=1).result
            out[overlap, "split_steps"] = count[0]
        engine = LLMEngine(EngineConfig(tp_size=2, tp_overlap=True, **ENGINE))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            engine.generate(requests[:3])
        engine.close()
    out["names"] = {e.name for e in prof.events() if e.name.startswith("abprof.forward")}
    return out


@pytest.mark.slow
def test_tp_overlap_gives_the_tokens_of_tp2_and_tp1():
    requests = make_workload(WORKLOAD, vocab_size=512)
    rank0, rank1 = launch(2, _counted, (requests,))
    assert rank0[True, "split_steps"] > 0  # rank 0 cut steps (rank 1 only follows its plans)
    assert rank0[False, "split_steps"] == rank0[True, "split_steps"]  # ... and none without tp_overlap
    assert rank1[False, "split_steps"] == 0
    engine = LLMEngine(EngineConfig(mode="sync", **ENGINE))
    tp1 = {name: engine.generate(requests, sampling).tokens_sha256 for name, sampling in (("greedy", None),
                                                                                          ("seeded", SEEDED))}
    engine.close()
    for overlap, mode, name in RUNS:
        result = rank0[overlap, mode, name]
        assert result.tokens_sha256 == tp1[name], (overlap, mode, name)
        assert result.output_tokens == sum(q.max_new_tokens for q in requests)
    assert tp1["greedy"] != tp1["seeded"]
    assert {"abprof.forward.mb0", "abprof.forward.mb1", "abprof.forward.lm_head"} <= rank0["names"]
    assert {"abprof.forward.mb0", "abprof.forward.mb1"} <= rank1["names"]


@pytest.mark.cuda
def test_tp_overlap_nccl_gives_the_tp2_greedy_tokens():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    from reference_engine.distributed import run_tp

    requests = make_workload(WORKLOAD, vocab_size=512)
    cfg = dict(ENGINE, device="cuda", dtype="float32")
    for mode in ("sync", "async"):
        plain = run_tp(EngineConfig(mode=mode, tp_size=2, **cfg), requests, warmup_steps=2)
        overlap = run_tp(EngineConfig(mode=mode, tp_size=2, tp_overlap=True, **cfg), requests, warmup_steps=2)
        assert overlap[0].result.tokens_sha256 == plain[0].result.tokens_sha256, mode
        assert "tp_overlap" in " ".join(overlap[1].notes)
