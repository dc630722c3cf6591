"""On CUDA: sync and async give identical tokens, with and without CUDA graphs (run on the device)."""

from __future__ import annotations

import pytest

from reference_engine import EngineConfig, LLMEngine, SamplingParams, WorkloadConfig, make_workload

pytestmark = pytest.mark.cuda


def _tokens(mode: str, graphs: bool, sampling=None, **kw):
    engine = LLMEngine(EngineConfig(mode=mode, device="cuda", cuda_graphs=graphs, **kw))
    reqs = make_workload(WorkloadConfig(num_requests=24, prompt_len="uniform:4:300", output_len="uniform:1:40",
                                        seed=7), vocab_size=engine.vocab_size)
    result = engine.generate(reqs, sampling=sampling)
    assert engine.cuda_graphs == graphs or not graphs
    assert result.output_tokens == sum(r.max_new_tokens for r in reqs)
    return [r.output_token_ids for r in result.records], sum(r.preemptions for r in result.records)


@pytest.mark.parametrize("graphs", [False, True])
@pytest.mark.parametrize("cache", ["roomy", "tight"])
def test_sync_equals_async_on_cuda(graphs, cache):
    kw = dict(max_batch_tokens=256, max_seqs=16)
    if cache == "tight":
        kw.update(num_blocks=40, block_size=16)
    sync, p1 = _tokens("sync", graphs, **kw)
    asyn, p2 = _tokens("async", graphs, **kw)
    assert sync == asyn
    assert p1 == p2
    if cache == "tight":
        assert p1 > 0


def test_graphs_match_eager_on_cuda_fp32():
    """fp32 makes graph and eager decode numerically equal enough for identical greedy tokens."""
    kw = dict(max_batch_tokens=256, max_seqs=16, dtype="float32")
    eager, _ = _tokens("sync", False, **kw)
    graph, _ = _tokens("async", True, **kw)
    assert eager == graph


def test_seeded_sampling_sync_equals_async_on_cuda():
    params = SamplingParams(temperature=0.8, top_k=50, top_p=0.9)
    kw = dict(max_batch_tokens=256, max_seqs=16)
    sync, _ = _tokens("sync", True, params, **kw)
    asyn, _ = _tokens("async", True, params, **kw)
    greedy, _ = _tokens("sync", True, **kw)
    assert sync == asyn
    assert sync != greedy


def test_piecewise_graphs_give_the_one_graph_tokens_on_cuda():
    """The decode graphs in pieces (the default) replay the same kernels as one graph: identical tokens."""
    kw = dict(model="llama-1b", max_batch_tokens=256, max_seqs=16, num_blocks=256)
    engine = LLMEngine(EngineConfig(mode="sync", device="cuda", **kw))
    assert engine.describe()["graph_piece_layers"] == [0, 1, 4, 16]
    assert all(len(g.graphs) == 3 for g, _ in engine.runner.graphs.values())
    engine.close()
    pieces, _ = _tokens("sync", True, **kw)
    one, _ = _tokens("sync", True, piecewise_graphs=False, **kw)
    assert pieces == one


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_host_buffer_reuse_needs_no_event_query_after_the_wait(mode):
    """A host buffer's copy belongs to a step two launches back, whose tokens both loops have waited for by
    then: copy_pending answers from that without querying the copy's event (a recorded host call on the
    sync loop's critical path); a copy of a step not yet waited for is still queried. With every launched step
    waited for (the sync loop), the inputs skip the staging buffers."""
    engine = LLMEngine(EngineConfig(mode=mode, device="cuda", max_batch_tokens=256, max_seqs=16))
    dev = engine.runner.device_side
    queried = []
    for ev in dev.ev_h2d:
        ev.query = lambda ev=ev, q=ev.query: queried.append(ev) or q()
    reqs = make_workload(WorkloadConfig(num_requests=8, prompt_len="uniform:4:60", output_len="fixed:12"),
                         vocab_size=engine.vocab_size)
    result = engine.generate(reqs)
    assert result.output_tokens == 8 * 12 and not queried
    # the sync loop's inputs go straight into the buffers the model reads; the async loop's through staging
    staged = any(bool(stage.any()) for per_part in dev.stage for stage in per_part)
    assert staged == (mode == "async")
    assert dev.copy_pending(0) is None and dev.copy_pending(1) is None
    dev._finished = -1  # as if no step had been waited for: the events are asked again
    dev.copy_pending(0)
    assert queried


def _profiled_forwards(engine, reqs, tmp_path):
    """Generate under torch.profiler; → (per ``abprof.forward`` on the host: its ``aten::copy_`` count,
    the number of host-to-device copies on the GPU)."""
    import json

    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        engine.generate(reqs)
        torch.cuda.synchronize()
    path = tmp_path / "trace.json"
    prof.export_chrome_trace(str(path))
    events = [e for e in json.loads(path.read_text())["traceEvents"] if e.get("ph") == "X"]
    forwards = [e for e in events if e["name"] == "abprof.forward" and e.get("cat") == "user_annotation"]
    copies = [e for e in events if e["name"] == "aten::copy_" and e.get("cat") == "cpu_op"]
    per_forward = [sum(1 for c in copies if c["tid"] == f["tid"] and f["ts"] <= c["ts"] < f["ts"] + f["dur"])
                   for f in forwards]
    h2d = sum(1 for e in events if e.get("cat") == "gpu_memcpy" and "HtoD" in e["name"])
    return per_forward, h2d


@pytest.mark.parametrize("graph_copy", [True, False])
def test_sync_decode_steps_copy_their_inputs_in_the_first_piece(graph_copy, tmp_path):
    """With ``graph_copy`` (the default) a sync decode step's input copy is a node of its first piece: no
    ``copy_`` on the host, and still one host-to-device copy per step on the GPU; the tokens are those of the
    plain copy and of the async loop (which replays the first piece without the copy)."""
    engine = LLMEngine(EngineConfig(mode="sync", device="cuda", max_batch_tokens=256, max_seqs=16,
                                    graph_copy=graph_copy))
    assert engine.runner.copy_graphs == graph_copy == engine.describe()["graph_copy"]
    reqs = make_workload(WorkloadConfig(num_requests=8, prompt_len="uniform:4:60", output_len="fixed:12", seed=3),
                         vocab_size=engine.vocab_size)
    engine.generate(reqs)  # warm
    per_forward, h2d = _profiled_forwards(engine, reqs, tmp_path)
    assert h2d == len(per_forward) >= 12  # every step's inputs reach the GPU (a prefill, then 11 decode steps)
    no_copy = sum(1 for n in per_forward if n == 0)
    assert no_copy >= 10 if graph_copy else no_copy == 0
    tokens = [r.output_token_ids for r in engine.generate(reqs).records]
    plain = LLMEngine(EngineConfig(mode="sync", device="cuda", max_batch_tokens=256, max_seqs=16, graph_copy=False))
    assert tokens == [r.output_token_ids for r in plain.generate(reqs).records]
    asyn = LLMEngine(EngineConfig(mode="async", device="cuda", max_batch_tokens=256, max_seqs=16))
    assert tokens == [r.output_token_ids for r in asyn.generate(reqs).records]
