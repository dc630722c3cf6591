"""The runner's vectorized input preparation equals a plain per-token computation, step after step."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from reference_engine.block_manager import BlockManager
from reference_engine.cuda_graphs import graph_batch_sizes
from reference_engine.model_runner import ModelRunner
from reference_engine.records import RequestRecord
from reference_engine.scheduler import Scheduler
from reference_engine.sequence import Request, Sequence


@pytest.mark.parametrize("seed", range(4))
def test_prepare_matches_naive(seed):
    rng = random.Random(seed)
    bs, max_t, max_s, max_len = 4, 48, 6, 128
    seqs = []
    for i in range(14):
        req = Request(i, [rng.randrange(1, 50) for _ in range(rng.randint(1, 40))], rng.randint(1, 20))
        seqs.append(Sequence(req, RequestRecord(i, req.prompt_len, req.max_new_tokens, 0.0)))
    sched = Scheduler(BlockManager(24, bs), max_t, max_s, max_len)
    sched.add(seqs)
    runner = ModelRunner(None, None, max_batch_tokens=max_t, max_seqs=max_s, block_size=bs, max_model_len=max_len,
                         device=torch.device("cpu"), cuda_graphs=False, worker_thread=False)
    runner.graph_sizes = graph_batch_sizes(max_s)  # exercise the padding of decode steps too
    inflight, step = [], 0
    while sched.has_unfinished or inflight:
        batch = sched.schedule(0.0) if sched.has_unfinished else None
        if batch is not None:
            k = step % 2
            plan = runner.prepare(batch, k)
            v = runner.np_views[k]
            ids, pos, slots, qsl, ctx = [], [], [], [0], []
            for seq, table, start, n in zip(batch.seqs, batch.block_tables, batch.starts, batch.lens):
                for p in range(start, start + n):
                    ids.append(seq.token_ids[p])
                    pos.append(p)
                    slots.append(table[p // bs] * bs + p % bs)
                qsl.append(qsl[-1] + n)
                ctx.append(start + n)
            t, b = len(ids), len(batch.seqs)
            assert plan.num_tokens == t and plan.num_seqs == b
            ids = np.array(ids)
            gather = np.where(ids < 0, -ids - 1, -1)
            assert (v["ids"][:t] == np.where(ids < 0, 0, ids)).all()
            assert plan.has_gather == bool((ids < 0).any())
            if plan.has_gather:
                assert (v["gather"][:t] == gather).all()
            assert (v["pos"][:t] == pos).all() and (v["slot"][:t] == slots).all()
            assert (v["qsl"][:b + 1] == qsl).all() and (v["ctx"][:b] == ctx).all()
            for i, table in enumerate(batch.block_tables):
                assert (v["bt"][i, :len(table)] == table).all()
            assert (v["sample"][:len(batch.sample_rows)] == [qsl[r + 1] - 1 for r in batch.sample_rows]).all()
            if plan.graph_bs:
                assert batch.decode_only and plan.graph_bs >= b
                assert (v["slot"][b:plan.graph_bs] == -1).all() and (v["ctx"][b:plan.graph_bs] == 0).all()
                assert (v["qsl"][:plan.graph_bs + 1] == np.arange(plan.graph_bs + 1)).all()
            inflight.append(batch)
            step += 1
        while len(inflight) > (1 if batch is not None else 0):
            done = inflight.pop(0)
            sched.update(done, [rng.randrange(1, 50) for _ in done.sample_rows], 0.0)
    assert sum(s.record.preemptions for s in seqs) > 0 or seed != 0


def test_warmup_shapes_writes_nothing_and_generation_is_unchanged():
    from reference_engine import EngineConfig, LLMEngine, WorkloadConfig, make_workload

    engine = LLMEngine(EngineConfig(device="cpu", max_batch_tokens=200, max_seqs=40, num_blocks=64))
    reqs = make_workload(WorkloadConfig(num_requests=6, prompt_len="uniform:4:90", output_len="fixed:4"), 512)
    before = engine.generate(reqs)
    cache = engine.kv_cache.clone()
    engine.runner.warmup_shapes(on_cpu=True)
    assert torch.equal(cache, engine.kv_cache)
    after = engine.generate(reqs)
    assert [r.output_token_ids for r in before.records] == [r.output_token_ids for r in after.records]


def test_waiting_for_a_host_buffer_is_a_sync_wait():
    """``launch`` blocks on the copy still reading its host buffer only inside ``abprof.sync_wait``."""
    import threading

    from torch.profiler import ProfilerActivity, profile

    runner = ModelRunner(None, None, max_batch_tokens=8, max_seqs=2, block_size=4, max_model_len=16,
                         device=torch.device("cpu"), cuda_graphs=False, worker_thread=True)
    release = threading.Event()
    pending = runner.device_side._worker.submit(release.wait)
    runner.device_side._copy_done[0] = pending
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        threading.Timer(0.05, release.set).start()
        runner.wait_buffer(1)  # nothing pending: no wait recorded
        runner.wait_buffer(0)
    runner.close()
    waits = [e for e in prof.events() if e.name == "abprof.sync_wait"]
    assert pending.done() and len(waits) == 1
    assert waits[0].cpu_time_total >= 40_000


def test_piece_bounds_grow_so_the_host_stays_ahead():
    from reference_engine.cuda_graphs import piece_bounds

    for n in range(1, 90):
        b = piece_bounds(n)
        assert b[0] == 0 and b[-1] == n and b == sorted(set(b))
        assert b[1] == 1  # the GPU starts after one layer's launch
        assert all(hi - lo <= 3 * max(lo, 1) for lo, hi in zip(b, b[1:]))
        assert piece_bounds(n, piecewise=False) == [0, n]
    assert piece_bounds(16) == [0, 1, 4, 16]


def test_forward_in_pieces_is_forward():
    from reference_engine.attention import AttentionMetadata
    from reference_engine.config import preset_config
    from reference_engine.model import CausalLM, init_random_weights

    model = CausalLM(preset_config("tiny")).eval()
    init_random_weights(model, 0)
    n, bs = len(model.layers), 16
    kv = torch.zeros(2, n, 8, bs, model.layers[0].self_attn.num_kv_heads, model.head_dim)
    ids, pos = torch.tensor([3, 5, 7]), torch.arange(3)
    meta = AttentionMetadata(torch.arange(3), torch.tensor([0, 3], dtype=torch.int32), torch.tensor([3], dtype=torch.int32),
                             torch.zeros(1, 1, dtype=torch.int32), 3, 3, [0, 3], [3])
    with torch.inference_mode():
        whole = model(ids, pos, meta, kv.clone())
        state = model.start(ids, pos)
        kv2 = kv.clone()
        for lo in range(n):
            state = model.run_layers(state, meta, kv2, lo, lo + 1)
        assert torch.equal(model.finish(state), whole)
