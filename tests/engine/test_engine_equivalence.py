"""Sync and async loops give identical tokens (CPU: a child process runs the device work, ``cpu_process``; with
``cpu_worker_process=False`` the async loop's runs on a worker thread)."""

from __future__ import annotations

import pytest
import torch

from reference_engine import EngineConfig, LLMEngine, Request, SamplingParams, WorkloadConfig, make_workload

WORKLOADS = {
    "mixed": (dict(), dict(num_requests=12, prompt_len="uniform:4:80", output_len="uniform:1:24")),
    "chunked": (dict(max_batch_tokens=24, max_seqs=5),
                dict(num_requests=10, prompt_len="lognormal:40:0.8:150", output_len="uniform:1:16", seed=1)),
    "preempt": (dict(num_blocks=14, block_size=8, max_batch_tokens=64),
                dict(num_requests=14, prompt_len="uniform:8:40", output_len="uniform:8:40", seed=2)),
    "one_seq": (dict(max_seqs=1, max_batch_tokens=16),
                dict(num_requests=4, prompt_len="uniform:1:40", output_len="fixed:5", seed=3)),
}


def _run(mode: str, engine_kw: dict, workload_kw: dict, sampling=None):
    engine = LLMEngine(EngineConfig(mode=mode, device="cpu", **engine_kw))
    try:
        reqs = make_workload(WorkloadConfig(**workload_kw), vocab_size=engine.vocab_size)
        return reqs, engine.generate(reqs, sampling=sampling)
    finally:
        engine.close()


def _check_records(reqs, result):
    assert [r.request_id for r in result.records] == [q.request_id for q in reqs]
    for q, rec in zip(reqs, result.records):
        assert rec.finish_reason == "length" and rec.rejected_reason is None
        assert len(rec.output_token_ids) == q.max_new_tokens
        assert all(0 <= t < 512 for t in rec.output_token_ids)
        assert len(rec.token_times_s) == q.max_new_tokens
        assert rec.token_times_s == sorted(rec.token_times_s)
        assert rec.arrival_s <= rec.scheduled_s <= rec.first_token_s == rec.token_times_s[0] <= rec.finish_s
    assert result.output_tokens == sum(q.max_new_tokens for q in reqs)
    assert result.wall_s > 0 and result.num_steps > 0 and result.start_epoch_ns > 0


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_sync_and_async_give_identical_tokens(name):
    engine_kw, workload_kw = WORKLOADS[name]
    reqs, sync = _run("sync", engine_kw, workload_kw)
    _, asyn = _run("async", engine_kw, workload_kw)
    _check_records(reqs, sync)
    _check_records(reqs, asyn)
    assert [r.output_token_ids for r in sync.records] == [r.output_token_ids for r in asyn.records]
    assert [r.preemptions for r in sync.records] == [r.preemptions for r in asyn.records]
    if name == "preempt":
        assert sum(r.preemptions for r in sync.records) > 0
    assert abs(sync.num_steps - asyn.num_steps) <= 1


def test_tokens_do_not_depend_on_batching():
    """Greedy tokens of a request are the same alone or batched with others (a check of the whole path)."""
    engine_kw, workload_kw = WORKLOADS["chunked"]
    reqs, batched = _run("async", engine_kw, workload_kw)
    engine = LLMEngine(EngineConfig(device="cpu", max_seqs=1))
    alone = [engine.generate([q]).records[0].output_token_ids for q in reqs[:3]]
    assert alone == [r.output_token_ids for r in batched.records[:3]]


def test_seeded_sampling_reproducible_and_identical_across_modes():
    params = SamplingParams(temperature=0.8, top_k=50, top_p=0.9)
    engine_kw, workload_kw = WORKLOADS["mixed"]
    _, a = _run("sync", engine_kw, workload_kw, params)
    _, b = _run("sync", engine_kw, workload_kw, params)
    _, c = _run("async", engine_kw, workload_kw, params)
    _, d = _run("sync", dict(engine_kw, seed=1), workload_kw, params)
    _, greedy = _run("sync", engine_kw, workload_kw)
    tokens = [[r.output_token_ids for r in x.records] for x in (a, b, c, d, greedy)]
    assert tokens[0] == tokens[1] == tokens[2]
    assert tokens[0] != tokens[4]  # sampling is not greedy
    # a different engine seed gives other weights and another generator: other tokens
    assert tokens[0] != tokens[3]


