"""The split prefill/decode step: a step mixing decodes with other rows runs as two forward batches.

With ``split_prefill_decode`` the decode rows (one token each, sampled: CUDA-graph eligible) form the
first batch and every other row (prefill chunks) the second. On CUDA the second batch runs on its own
stream so that memory-bound decode and compute-bound prefill kernels can overlap (``cuda_device``); on
the CPU the two run one after the other. The two batches' logits meet, in the step's sampled-row order,
before sampling, so sampling sees the unsplit step.

``micro_batches`` cuts a step into two halves of rows for ``tp_overlap`` (see ``tp_overlap``), merged
back the same way.
"""

from __future__ import annotations

import torch

from reference_engine.scheduler import ScheduledBatch


def split_batch(batch: ScheduledBatch) -> tuple[ScheduledBatch, ScheduledBatch, list[int]] | None:
    """A step mixing decodes and other rows → (its decode rows, its other rows, merge index), or None.

    ``merge[r]`` is where the step's sampled row ``r`` sits in the decode batch's samples followed by
    the other batch's samples.
    """
    if batch.decode_only:
        return None
    sampled = set(batch.sample_rows)
    dec = [i for i in batch.sample_rows if batch.lens[i] == 1]
    if not dec:
        return None
    is_dec = set(dec)
    rest = [i for i in range(len(batch.seqs)) if i not in is_dec]
    where = {i: j for j, i in enumerate(dec)}
    where.update((i, len(dec) + j) for j, i in enumerate(i for i in rest if i in sampled))
    return sub_batch(batch, dec), sub_batch(batch, rest), [where[i] for i in batch.sample_rows]


def micro_batches(batch: ScheduledBatch) -> tuple[ScheduledBatch, ScheduledBatch, list[int]] | None:
    """``tp_overlap``: a step of two or more rows → (its first rows, the rest, merge index), or None.

    The cut keeps rows contiguous and balances the two halves' token counts (a long prefill chunk can
    still make them uneven: rows are not split). ``merge`` as in ``split_batch``.
    """
    n = len(batch.seqs)
    if n < 2:
        return None
    total, seen, cut, best = batch.num_tokens, 0, 1, None
    for c in range(1, n):
        seen += batch.lens[c - 1]
        gap = abs(total - 2 * seen)
        if best is None or gap < best:
            cut, best = c, gap
    first, rest = list(range(cut)), list(range(cut, n))
    sampled = set(batch.sample_rows)
    where = {i: j for j, i in enumerate(i for i in first + rest if i in sampled)}
    return sub_batch(batch, first), sub_batch(batch, rest), [where[i] for i in batch.sample_rows]


def sub_batch(batch: ScheduledBatch, rows: list[int]) -> ScheduledBatch:
    """The rows ``rows`` of a step as a batch of their own (sampled rows keep their relative order)."""
    sampled = set(batch.sample_rows)
    samples = [j for j, i in enumerate(rows) if i in sampled]
    tokens = sum(batch.lens[i] for i in rows)
    return ScheduledBatch([batch.seqs[i] for i in rows], [batch.starts[i] for i in rows],
                          [batch.lens[i] for i in rows], samples, [], tokens,
                          tokens == len(rows) == len(samples), [batch.block_tables[i] for i in rows])


def merge_logits(first: torch.Tensor, second: torch.Tensor, merge: torch.Tensor) -> torch.Tensor:
    """The two batches' logits in the step's sampled-row order (``merge``: the device merge index)."""
    return torch.cat([first, second]).index_select(0, merge)
