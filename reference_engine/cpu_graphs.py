"""Decode steps on the CPU through one traced call: the CPU's counterpart of the decode CUDA graphs.

Run eagerly, a decode step on the CPU is ~100 small torch calls from Python, and their dispatch is most of
its time for the small models the CPU runs. ``torch.jit.trace`` records the device side of a decode step
once (the placeholder-token gather, the forward, greedy sampling); calling the trace runs all of it in
TorchScript's interpreter: the default workload runs about 1.65x faster (reports/cpu-default.md). (It does
not free the interpreter lock for the whole call, so a worker thread with the trace still waited for the
host thread's turn; the device process of ``cpu_process`` is what lets the async loop overlap.)

One trace serves every batch size and context length: the traced step reads only tensors (the host
buffer's rows, ``attention.paged_decode_padded`` with the block-table columns the caller passes; no
host list, no shape-dependent branch), so nothing is padded and nothing is re-traced. The host buffer
is read in place: on the CPU it is the device memory (the runner's ``wait_buffer`` keeps the host from
rewriting it while a step still reads it). Prefill and mixed steps stay eager.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from reference_engine.attention import AttentionMetadata


class _DecodeStep(nn.Module):
    """A decode-only step: ``(ids, positions, slot_mapping, context_lens, block_tables, kv_cache, gather,
    prev_tokens)`` → ``(logits, greedy tokens)``, one row per sequence. With ``gather``, ids whose gather
    index is >= 0 are the previous step's sampled tokens ``prev_tokens[index]`` (placeholders)."""

    def __init__(self, model, gather: bool):
        super().__init__()
        self.model = model
        self.gather = gather

    def forward(self, ids, pos, slot, ctx, bt, kv_cache, gather, prev_tokens):
        if self.gather:
            ids = torch.where(gather >= 0, prev_tokens[gather.clamp(min=0)], ids)
        # query_start_loc is not read on the traced path (one query per row)
        meta = AttentionMetadata(slot, ctx, ctx, bt, 1, 0, traced_decode=True)
        logits = self.model.compute_logits(self.model(ids, pos, meta, kv_cache))
        return logits, logits.argmax(dim=-1)


class DecodeTrace:
    """The traced decode step of ``model``, with and without the placeholder gather."""

    def __init__(self, model, kv_cache: torch.Tensor, d: dict):
        """``d``: named views of a host buffer (``step_inputs.layout``) to record on; two rows with every slot
        -1, so that nothing is written to ``kv_cache``."""
        rows, blocks = 2, 2
        d["slot"][:rows].fill_(-1)
        d["ctx"][:rows].fill_(1)
        d["gather"][:rows].fill_(-1)
        example = (d["ids"][:rows], d["pos"][:rows], d["slot"][:rows], d["ctx"][:rows], d["bt"][:rows, :blocks],
                   kv_cache, d["gather"][:rows], torch.zeros(rows, dtype=torch.int64))
        with warnings.catch_warnings(), torch.inference_mode():
            # torch.jit.trace is deprecated in favour of torch.compile/torch.export, which need a C++
            # toolchain on the CPU and compile for seconds to minutes; a trace takes milliseconds
            warnings.simplefilter("ignore")
            self._traces = {g: torch.jit.trace(_DecodeStep(model, g), example, check_trace=False)
                            for g in (False, True)}
        self.kv_cache = kv_cache

    def __call__(self, d: dict, num_seqs: int, blocks: int, prev_tokens: torch.Tensor | None):
        """``(logits, greedy tokens)`` of the decode step of ``num_seqs`` rows in buffer ``d`` whose longest
        context fits in ``blocks`` blocks; ``prev_tokens``: the previous step's tokens (None: no placeholders)."""
        b = num_seqs
        gather = prev_tokens is not None
        prev = prev_tokens if gather else d["gather"][:0]
        return self._traces[gather](d["ids"][:b], d["pos"][:b], d["slot"][:b], d["ctx"][:b], d["bt"][:b, :blocks],
                                    self.kv_cache, d["gather"][:b], prev)
