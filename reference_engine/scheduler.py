"""Continuous batching: FIFO admission under a token budget, chunked prefill, mixed steps, preemption.

No torch here. Each step the scheduler first continues the running sequences (oldest first: a decode
token, or the next chunk of an unfinished prefill), then admits waiting ones (FIFO) with what is left
of ``max_batch_tokens`` and ``max_seqs``. When the cache has no block for a running sequence, the
newest running sequence is preempted: its blocks are freed and it is recomputed later from its
prompt and the tokens it already has.

``schedule`` advances the sequences at once, as if the step had already run (see ``sequence.py``):
a sequence whose last token is in the step gets a placeholder for the token it will sample, and one
whose every output token is now scheduled gives its blocks back (its K/V are no longer needed: the
device runs steps in order, so a later step may reuse them). Scheduling therefore depends only on
lengths, never on token values, and the sync and async loops see the same batches. ``update`` writes
the sampled values over the placeholders and finishes requests (at their length, or at EOS).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from reference_engine.block_manager import BlockManager
from reference_engine.sequence import Sequence, Status


@dataclass(slots=True)
class ScheduledBatch:
    """One step: sequence ``i`` computes tokens ``starts[i] .. starts[i]+lens[i]-1``."""

    seqs: list[Sequence]
    starts: list[int]
    lens: list[int]
    sample_rows: list[int]  # indices into seqs that sample a token, in sampled-row order
    sample_positions: list[int]  # where each sampled token goes in its sequence's token_ids
    num_tokens: int
    decode_only: bool  # every sequence computes one token and samples (CUDA-graph eligible)
    block_tables: list[list[int]]  # taken before a finished sequence gives its blocks back


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_batch_tokens: int, max_seqs: int, max_model_len: int,
                 eos_token_id: int | None = None):
        self.bm = block_manager
        self.max_batch_tokens = max_batch_tokens
        self.max_seqs = max_seqs
        self.max_model_len = max_model_len
        self.eos_token_id = eos_token_id
        self.future: deque[Sequence] = deque()  # not arrived yet, by arrival time
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_unfinished = 0

    # ---- admission ---------------------------------------------------------------------------
    def rejection_reason(self, seq: Sequence, vocab_size: int | None = None) -> str | None:
        req = seq.request
        if seq.prompt_len < 1:
            return "empty prompt"
        if req.max_new_tokens < 1:
            return f"max_new_tokens must be >= 1, got {req.max_new_tokens}"
        total = seq.prompt_len + req.max_new_tokens
        if total > self.max_model_len:
            return (f"prompt ({seq.prompt_len}) + max_new_tokens ({req.max_new_tokens}) = {total} tokens "
                    f"exceeds the model's context ({self.max_model_len})")
        blocks = self.bm.blocks_for(total - 1)  # the last token's K/V are never written
        if blocks > self.bm.num_blocks:
            return (f"needs {blocks} KV-cache blocks, more than the whole cache ({self.bm.num_blocks} blocks "
                    f"of {self.bm.block_size} tokens)")
        if vocab_size is not None and (min(req.prompt_token_ids) < 0 or max(req.prompt_token_ids) >= vocab_size):
            return f"prompt token ids must be in [0, {vocab_size})"
        return None

    def add(self, seqs: list[Sequence], vocab_size: int | None = None) -> list[Sequence]:
        """Queue sequences (by arrival); returns those rejected (their records say why)."""
        rejected = []
        for seq in sorted(seqs, key=lambda s: s.request.arrival_s):
            reason = self.rejection_reason(seq, vocab_size)
            if reason is not None:
                seq.status = Status.FINISHED
                seq.record.rejected_reason = reason
                seq.record.finish_reason = "rejected"
                rejected.append(seq)
            else:
                self.future.append(seq)
                self.num_unfinished += 1
        return rejected

    def admit_arrivals(self, now: float) -> None:
        while self.future and self.future[0].request.arrival_s <= now:
            self.waiting.append(self.future.popleft())

    def next_arrival_s(self) -> float | None:
        return self.future[0].request.arrival_s if self.future else None

    @property
    def has_unfinished(self) -> bool:
        return self.num_unfinished > 0

    # ---- scheduling --------------------------------------------------------------------------
    def schedule(self, now: float) -> ScheduledBatch | None:
        self.admit_arrivals(now)
        bm = self.bm
        budget = self.max_batch_tokens
        seqs: list[Sequence] = []
        lens: list[int] = []
        preempted = False
        running = self.running
        bs, free = bm.block_size, bm.free_blocks
        i = 0
        while i < len(running) and budget > 0 and len(seqs) < self.max_seqs:
            seq = running[i]
            n = len(seq.token_ids) - seq.num_computed
            if n > budget:
                n = budget
            target = seq.num_computed + n
            need = (target + bs - 1) // bs - len(seq.block_table)
            if need > 0:
                while need > len(free):  # out of blocks: preempt the newest running sequence
                    victim = running[-1]
                    self._preempt(victim)
                    preempted = True
                    if victim is seq:
                        break
                if seq.status is not Status.RUNNING:
                    break
                bm.grow(seq, target)
            seqs.append(seq)
            lens.append(n)
            budget -= n
            i += 1
        if not preempted:
            waiting = self.waiting
            while waiting and budget > 0 and len(seqs) < self.max_seqs:
                seq = waiting[0]
                n = min(seq.num_tokens - seq.num_computed, budget)
                if not bm.can_grow(seq, seq.num_computed + n):
                    break
                waiting.popleft()
                bm.grow(seq, seq.num_computed + n)
                seq.status = Status.RUNNING
                running.append(seq)
                if seq.record.scheduled_s is None:
                    seq.record.scheduled_s = now
                seqs.append(seq)
                lens.append(n)
                budget -= n
        if not seqs:
            return None
        return self._advance(seqs, lens)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.bm.free(seq)
        seq.num_computed = 0
        seq.status = Status.WAITING
        seq.record.preemptions += 1
        self.waiting.appendleft(seq)

    def _advance(self, seqs: list[Sequence], lens: list[int]) -> ScheduledBatch:
        """Count the step as done: computed tokens advance, samplers get a placeholder token."""
        starts = []
        tables = [seq.block_table for seq in seqs]  # free() rebinds seq.block_table, these lists stay
        sample_rows: list[int] = []
        sample_positions: list[int] = []
        drained = False
        for idx, seq in enumerate(seqs):
            start = seq.num_computed
            starts.append(start)
            seq.num_computed = start + lens[idx]
            if seq.num_computed == len(seq.token_ids):
                sample_positions.append(len(seq.token_ids))
                seq.token_ids.append(-(len(sample_rows) + 1))
                sample_rows.append(idx)
                seq.num_scheduled_outputs += 1
                if seq.num_scheduled_outputs >= seq.request.max_new_tokens:
                    self.bm.free(seq)
                    seq.status = Status.DRAINING
                    drained = True
        if drained:
            self.running = [s for s in self.running if s.status is Status.RUNNING]
        num_tokens = sum(lens)
        return ScheduledBatch(seqs, starts, lens, sample_rows, sample_positions, num_tokens,
                              num_tokens == len(seqs) == len(sample_rows), tables)

    # ---- results -----------------------------------------------------------------------------
    def update(self, batch: ScheduledBatch, tokens: list[int], now: float) -> list[Sequence]:
        """Write a step's sampled tokens; returns the sequences that finished."""
        finished = []
        eos = self.eos_token_id
        seqs, positions = batch.seqs, batch.sample_positions
        for row, idx in enumerate(batch.sample_rows):
            seq = seqs[idx]
            if seq.status is Status.FINISHED:  # ended at EOS a step ago: this token is discarded
                continue
            token = tokens[row]
            seq.token_ids[positions[row]] = token
            seq.num_known_outputs += 1
            record = seq.record
            record.token_times_s.append(now)
            if record.first_token_s is None:
                record.first_token_s = now
            if eos is not None and token == eos:
                self._finish(seq, "eos", now, positions[row] + 1)
                finished.append(seq)
            elif seq.num_known_outputs >= seq.request.max_new_tokens:
                self._finish(seq, "length", now, positions[row] + 1)
                finished.append(seq)
        return finished

    def _finish(self, seq: Sequence, reason: str, now: float, length: int) -> None:
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
            self.bm.free(seq)
        elif seq.status is Status.WAITING:
            self.waiting.remove(seq)
        del seq.token_ids[length:]
        seq.status = Status.FINISHED
        seq.record.finish_reason = reason
        seq.record.finish_s = now
        seq.record.output_token_ids = seq.token_ids[seq.prompt_len:]
        self.num_unfinished -= 1