def test_sampler_top_k_one_is_greedy():
    from reference_engine.sampler import sample

    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    assert torch.equal(sample(logits, SamplingParams(temperature=1.5, top_k=1), g), logits.argmax(-1))
    assert torch.equal(sample(logits, SamplingParams(temperature=1.0, top_p=1e-6), g), logits.argmax(-1))
    with pytest.raises(ValueError):
        SamplingParams(top_p=0.0)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_eos_stops_requests(mode):
    engine = LLMEngine(EngineConfig(mode=mode, device="cpu", enable_eos=True))
    reqs = make_workload(WorkloadConfig(num_requests=6, prompt_len="uniform:4:30", output_len="fixed:20", seed=4),
                         vocab_size=engine.vocab_size)
    engine.eos_token_id = None
    free = engine.generate(reqs).records
    eos = free[0].output_token_ids[3]
    engine.eos_token_id = eos
    stopped = engine.generate(reqs).records
    engine.close()
    for f, s in zip(free, stopped):
        full = f.output_token_ids
        expect = full[:full.index(eos) + 1] if eos in full else full
        assert s.output_token_ids == expect
        assert s.finish_reason == ("eos" if eos in full else "length")
        assert len(s.token_times_s) == len(expect)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_rejected_requests_reported_while_others_run(mode):
    engine = LLMEngine(EngineConfig(mode=mode, device="cpu", num_blocks=8, block_size=8, max_model_len=100))
    reqs = [Request(0, [5] * 10, 4), Request(1, [5] * 95, 10), Request(2, [5] * 50, 30), Request(3, [5] * 3, 2),
            Request(4, [600], 2)]
    recs = engine.generate(reqs).records
    engine.close()
    assert [r.finish_reason for r in recs] == ["length", "rejected", "rejected", "length", "rejected"]
    assert "context" in recs[1].rejected_reason
    assert "whole cache" in recs[2].rejected_reason
    assert "[0, 512)" in recs[4].rejected_reason
    assert recs[1].output_token_ids == [] and recs[1].first_token_s is None
    assert len(recs[0].output_token_ids) == 4 and len(recs[3].output_token_ids) == 2


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_poisson_arrivals_and_annotations(mode):
    from torch.profiler import ProfilerActivity, profile

    engine = LLMEngine(EngineConfig(mode=mode, device="cpu"))
    engine.warmup(num_steps=3)
    reqs = make_workload(WorkloadConfig(num_requests=6, prompt_len="uniform:4:16", output_len="fixed:3",
                                        arrival_rate=200.0, seed=5), vocab_size=engine.vocab_size)
    steps = []
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        result = engine.generate(reqs, on_step=steps.append)
    engine.close()
    assert steps == list(range(result.num_steps))
    for q, rec in zip(reqs, result.records):
        assert rec.arrival_s == q.arrival_s > 0
        assert rec.scheduled_s >= rec.arrival_s
        assert len(rec.output_token_ids) == 3
    names = {e.name for e in prof.events()}
    expected = {"abprof.step", "abprof.schedule", "abprof.prepare", "abprof.forward", "abprof.sample",
                "abprof.update", "abprof.sync_wait"}
    expected.discard("abprof.sample")  # on the CPU a child process plays the device: its work is not here
    assert expected <= names and "abprof.sample" not in names


