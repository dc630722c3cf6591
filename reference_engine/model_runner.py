"""Runs steps on the device: inputs prepared with numpy into (pinned) host buffers, copied in one
transfer per dtype, forward (eager, or a CUDA graph for decode steps at padded batch sizes), sampling
on the device, and the sampled tokens copied back without blocking.

``launch(batch)`` does the host work and enqueues the device work; ``wait(handle)`` is the only place
the host waits for the device. The two loops differ only in when they call ``wait``.

Two host buffers alternate between steps, so the host can prepare step N+1 while step N's inputs are
still being copied. On CUDA the copies and the compute run on their own streams ordered by events:
H2D into a device staging buffer (two, alternating), then on the compute stream a copy into the
static buffers that the model and the CUDA graphs read. Input tokens the host does not know yet
(placeholders, see ``sequence.py``) are taken on the device from the previous step's sampled tokens
through a gather index. On the CPU the device work runs inline (sync) or on one worker thread that
plays the stream, its futures playing the events (async).

With ``split_prefill_decode`` a step that mixes decodes with prefill chunks runs as two forward
batches (see ``split_batch``): the decode rows (a CUDA graph where one fits) on the compute stream,
the other rows eagerly on a second stream, so that memory-bound decode and compute-bound prefill
kernels can overlap; the two logits meet, in the step's sampled-row order, before sampling. The
second batch has its own host, staging and device buffers. On the CPU the two run one after the other.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from torch.profiler import record_function

from reference_engine.attention import AttentionMetadata, _triton_backend
from reference_engine.sampler import SamplingParams, sample
from reference_engine.scheduler import ScheduledBatch


TOKEN_BUCKET = 64  # eager steps run on a multiple of this many token rows (few distinct GEMM shapes to warm up)
SAMPLE_BUCKET = 16  # ... and compute logits for a multiple of this many rows


def bucket(n: int, step: int, cap: int) -> int:
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
    part2: StepPlan | None = None  # split step: the prefill batch (this plan is then the decode batch)

    @property
    def total_samples(self) -> int:
        """Tokens the whole step samples (both batches of a split step)."""
        return self.num_samples + (self.part2.num_samples if self.part2 is not None else 0)


@dataclass(slots=True)
class StepHandle:
    plan: StepPlan
    done: object  # torch.cuda.Event (CUDA), Future (CPU worker) or the tokens tensor (CPU inline)
    tokens: torch.Tensor | None = None


def split_batch(batch: ScheduledBatch) -> tuple[ScheduledBatch, ScheduledBatch, list[int]] | None:
    """A step mixing decodes and other rows → (its decode rows, its other rows, merge index), or None.

    Decode rows compute one token and sample it (CUDA-graph eligible). ``merge[r]`` is where the step's
    sampled row ``r`` sits in the decode batch's samples followed by the other batch's samples.
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

    def part(rows: list[int]) -> ScheduledBatch:
        samples = [j for j, i in enumerate(rows) if i in sampled]
        tokens = sum(batch.lens[i] for i in rows)
        return ScheduledBatch([batch.seqs[i] for i in rows], [batch.starts[i] for i in rows],
                              [batch.lens[i] for i in rows], samples, [], tokens,
                              tokens == len(rows) == len(samples), [batch.block_tables[i] for i in rows])

    return part(dec), part(rest), [where[i] for i in batch.sample_rows]


def graph_batch_sizes(max_bs: int) -> list[int]:
    sizes = [s for s in (1, 2, 4, 8) if s <= max_bs] + list(range(16, max_bs + 1, 16))
    if sizes[-1] != max_bs:
        sizes.append(max_bs)
    return sizes


