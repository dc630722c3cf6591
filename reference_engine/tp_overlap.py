"""Communication overlap at tensor parallelism (``EngineConfig.tp_overlap``): two micro-batches, pipelined.

At TP=N every layer ends its attention and its MLP with a row-parallel GEMM followed by an all-reduce
(``tensor_parallel``); run plainly, the device does nothing useful while each all-reduce runs. With
``tp_overlap`` a step of two or more sequences is cut into two micro-batches of contiguous rows
(``split_step.micro_batches``: balanced by tokens, each with its own attention metadata and host/device
buffer part, exactly like a split prefill/decode step), and their layers are interleaved:

    A: attn ─ o_proj ─┐ AR(A)                 ┌ wait A ─ mlp ─ down ─┐ AR(A)       ┌ wait A ─ attn(L+1) ...
    B:                └ attn ─ o_proj ─┐ AR(B) │                     └ wait B ─ mlp ─ down ─┐ AR(B) ...

so that **A's all-reduce runs while B's GEMMs (and attention) run, and B's while A's run**. Each
micro-batch is a generator over its layer's phases that issues its all-reduce with ``async_op=True``
(``RowParallelLinear.start``) and yields the work handle; ``pipelined_forward`` resumes the other
micro-batch before waiting on that handle. Where the all-reduce runs:

- CPU (gloo): gloo runs the collective on its own thread; ``work.wait()`` blocks the host until it is
  done, by which time the other micro-batch's phase has run on the engine thread.
- CUDA (NCCL): ProcessGroupNCCL runs the collective on its own internal stream, ordered after the
  current (compute) stream by an event; ``work.wait()`` makes the compute stream wait for it without
  blocking the host. The other micro-batch's kernels, enqueued in between, overlap it on the GPU.

The LM head and its all-gather run per micro-batch after the last layer; the two logits meet in the
step's sampled-row order (``merge``) before sampling, so greedy and seeded sampling see the same logits
as the unsplit step (fp32; bf16 GEMMs may round differently at other row counts).

The cost: every layer's GEMMs run twice on half the rows (lower GEMM efficiency for small batches,
twice the kernel launches and the weight reads; each eager micro-batch is padded to a multiple of
``TOKEN_BUCKET`` rows, so a decode step of up to 64 sequences runs two 64-row GEMMs where it ran one),
plus one more gather of the LM head. It pays when an
all-reduce costs about as much as a micro-batch's phase; for one sequence there is nothing to split
and the step runs as usual. CUDA graphs stay off at TP > 1. Profiler ranges: each micro-batch phase is
``abprof.forward.mb0`` / ``abprof.forward.mb1`` (the attention or MLP half of one layer), a host wait
on an all-reduce (gloo only; NCCL waits are on the stream) ``abprof.forward.allreduce_wait``, the two
LM heads ``abprof.forward.lm_head``.
"""

from __future__ import annotations

import contextlib

import torch
from torch.profiler import record_function

from reference_engine.attention import AttentionMetadata
from reference_engine.tensor_parallel import RowParallelLinear

PHASE = ("abprof.forward.mb0", "abprof.forward.mb1")
WAIT = "abprof.forward.allreduce_wait"
LM_HEAD = "abprof.forward.lm_head"


def _start(linear, x: torch.Tensor) -> tuple[torch.Tensor, object | None]:
    """A row-parallel GEMM with its all-reduce issued (→ output, work); a plain linear: no work."""
    if isinstance(linear, RowParallelLinear):
        return linear.start(x)
    return linear(x), None


def layer_phases(model, ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                 kv_cache: torch.Tensor):
    """One micro-batch's forward as a generator: it yields the work handle (or None) of each all-reduce it
    issued, to be waited on before it is resumed, and returns the final hidden states ``[T, hidden]``.
    Same arithmetic as ``CausalLM.forward``."""
    x, residual = model.embed_tokens(ids), None
    cos_sin = model.rope(positions)
    for i, layer in enumerate(model.layers):
        if residual is None:
            x, residual = layer.input_layernorm(x), x
        else:
            x, residual = layer.input_layernorm(x, residual)
        attn = layer.self_attn
        x, work = _start(attn.o_proj, attn.attend(x, cos_sin, meta, kv_cache[0, i], kv_cache[1, i]))
        yield work
        x, residual = layer.post_attention_layernorm(x, residual)
        x, work = _start(layer.mlp.down_proj, layer.mlp.act(x))
        yield work
    return model.norm(x, residual)[0]


def pipelined_forward(phases: list, annotate: bool = True) -> list[torch.Tensor]:
    """Run micro-batch generators (``layer_phases``) in turn, each phase of one issued before the other's
    pending all-reduce is waited on; → each one's final hidden states, in order."""
    def note(name):
        return record_function(name) if annotate else contextlib.nullcontext()

    pending: list[object | None] = [None] * len(phases)
    out: list[torch.Tensor | None] = [None] * len(phases)
    live = list(range(len(phases)))
    while live:
        for j in list(live):
            if pending[j] is not None:
                with note(WAIT):
                    pending[j].wait()
                pending[j] = None
            try:
                with note(PHASE[j % 2]):
                    pending[j] = next(phases[j])
            except StopIteration as stop:
                out[j] = stop.value
                live.remove(j)
    return out


def overlapped_logits(runner, plan, annotate: bool = True) -> torch.Tensor:
    """A two-part step (``plan`` and ``plan.part2``, inputs in ``runner.dev[0]`` / ``[1]``) pipelined;
    → the fp32 logits of its sampled rows in the step's order."""
    parts = [(plan, runner.dev[0]), (plan.part2, runner.dev[1])]
    gens = [layer_phases(runner.model, *runner.model_inputs(p, d), runner.kv_cache) for p, d in parts]
    hidden = pipelined_forward(gens, annotate)
    logits = []
    with record_function(LM_HEAD) if annotate else contextlib.nullcontext():
        for h, (p, d) in zip(hidden, parts):
            logits.append(runner.model.compute_logits(h[d["sample"][:p.padded_samples]])[:p.num_samples])
    return runner.merge(*logits, plan)