def test_describe_and_invalid_configs():
    d = LLMEngine(EngineConfig(device="cpu", num_blocks=32)).describe()
    assert (d["layers"], d["hidden"], d["heads"], d["kv_heads"], d["vocab"]) == (2, 64, 4, 2, 512)
    assert d["dtype"] == "float32" and d["device"] == "cpu" and d["num_blocks"] == 32 and d["params"] > 0
    assert d["graph_copy"] is False  # CUDA decode graphs only
    for bad in (dict(mode="fast"), dict(max_seqs=0), dict(block_size=-1), dict(model="no-such-model"),
                dict(dtype="int8"), dict(num_blocks=0), dict(kv_cache_memory_gb=-1), dict(device="tpu"),
                dict(graph_copy="yes")):
        with pytest.raises(ValueError, match="invalid EngineConfig"):
            EngineConfig(**bad)
    with pytest.raises(ValueError, match="CUDA"):
        LLMEngine(EngineConfig(device="cpu", cuda_graphs=True))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        LLMEngine(EngineConfig(device="cpu", max_model_len=4096))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_step_spans_are_recorded_for_every_step(mode):
    # the engine's own clock: one (start, end) per step, in order, inside the run's wall time
    from reference_engine import EngineConfig, LLMEngine, WorkloadConfig, make_workload

    engine = LLMEngine(EngineConfig(model="tiny", mode=mode))
    reqs = make_workload(WorkloadConfig(num_requests=4, prompt_len="fixed:8", output_len="fixed:5"),
                         vocab_size=engine.vocab_size)
    seen = []
    result = engine.generate(reqs, on_step=seen.append)
    engine.close()
    spans = result.step_spans_s
    assert len(spans) == result.num_steps == len(seen) and seen == list(range(len(spans)))
    assert all(0 <= s < e for s, e in spans)
    assert all(e1 <= s2 for (_, e1), (s2, _) in zip(spans, spans[1:]))
    assert spans[-1][1] <= result.wall_s


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_traced_cpu_decode_gives_the_eager_tokens(name):
    """The CPU's traced decode step (cpu_graphs, the default) against the eager forward, in both loops, greedy
    and seeded sampling; the traced path must actually have run (decode steps exist in every workload)."""
    engine_kw, workload_kw = WORKLOADS[name]
    seeded = SamplingParams(temperature=0.8, top_k=50, top_p=0.9)
    for mode in ("sync", "async"):
        for sampling in (None, seeded):
            _, eager = _run(mode, dict(engine_kw, cpu_graphs=False), workload_kw, sampling)
            # in this process (the default device process was forked with the trace and would hide the calls)
            engine = LLMEngine(EngineConfig(mode=mode, device="cpu", cpu_worker_process=False, **engine_kw))
            calls = []
            trace = engine.runner.decode_trace
            engine.runner.decode_trace = lambda *a: calls.append(1) or trace(*a)
            try:
                reqs = make_workload(WorkloadConfig(**workload_kw), vocab_size=engine.vocab_size)
                traced = engine.generate(reqs, sampling=sampling)
            finally:
                engine.close()
            assert engine.describe()["cpu_graphs"] is True and calls
            assert [r.output_token_ids for r in traced.records] == [r.output_token_ids for r in eager.records]


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_device_process_gives_the_worker_thread_tokens(name):
    """The device work in a child process (the CPU default) against the same engine run in this process (the
    sync loop inline, the async loop on a worker thread), greedy and seeded sampling, and the process stops."""
    engine_kw, workload_kw = WORKLOADS[name]
    seeded = SamplingParams(temperature=0.8, top_k=50, top_p=0.9)
    for mode in ("sync", "async"):
        for sampling in (None, seeded):
            _, here = _run(mode, dict(engine_kw, cpu_worker_process=False), workload_kw, sampling)
            engine = LLMEngine(EngineConfig(mode=mode, device="cpu", **engine_kw))
            proc = engine.runner.device_side._proc
            assert engine.describe()["cpu_worker_process"] is True and proc.is_alive()
            reqs = make_workload(WorkloadConfig(**workload_kw), vocab_size=engine.vocab_size)
            child = engine.generate(reqs, sampling=sampling)
            engine.close()
            assert not proc.is_alive()
            assert [r.output_token_ids for r in child.records] == [r.output_token_ids for r in here.records]
            assert [r.preemptions for r in child.records] == [r.preemptions for r in here.records]


def test_device_process_failure_is_one_error_not_a_hang():
    """A step that fails in the device process raises DeviceProcessError in the host with the child's traceback;
    a device process that dies raises too, instead of the host waiting for tokens forever."""
    import os
    import signal

    from reference_engine.cpu_process import DeviceProcessError

    import reference_engine.model_runner as model_runner

    def broken(logits, params, generator):
        raise ValueError("no sampling today")

    with pytest.MonkeyPatch.context() as patch:  # the child is forked with the patched sampler
        patch.setattr(model_runner, "sample", broken)
        engine = LLMEngine(EngineConfig(mode="sync", device="cpu"))
    reqs = make_workload(WorkloadConfig(num_requests=2, prompt_len="fixed:8", output_len="fixed:3"),
                         vocab_size=engine.vocab_size)
    with pytest.raises(DeviceProcessError, match="(?s)failed a step.*no sampling today"):
        engine.generate(reqs, sampling=SamplingParams(temperature=1.0))
    engine.close()
    engine = LLMEngine(EngineConfig(mode="async", device="cpu"))
    os.kill(engine.runner.device_side._proc.pid, signal.SIGKILL)
    with pytest.raises(DeviceProcessError, match="died|closed"):
        engine.generate(reqs)
    engine.close()


def test_a_stuck_device_process_is_an_error_not_a_hang():
    """A device process that is alive but does not answer (stuck in a step) raises DeviceProcessError after the
    reply timeout, and is stopped."""
    import time

    from reference_engine.cpu_process import DeviceProcessError

    import reference_engine.model_runner as model_runner

    def stuck(logits, params, generator):
        time.sleep(3600)

    with pytest.MonkeyPatch.context() as patch:  # the child is forked with the patched sampler
        patch.setattr(model_runner, "sample", stuck)
        engine = LLMEngine(EngineConfig(mode="sync", device="cpu"))
    device = engine.runner.device_side
    device.reply_timeout_s = 1.0
    reqs = make_workload(WorkloadConfig(num_requests=2, prompt_len="fixed:8", output_len="fixed:3"),
                         vocab_size=engine.vocab_size)
    t = time.monotonic()
    with pytest.raises(DeviceProcessError, match="not finished step 0 in 1 s while alive"):
        engine.generate(reqs, sampling=SamplingParams(temperature=1.0))
    assert time.monotonic() - t < 30
    assert not device._proc.is_alive()
    engine.close()