class ModelRunner:
    def __init__(self, model, kv_cache: torch.Tensor, *, max_batch_tokens: int, max_seqs: int, block_size: int,
                 max_model_len: int, device: torch.device, cuda_graphs: bool, worker_thread: bool,
                 split_prefill_decode: bool = False):
        self.model = model
        self.kv_cache = kv_cache
        self.device = device
        self.is_cuda = device.type == "cuda"
        self.block_size = block_size
        self.max_model_len = max_model_len
        self.max_t = max_t = max_batch_tokens
        self.max_s = max_s = max_seqs
        self.width = width = -(-max_model_len // block_size)
        self.n64 = 4 * max_t + 2 * max_s  # ids, positions, slot_mapping, gather index | sample rows, merge
        self.n32 = 2 * max_s + 1 + max_s * width  # query_start_loc, context_lens | block tables
        pin = self.is_cuda
        self.host64 = [torch.zeros(self.n64, dtype=torch.int64, pin_memory=pin) for _ in range(2)]
        self.host32 = [torch.zeros(self.n32, dtype=torch.int32, pin_memory=pin) for _ in range(2)]
        self.host_out = [torch.zeros(max_s, dtype=torch.int64, pin_memory=pin) for _ in range(2)]
        self.np_views = [self._views(h64.numpy(), h32.numpy()) for h64, h32 in zip(self.host64, self.host32)]
        self._bt_rows: list[list[tuple[list[int], int] | None]] = [[None] * max_s for _ in range(2)]
        for v in self.np_views:
            v["slot"][:] = -1
            v["gather"][:] = -1
        self.dev64 = torch.zeros(self.n64, dtype=torch.int64, device=device)
        self.dev32 = torch.zeros(self.n32, dtype=torch.int32, device=device)
        self.dev = self._views(self.dev64, self.dev32)
        self.split = split_prefill_decode
        self.prefill_stream = None
        if self.split:  # the second batch's buffers, same layout
            self.host64p = [torch.zeros(self.n64, dtype=torch.int64, pin_memory=pin) for _ in range(2)]
            self.host32p = [torch.zeros(self.n32, dtype=torch.int32, pin_memory=pin) for _ in range(2)]
            self.np_views_p = [self._views(h64.numpy(), h32.numpy())
                               for h64, h32 in zip(self.host64p, self.host32p)]
            self._bt_rows_p = [[None] * max_s for _ in range(2)]
            for v in self.np_views_p:
                v["slot"][:] = -1
                v["gather"][:] = -1
            self.dev64p = torch.zeros_like(self.dev64)
            self.dev32p = torch.zeros_like(self.dev32)
            self.devp = self._views(self.dev64p, self.dev32p)
        self._prev_tokens: torch.Tensor | None = None  # the previous step's sampled tokens (device)
        self.params = SamplingParams()
        self.generator: torch.Generator | None = None
        self._step = 0
        self._worker = None
        self._buf_free: list[object | None] = [None, None]  # what to wait on before rewriting host buffer k
        if self.is_cuda:
            self.h2d_stream = torch.cuda.Stream(device)
            self.compute_stream = torch.cuda.Stream(device)
            self.d2h_stream = torch.cuda.Stream(device)
            self.stage64 = [torch.zeros(self.n64, dtype=torch.int64, device=device) for _ in range(2)]
            self.stage32 = [torch.zeros(self.n32, dtype=torch.int32, device=device) for _ in range(2)]
            self.ev_h2d = [torch.cuda.Event() for _ in range(2)]
            self.ev_stage_free = [torch.cuda.Event() for _ in range(2)]
            self.ev_d2h = [torch.cuda.Event() for _ in range(2)]
            self.ev_sampled = torch.cuda.Event()
            if self.split:  # created once: a stream per step would defeat the caching allocator's reuse
                self.prefill_stream = torch.cuda.Stream(device)
                self.stage64p = [torch.zeros_like(t) for t in self.stage64]
                self.stage32p = [torch.zeros_like(t) for t in self.stage32]
                self.ev_inputs = torch.cuda.Event()
                self.ev_prefill_done = torch.cuda.Event()
        elif worker_thread:
            self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="abprof-device")
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.graph_sizes: list[int] = []
        if cuda_graphs:
            if not self.is_cuda:
                raise ValueError("cuda_graphs=True needs a CUDA device")
            if _triton_backend() is not None:  # the reference attention reads host lists: not capturable
                self._capture_graphs(min(max_seqs, max_batch_tokens, 512))

    def _views(self, a64, a32) -> dict:
        t, s, w = self.max_t, self.max_s, self.width
        return dict(ids=a64[0:t], pos=a64[t:2 * t], slot=a64[2 * t:3 * t], gather=a64[3 * t:4 * t],
                    sample=a64[4 * t:4 * t + s], merge=a64[4 * t + s:4 * t + 2 * s], qsl=a32[0:s + 1],
                    ctx=a32[s + 1:2 * s + 1], bt=a32[2 * s + 1:].reshape(s, w))

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None

    # ---- host side ---------------------------------------------------------------------------
    def prepare(self, batch: ScheduledBatch, k: int, part: int = 0) -> StepPlan:
        """Write a step's (or, ``part=1``, a split step's second batch's) inputs into host buffer ``k``."""
        v = (self.np_views if part == 0 else self.np_views_p)[k]
        seqs, starts_l, lens_l = batch.seqs, batch.starts, batch.lens
        b, t, s = len(seqs), batch.num_tokens, len(batch.sample_rows)
        bs = self.block_size
        starts = np.asarray(starts_l, dtype=np.int64)
        ids = v["ids"]
        if batch.decode_only:
            ids[:t] = [seq.token_ids[i] for seq, i in zip(seqs, starts_l)]
            pos = starts
            seq_of_token = np.arange(b)
            lens = None
        else:
            flat: list[int] = []
            for seq, i, n in zip(seqs, starts_l, lens_l):
                flat += seq.token_ids[i:i + n]
            ids[:t] = flat
            lens = np.asarray(lens_l, dtype=np.int64)
        qsl = v["qsl"]
        qsl[0] = 0
        if lens is None:
            qsl[1:b + 1] = np.arange(1, b + 1)
            v["ctx"][:b] = starts + 1
        else:
            np.cumsum(lens, out=qsl[1:b + 1])
            seq_of_token = np.repeat(np.arange(b), lens)
            pos = np.arange(t) + np.repeat(starts - qsl[:b], lens)
            v["ctx"][:b] = starts + lens
        v["pos"][:t] = pos
        bt, rows = v["bt"], (self._bt_rows if part == 0 else self._bt_rows_p)[k]
        for i, table in enumerate(batch.block_tables):  # rewrite only what changed since this buffer's last use
            n = len(table)
            old = rows[i]
            if old is not None and old[0] is table:  # same list: tables only ever grow in place
                if old[1] != n:
                    bt[i, old[1]:n] = table[old[1]:]
                    rows[i] = (table, n)
            else:
                bt[i, :n] = table
                rows[i] = (table, n)
        v["slot"][:t] = bt[seq_of_token, pos // bs] * bs + pos % bs
        v["sample"][:s] = qsl[np.asarray(batch.sample_rows, dtype=np.int64) + 1] - 1
        neg = ids[:t] < 0
        has_gather = bool(neg.any())
        if has_gather:
            gather = v["gather"]
            gather[:t] = np.where(neg, -ids[:t] - 1, -1)
            ids[:t][neg] = 0
        graph_bs = self._graph_size(b) if batch.decode_only and part == 0 else 0  # graphs read self.dev
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

    def _graph_size(self, b: int) -> int:
        for size in self.graph_sizes:
            if size >= b:
                return size
        return 0

    # ---- launch and wait ---------------------------------------------------------------------
    @torch.inference_mode()
    def launch(self, batch: ScheduledBatch) -> StepHandle:
        k = self._step % 2
        self._step += 1
        free = self._buf_free[k]
        if free is not None:  # the copy out of host buffer k (two steps ago) is long done in practice
            free.synchronize() if self.is_cuda else free.result()
        with record_function("abprof.prepare"):
            split = split_batch(batch) if self.split else None
            if split is None:
                plan = self.prepare(batch, k)
            else:
                plan = self.prepare(split[0], k)
                plan.part2 = self.prepare(split[1], k, part=1)
                self.np_views_p[k]["merge"][:len(split[2])] = split[2]
        if self.is_cuda:
            return self._launch_cuda(plan)
        if self._worker is not None:
            with record_function("abprof.forward"):
                future = self._worker.submit(self._device_step, plan, False)
            self._buf_free[k] = future
            return StepHandle(plan, future)
        tokens = self._device_step(plan, annotate=True)
        return StepHandle(plan, tokens, tokens)

    def wait(self, handle: StepHandle) -> list[int]:
        """Block until the step's sampled tokens are on the host; returns them."""
        with record_function("abprof.sync_wait"):
            if self.is_cuda:
                handle.done.synchronize()
                tokens = self.host_out[handle.plan.buf][:handle.plan.total_samples].tolist()
            elif self._worker is not None:
                tokens = handle.done.result().tolist()
            else:
                tokens = handle.tokens.tolist()
        handle.tokens = None
        return tokens

    def _launch_cuda(self, plan: StepPlan) -> StepHandle:
        k, p2 = plan.buf, plan.part2
        with record_function("abprof.forward"):
            n32 = 2 * self.max_s + 1 + max(plan.num_seqs, plan.graph_bs) * self.width  # used rows only
            n32p = 2 * self.max_s + 1 + p2.num_seqs * self.width if p2 is not None else 0
            with torch.cuda.stream(self.h2d_stream):
                self.h2d_stream.wait_event(self.ev_stage_free[k])
                self.stage64[k].copy_(self.host64[k], non_blocking=True)
                self.stage32[k][:n32].copy_(self.host32[k][:n32], non_blocking=True)
                if p2 is not None:
                    self.stage64p[k].copy_(self.host64p[k], non_blocking=True)
                    self.stage32p[k][:n32p].copy_(self.host32p[k][:n32p], non_blocking=True)
                self.ev_h2d[k].record(self.h2d_stream)
            self._buf_free[k] = self.ev_h2d[k]
            with torch.cuda.stream(self.compute_stream):
                self.compute_stream.wait_event(self.ev_h2d[k])
                self.dev64.copy_(self.stage64[k])
                self.dev32[:n32].copy_(self.stage32[k][:n32])
                if p2 is not None:
                    self.dev64p.copy_(self.stage64p[k])
                    self.dev32p[:n32p].copy_(self.stage32p[k][:n32p])
                self.ev_stage_free[k].record(self.compute_stream)
                logits = self._forward(plan) if p2 is None else self._forward_split_cuda(plan)
        with record_function("abprof.sample"):
            with torch.cuda.stream(self.compute_stream):
                tokens = sample(logits, self.params, self.generator)
                self._prev_tokens = tokens
                self.ev_sampled.record(self.compute_stream)
            with torch.cuda.stream(self.d2h_stream):
                self.d2h_stream.wait_event(self.ev_sampled)
                self.host_out[k][:plan.total_samples].copy_(tokens, non_blocking=True)
                self.ev_d2h[k].record(self.d2h_stream)
        return StepHandle(plan, self.ev_d2h[k], tokens)

    def _forward_split_cuda(self, plan: StepPlan) -> torch.Tensor:
        """A split step on the compute stream (inputs already in ``dev``/``devp``): decode batch here,
        prefill batch on ``prefill_stream``, joined by an event; returns the merged logits."""
        compute, prefill = self.compute_stream, self.prefill_stream
        self.ev_inputs.record(compute)  # after the input copies and the previous step's sampling
        with record_function("abprof.forward.decode"):
            decode_logits = self._forward(plan)
        with torch.cuda.stream(prefill), record_function("abprof.forward.prefill"):
            prefill.wait_event(self.ev_inputs)
            if plan.part2.has_gather:  # read on this stream, allocated on the compute stream
                self._prev_tokens.record_stream(prefill)
            prefill_logits = self._forward(plan.part2, self.devp)
            self.ev_prefill_done.record(prefill)
        compute.wait_event(self.ev_prefill_done)
        prefill_logits.record_stream(compute)  # allocated on the prefill stream, read by the merge
        return self._merge(decode_logits, prefill_logits, plan)

    def _merge(self, decode_logits: torch.Tensor, prefill_logits: torch.Tensor, plan: StepPlan) -> torch.Tensor:
        """The two batches' logits in the step's sampled-row order (so sampling sees the unsplit step)."""
        merge = self.devp["merge"][:plan.total_samples]
        return torch.cat([decode_logits, prefill_logits]).index_select(0, merge)

    def _device_step(self, plan: StepPlan, annotate: bool) -> torch.Tensor:
        """CPU: the whole device side of a step (copy in, forward, sample), inline or on the worker thread
        (which is not annotated: there it plays the device)."""
        self.dev64.copy_(self.host64[plan.buf])
        self.dev32.copy_(self.host32[plan.buf])
        p2 = plan.part2
        if p2 is not None:
            self.dev64p.copy_(self.host64p[plan.buf])
            self.dev32p.copy_(self.host32p[plan.buf])

        def note(name):
            return record_function(name) if annotate else contextlib.nullcontext()

        with torch.inference_mode():
            with note("abprof.forward"):
                if p2 is None:
                    logits = self._forward(plan)
                else:  # one after the other: the CPU has no second stream to overlap them on
                    with note("abprof.forward.decode"):
                        decode_logits = self._forward(plan)
                    with note("abprof.forward.prefill"):
                        prefill_logits = self._forward(p2, self.devp)
                    logits = self._merge(decode_logits, prefill_logits, plan)
            with record_function("abprof.sample") if annotate else contextlib.nullcontext():
                tokens = sample(logits, self.params, self.generator)
        self._prev_tokens = tokens
        return tokens

    def _forward(self, plan: StepPlan, d: dict | None = None) -> torch.Tensor:
        """One forward batch from the device buffers ``d`` (default ``self.dev``, which the graphs read)."""
        d = self.dev if d is None else d
        t, b = plan.num_tokens, plan.num_seqs
        with torch.inference_mode():
            if plan.has_gather:
                ids, g = d["ids"][:t], d["gather"][:t]
                ids.copy_(torch.where(g >= 0, self._prev_tokens[g.clamp(min=0)], ids))
            if plan.graph_bs:
                assert d is self.dev
                graph, logits = self.graphs[plan.graph_bs]
                graph.replay()
                return logits[:b]
            meta = AttentionMetadata(d["slot"][:t], d["qsl"][:b + 1], d["ctx"][:b], d["bt"][:b],
                                     plan.max_query_len, plan.max_context_len, plan.qsl_host, plan.ctx_host)
            tp = plan.padded_tokens
            hidden = self.model(d["ids"][:tp], d["pos"][:tp], meta, self.kv_cache)
            return self.model.compute_logits(hidden[d["sample"][:plan.padded_samples]])[:plan.num_samples]

    @torch.inference_mode()
    def warmup_shapes(self, on_cpu: bool = False) -> None:
        """CUDA: one eager forward per padded token count and LM-head row count, so that no step of a
        measured run is the first to use a GEMM shape (cuBLAS's first use of a shape costs host time).
        Nothing is written to the KV cache. On the CPU only when asked (tests)."""
        if not (self.is_cuda or on_cpu):
            return
        d = self.dev
        tokens = sorted({bucket(n, TOKEN_BUCKET, self.max_t) for n in range(1, self.max_t + 1)})
        samples = sorted({bucket(n, SAMPLE_BUCKET, self.max_s) for n in range(1, self.max_s + 1)})
        if self.is_cuda:
            torch.cuda.synchronize(self.device)  # nothing in flight reads the buffers rewritten here
        d["ids"].zero_()  # on the current stream: every stream below waits for it
        d["pos"].zero_()
        d["slot"].fill_(-1)  # nothing is written to the cache
        d["sample"].zero_()
        d["bt"][0].zero_()
        # a split engine's second stream needs its own first GEMMs too (cuBLAS workspace per stream)
        streams = [s for s in (self.compute_stream, self.prefill_stream) if s is not None] if self.is_cuda else [None]
        for stream in streams:
            if stream is not None:
                stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                for i in range(max(len(tokens), len(samples))):
                    tp, sp = tokens[i % len(tokens)], min(samples[i % len(samples)], tokens[i % len(tokens)])
                    d["qsl"][:2].copy_(torch.tensor([0, tp], dtype=torch.int32), non_blocking=False)
                    d["ctx"][:1].fill_(tp)
                    meta = AttentionMetadata(d["slot"][:tp], d["qsl"][:2], d["ctx"][:1], d["bt"][:1], tp, tp,
                                             [0, tp], [tp])
                    hidden = self.model(d["ids"][:tp], d["pos"][:tp], meta, self.kv_cache)
                    self.model.compute_logits(hidden[d["sample"][:sp]])
            if stream is not None:
                torch.cuda.synchronize(self.device)  # the next stream rewrites qsl/ctx
        if self.is_cuda:
            torch.cuda.synchronize(self.device)

    # ---- CUDA graphs -------------------------------------------------------------------------
    @torch.inference_mode()
    def _capture_graphs(self, max_bs: int) -> None:
        d = self.dev
        sizes = graph_batch_sizes(max_bs)
        d["ids"].zero_()
        d["pos"].zero_()
        d["slot"].fill_(-1)
        d["ctx"].zero_()
        d["qsl"].copy_(torch.arange(self.max_s + 1, dtype=torch.int32, device=self.device))
        pool = None
        for bs in reversed(sizes):  # largest first: smaller graphs reuse its memory pool
            meta = AttentionMetadata(d["slot"][:bs], d["qsl"][:bs + 1], d["ctx"][:bs], d["bt"][:bs],
                                     1, self.max_model_len)

            def body(bs=bs, meta=meta):
                return self.model.compute_logits(self.model(d["ids"][:bs], d["pos"][:bs], meta, self.kv_cache))

            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):  # warm-up (Triton compiles, cuBLAS picks its kernels)
                body()
                body()
            torch.cuda.current_stream(self.device).wait_stream(side)
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, stream=side):
                logits = body()
            if pool is None:
                pool = graph.pool()
            self.graphs[bs] = (graph, logits)
        torch.cuda.synchronize(self.device)
        self.graph_sizes = sizes
