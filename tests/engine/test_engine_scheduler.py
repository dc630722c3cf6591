"""Scheduler and block manager invariants under randomized workloads (no model: tokens are made up)."""

from __future__ import annotations

import random

import pytest

from reference_engine.block_manager import BlockManager
from reference_engine.records import RequestRecord
from reference_engine.scheduler import Scheduler
from reference_engine.sequence import Request, Sequence, Status


def _make(rng: random.Random, n: int, max_prompt: int, max_out: int) -> list[Sequence]:
    seqs = []
    for i in range(n):
        req = Request(i, [rng.randrange(1, 100) for _ in range(rng.randint(1, max_prompt))], rng.randint(1, max_out),
                      arrival_s=rng.choice([0.0, 0.0, rng.random() * 5]))
        seqs.append(Sequence(req, RequestRecord(i, req.prompt_len, req.max_new_tokens, req.arrival_s)))
    return seqs


def _check_invariants(sched: Scheduler, all_seqs: list[Sequence]) -> None:
    bm = sched.bm
    owned = [b for s in all_seqs for b in s.block_table]
    assert len(owned) == len(set(owned)), "a block is owned twice"
    assert len(set(bm.free_blocks)) == len(bm.free_blocks), "a block is free twice"
    assert not set(owned) & set(bm.free_blocks), "a block is both free and owned"
    assert len(owned) + bm.num_free == bm.num_blocks, "a block leaked"
    for s in all_seqs:
        if s.status is Status.RUNNING:
            assert len(s.block_table) * bm.block_size >= s.num_computed
        else:
            assert s.block_table == [], f"{s} holds blocks"


def _token(seq: Sequence, pos: int) -> int:
    """A deterministic fake token: depends only on the sequence and position."""
    return (seq.request_id * 7919 + pos * 31) % 97 + 1


def _drive(seqs, *, num_blocks, block_size, max_batch_tokens, max_seqs, lag: int, max_model_len=10_000,
           eos=None, seed=0):
    """Run the scheduler to the end; results come back ``lag`` steps late (0: sync, 1: async)."""
    sched = Scheduler(BlockManager(num_blocks, block_size), max_batch_tokens, max_seqs, max_model_len, eos)
    rejected = sched.add(seqs)
    accepted = [s for s in seqs if s not in rejected]
    inflight = []
    log = []
    now = 0.0
    for _ in range(100_000):
        if not sched.has_unfinished and not inflight:
            break
        batch = sched.schedule(now) if sched.has_unfinished else None
        if batch is not None:
            assert batch.num_tokens <= max_batch_tokens
            assert len(batch.seqs) <= max_seqs
            assert batch.num_tokens == sum(batch.lens) and all(n >= 1 for n in batch.lens)
            assert len({s.request_id for s in batch.seqs}) == len(batch.seqs)
            log.append([(s.request_id, st, n) for s, st, n in zip(batch.seqs, batch.starts, batch.lens)])
            inflight.append(batch)
        _check_invariants(sched, seqs)
        while len(inflight) > (lag if batch is not None else 0):
            done = inflight.pop(0)
            sched.update(done, [_token(done.seqs[i], p) for i, p in zip(done.sample_rows, done.sample_positions)],
                         now)
            _check_invariants(sched, seqs)
        if batch is None and not inflight and sched.has_unfinished:
            now = sched.next_arrival_s()
        now += 0.01
    else:  # pragma: no cover
        pytest.fail("scheduler did not finish")
    assert sched.bm.num_free == num_blocks
    return accepted, rejected, log


@pytest.mark.parametrize("seed", range(12))
def test_randomized_invariants_and_exact_outputs(seed):
    rng = random.Random(seed)
    block_size = rng.choice([1, 2, 4, 16])
    max_prompt, max_out = rng.choice([(8, 8), (40, 20), (100, 5)])
    num_blocks = rng.randint(-(-(max_prompt + max_out) // block_size), 3 * -(-(max_prompt + max_out) // block_size))
    seqs = _make(rng, rng.randint(1, 30), max_prompt, max_out)
    kw = dict(num_blocks=num_blocks, block_size=block_size, max_batch_tokens=rng.choice([1, 3, 16, 64, 512]),
              max_seqs=rng.choice([1, 2, 5, 64]))
    accepted, rejected, _ = _drive(seqs, lag=seed % 2, **kw)
    for s in accepted:
        assert s.status is Status.FINISHED and s.record.finish_reason == "length"
        assert s.record.output_token_ids == [_token(s, s.prompt_len + j) for j in range(s.max_new_tokens)]
        assert len(s.record.token_times_s) == s.max_new_tokens
    for s in rejected:
        assert s.record.finish_reason == "rejected" and s.record.rejected_reason


@pytest.mark.parametrize("seed", range(6))
def test_sync_and_async_schedules_are_identical(seed):
    """Scheduling depends on lengths only, so the async loop's one-step lag changes no batch."""
    rng = random.Random(100 + seed)
    kw = dict(num_blocks=rng.randint(12, 40), block_size=4, max_batch_tokens=rng.choice([8, 32, 128]),
              max_seqs=rng.choice([3, 8, 32]))
    logs, preempted = [], []
    for lag in (0, 1):
        seqs = _make(random.Random(seed), 20, 30, 12)
        for s in seqs:
            s.request.arrival_s = 0.0
        _, _, log = _drive(seqs, lag=lag, **kw)
        logs.append(log)
        preempted.append(sum(s.record.preemptions for s in seqs))
    assert logs[0] == logs[1]
    assert preempted[0] == preempted[1]


def test_preemption_happens_and_everything_finishes():
    rng = random.Random(7)
    seqs = _make(rng, 16, 30, 30)
    for s in seqs:
        s.request.arrival_s = 0.0
    accepted, rejected, _ = _drive(seqs, num_blocks=16, block_size=4, max_batch_tokens=64, max_seqs=16, lag=1)
    assert not rejected
    assert sum(s.record.preemptions for s in seqs) > 0
    for s in accepted:
        assert len(s.record.output_token_ids) == s.max_new_tokens


def test_eos_finishes_early_and_discards_the_extra_token():
    rng = random.Random(3)
    seqs = _make(rng, 10, 10, 30)
    eos = _token(seqs[0], seqs[0].prompt_len + 2)  # sequence 0's third output token
    for lag in (0, 1):
        seqs = _make(random.Random(3), 10, 10, 30)
        _drive(seqs, num_blocks=200, block_size=4, max_batch_tokens=64, max_seqs=8, lag=lag, eos=eos)
        for s in seqs:
            full = [_token(s, s.prompt_len + j) for j in range(s.max_new_tokens)]
            expect = full[:full.index(eos) + 1] if eos in full else full
            assert s.record.output_token_ids == expect
            assert s.record.finish_reason == ("eos" if eos in full else "length")
        assert seqs[0].record.finish_reason == "eos"


def test_rejections_have_reasons():
    seqs = [Sequence(Request(i, p, o), RequestRecord(i, len(p), o, 0.0))
            for i, (p, o) in enumerate([([1] * 10, 5), ([1] * 60, 10), ([1] * 30, 30), ([], 3), ([1], 0)])]
    sched = Scheduler(BlockManager(10, 4), 64, 8, max_model_len=64)
    rejected = sched.add(seqs, vocab_size=100)
    reasons = {s.request_id: s.record.rejected_reason for s in rejected}
    assert set(reasons) == {1, 2, 3, 4}
    assert "context" in reasons[1]
    assert "whole cache" in reasons[2]
    assert "empty" in reasons[3]
    assert "max_new_tokens" in reasons[4]
    assert sched.num_unfinished == 1
