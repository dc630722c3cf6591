"""A step's inputs on the host: the buffers they are written into, and ``prepare`` (numpy, no torch ops).

Each of the two alternating host buffers is one byte tensor (pinned on CUDA), so that a step's whole
input is one contiguous block: one H2D copy per batch part (its int64 and int32 sections together), and
(tensor parallelism) one broadcast. Layout of buffer ``k``:

- a header of ``HEADER_WORDS`` int64 (the ``StepPlan``, written only when the step is broadcast);
- per batch part (one, or two with a split step): an int64 section ``[ids | positions | slot_mapping |
  gather index]`` (``max_t`` each) ``[sample rows | merge index]`` (``max_s`` each), then an int32
  section ``[query_start_loc (max_s+1) | context_lens (max_s) | block tables (max_s × width)]``.

Only the rows and the block-table entries that changed since the buffer's last use are rewritten.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from reference_engine.scheduler import ScheduledBatch

TOKEN_BUCKET = 64  # eager steps run on a multiple of this many token rows (few distinct GEMM shapes to warm up)
SAMPLE_BUCKET = 16  # ... and compute logits for a multiple of this many rows
HEADER_WORDS = 32  # int64 words ahead of the inputs (the broadcast plan)


def bucket(n: int, step: int, cap: int) -> int:
    """``n`` rounded up to a multiple of ``step``, at most ``cap``."""
    return min(-(-n // step) * step, cap)


@dataclass(slots=True)
class StepPlan:
    """Host-side facts about one prepared step (no device values)."""

    buf: int
    num_tokens: int
    num_seqs: int
    num_samples: int
    graph_bs: int  # 0: eager
    has_gather: bool
    max_query_len: int
    max_context_len: int
    qsl_host: list[int] | None
    ctx_host: list[int] | None
    padded_tokens: int  # rows the model runs on (eager: bucketed; graph: the graph's batch size)
    padded_samples: int  # rows the LM head runs on
    part2: StepPlan | None = None  # two-part step: the second batch (this plan is then the first)

    @property
    def total_samples(self) -> int:
        """Tokens the whole step samples (both batches of a split step)."""
        return self.num_samples + (self.part2.num_samples if self.part2 is not None else 0)


@dataclass(slots=True)
class StepHandle:
    """A launched step: ``done`` is what the host waits on (a CUDA event, a Future, or None: already done)."""

    plan: StepPlan
    done: object
    tokens: torch.Tensor | None = None
    step: int = -1  # the device side's launch count (CUDA: what ``copy_pending`` knows to be done)


class HostInputs:
    """The two alternating host input buffers and their views, for ``parts`` batch parts."""

    def __init__(self, max_t: int, max_s: int, width: int, parts: int, pin: bool, shared: bool = False):
        self.max_t, self.max_s, self.width, self.parts = max_t, max_s, width, parts
        self.n64 = 4 * max_t + 2 * max_s  # ids, positions, slot_mapping, gather index | sample rows, merge
        self.n32 = 2 * max_s + 1 + max_s * width  # query_start_loc, context_lens | block tables
        self.part_bytes = 8 * self.n64 + 4 * (self.n32 + self.n32 % 2)  # int64-aligned
        self.nbytes = 8 * HEADER_WORDS + parts * self.part_bytes
        self.raw = [torch.zeros(self.nbytes, dtype=torch.uint8, pin_memory=pin) for _ in range(2)]
        if shared:  # a device process reads them (``cpu_process``); before any view is made of them
            self.raw = [r.share_memory_() for r in self.raw]
        self.header = [r[:8 * HEADER_WORDS].view(torch.int64) for r in self.raw]
        # part_raw[k][p]: the bytes of part p of buffer k (the copy source); tensors[k][p]: its named views as
        # torch tensors (the CPU's traced decode step reads them in place); views[k][p]: the same as numpy arrays
        self.part_raw = [[r[8 * HEADER_WORDS + p * self.part_bytes:8 * HEADER_WORDS + (p + 1) * self.part_bytes]
                          for p in range(parts)] for r in self.raw]
        self.tensors = [[layout(*self.sections(b), max_t, max_s, width) for b in per_k] for per_k in self.part_raw]
        self.views = [[{name: t.numpy() for name, t in d.items()} for d in per_k] for per_k in self.tensors]
        self._bt_rows: list[list[list[tuple[list[int], int] | None]]] = [
            [[None] * max_s for _ in range(parts)] for _ in range(2)]
        for per_k in self.views:
            for v in per_k:
                v["slot"][:] = -1
                v["gather"][:] = -1

    def sections(self, part: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The int64 and int32 sections of one part's bytes (``part_bytes`` of them, host or device)."""
        mid = 8 * self.n64
        return part[:mid].view(torch.int64), part[mid:mid + 4 * self.n32].view(torch.int32)

    def used_bytes(self, num_seqs: int) -> int:
        """The leading bytes of a part that a step of ``num_seqs`` rows reads: the int64 section and the int32
        section up to its last used block-table row (the rows past it are stale)."""
        return 8 * self.n64 + 4 * (2 * self.max_s + 1 + num_seqs * self.width)

    def prepare(self, batch: ScheduledBatch, k: int, part: int, graph_bs: int, block_size: int) -> StepPlan:
        """Write one batch's inputs into part ``part`` of buffer ``k``; ``graph_bs`` > 0 pads it to a graph."""
        v = self.views[k][part]
        seqs, starts_l, lens_l = batch.seqs, batch.starts, batch.lens
        b, t, s = len(seqs), batch.num_tokens, len(batch.sample_rows)
        starts = np.asarray(starts_l, dtype=np.int64)
        ids, qsl = v["ids"], v["qsl"]
        qsl[0] = 0
        if batch.decode_only:
            ids[:t] = [seq.token_ids[i] for seq, i in zip(seqs, starts_l)]
            pos, seq_of_token, lens = starts, np.arange(b), None
            qsl[1:b + 1] = np.arange(1, b + 1)
            v["ctx"][:b] = starts + 1
        else:
            flat: list[int] = []
            for seq, i, n in zip(seqs, starts_l, lens_l):
                flat += seq.token_ids[i:i + n]
            ids[:t] = flat
            lens = np.asarray(lens_l, dtype=np.int64)
            np.cumsum(lens, out=qsl[1:b + 1])
            seq_of_token = np.repeat(np.arange(b), lens)
            pos = np.arange(t) + np.repeat(starts - qsl[:b], lens)
            v["ctx"][:b] = starts + lens
        v["pos"][:t] = pos
        bt = self._write_block_tables(batch, v["bt"], self._bt_rows[k][part])
        v["slot"][:t] = bt[seq_of_token, pos // block_size] * block_size + pos % block_size
        v["sample"][:s] = qsl[np.asarray(batch.sample_rows, dtype=np.int64) + 1] - 1
        neg = ids[:t] < 0
        has_gather = bool(neg.any())
        if has_gather:
            v["gather"][:t] = np.where(neg, -ids[:t] - 1, -1)
            ids[:t][neg] = 0
        if graph_bs > b:  # pad rows: no K/V written, empty context
            ids[b:graph_bs] = 0
            v["pos"][b:graph_bs] = 0
            v["slot"][b:graph_bs] = -1
            v["ctx"][b:graph_bs] = 0
            qsl[b + 1:graph_bs + 1] = np.arange(b + 1, graph_bs + 1)
        max_q = 1 if lens is None else int(lens.max())
        ctx_b = v["ctx"][:b]
        eager = graph_bs == 0
        if eager:
            tp, sp = bucket(t, TOKEN_BUCKET, self.max_t), bucket(s, SAMPLE_BUCKET, self.max_s)
            ids[t:tp] = 0
            v["pos"][t:tp] = 0
            v["sample"][s:sp] = 0
        else:
            tp = sp = graph_bs
        return StepPlan(k, t, b, s, graph_bs, has_gather, max_q, int(ctx_b.max()),
                        qsl[:b + 1].tolist() if eager else None, ctx_b.tolist() if eager else None, tp, sp)

    @staticmethod
    def _write_block_tables(batch: ScheduledBatch, bt: np.ndarray, rows: list) -> np.ndarray:
        """Rewrite only what changed since this buffer's last use (tables only ever grow in place)."""
        for i, table in enumerate(batch.block_tables):
            n = len(table)
            old = rows[i]
            if old is not None and old[0] is table:
                if old[1] != n:
                    bt[i, old[1]:n] = table[old[1]:]
                    rows[i] = (table, n)
            else:
                bt[i, :n] = table
                rows[i] = (table, n)
        return bt


def layout(a64, a32, max_t: int, max_s: int, width: int) -> dict:
    """Named views of one part's int64 and int32 sections (numpy arrays or torch tensors alike)."""
    t, s, w = max_t, max_s, width
    return dict(ids=a64[0:t], pos=a64[t:2 * t], slot=a64[2 * t:3 * t], gather=a64[3 * t:4 * t],
                sample=a64[4 * t:4 * t + s], merge=a64[4 * t + s:4 * t + 2 * s], qsl=a32[0:s + 1],
                ctx=a32[s + 1:2 * s + 1], bt=a32[2 * s + 1:2 * s + 1 + s * w].reshape(s, w))
