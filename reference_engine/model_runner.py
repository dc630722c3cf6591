"""Runs steps on the device: ``launch(batch)`` does the host work and enqueues the device work,
``wait(handle)`` returns the step's sampled tokens. The two loops differ only in when they call ``wait``.

The pieces, one file each: the host buffers and ``prepare`` (``step_inputs``), the device side on CUDA
(``cuda_device``: streams and events) and on the CPU (``cpu_device``: inline or a worker thread, by default
inside the device process of ``cpu_process``), the
decode CUDA graphs (``cuda_graphs``), the split prefill/decode step (``split_step``) and, with tensor
parallelism, the step's broadcast from rank 0 to the other ranks (``batch_broadcast``). This file holds
what they share: the static device buffers the model reads, the forward of one batch, sampling.

Two host buffers alternate between steps, so the host can prepare step N+1 while step N's inputs are
still being copied. Input tokens the host does not know yet (placeholders, see ``sequence.py``) are
taken on the device from the previous step's sampled tokens through a gather index.

The host waits for the device in two places, both inside ``abprof.sync_wait`` (the analysis counts
that range as blocked, not as host work): in ``wait``, for the step's tokens, and in ``launch``, when
the copy out of the host buffer it is about to rewrite (two steps ago) has not finished yet (rare: the
range is only entered when that copy is still pending).
"""

from __future__ import annotations

import contextlib

import torch
from torch.profiler import record_function

from reference_engine.attention import AttentionMetadata, _triton_backend
from reference_engine.batch_broadcast import receive_step, send_step
from reference_engine.cpu_device import CpuDevice
from reference_engine.cpu_graphs import DecodeTrace
from reference_engine.cpu_process import CpuProcessDevice
from reference_engine.cuda_device import CudaDevice
from reference_engine.cuda_graphs import DecodeGraph, capture_graphs, graph_size, piece_bounds
from reference_engine.sampler import SamplingParams, sample
from reference_engine.scheduler import ScheduledBatch
from reference_engine.split_step import merge_logits, micro_batches, split_batch
from reference_engine.step_inputs import (SAMPLE_BUCKET, TOKEN_BUCKET, HostInputs, StepHandle, StepPlan, bucket,
                                          layout)
from reference_engine.tensor_parallel import TPGroup

__all__ = ["ModelRunner", "StepHandle", "StepPlan", "split_batch"]


class ModelRunner:
    def __init__(self, model, kv_cache: torch.Tensor, *, max_batch_tokens: int, max_seqs: int, block_size: int,
                 max_model_len: int, device: torch.device, cuda_graphs: bool, worker_thread: bool,
                 split_prefill_decode: bool = False, tp: TPGroup | None = None, tp_overlap: bool = False,
                 piecewise_graphs: bool = True, cpu_graphs: bool = False, worker_process: bool = False,
                 graph_copy: bool = False):
        self.model = model
        self.tp = tp  # tensor parallelism: rank 0 broadcasts each step's inputs (``batch_broadcast``)
        self.kv_cache = kv_cache
        self.device = device
        self.is_cuda = device.type == "cuda"
        self.block_size = block_size
        self.max_model_len = max_model_len
        self.max_t, self.max_s = max_batch_tokens, max_seqs
        self.width = -(-max_model_len // block_size)
        self.split = split_prefill_decode
        self.overlap = tp_overlap and tp is not None  # two micro-batches, pipelined (``tp_overlap``)
        parts = 2 if self.split or self.overlap else 1  # the second batch has its own buffers, same layout
        if worker_process and (self.is_cuda or tp is not None):
            raise ValueError("worker_process needs a CPU engine without tensor parallelism")
        self.host = HostInputs(self.max_t, self.max_s, self.width, parts, pin=self.is_cuda, shared=worker_process)
        # each part's device buffer has the host part's byte layout, so that a step's inputs arrive in one copy
        self.dev_raw = [torch.zeros(self.host.part_bytes, dtype=torch.uint8, device=device) for _ in range(parts)]
        self.dev = [layout(*self.host.sections(raw), self.max_t, self.max_s, self.width) for raw in self.dev_raw]
        self.prev_tokens: torch.Tensor | None = None  # the previous step's sampled tokens (device)
        self.params = SamplingParams()
        self.generator: torch.Generator | None = None
        self._step = 0
        # with a device process, the CPU device runs inline inside it (set up last, below)
        self.device_side = (CudaDevice(self) if self.is_cuda else
                            CpuDevice(self, worker_thread and not worker_process))
        self.graphs: dict[int, tuple[DecodeGraph, torch.Tensor]] = {}
        self.graph_sizes: list[int] = []
        self.piece_bounds: list[int] | None = None  # the decode graphs' layer pieces (with graphs)
        if cuda_graphs:
            if not self.is_cuda:
                raise ValueError("cuda_graphs=True needs a CUDA device")
            if _triton_backend() is not None:  # the reference attention reads host lists: not capturable
                self.piece_bounds = piece_bounds(len(model.layers), piecewise_graphs)
                # graph_copy: each size's first piece also behind each host buffer's input copy (``DecodeGraph``)
                copy_in = ((self.dev_raw[0], [per_k[0] for per_k in self.host.part_raw], self.host.used_bytes)
                           if graph_copy and piecewise_graphs else None)
                self.graphs = capture_graphs(model, kv_cache, self.dev[0], min(max_seqs, max_batch_tokens, 512),
                                             max_seqs, max_model_len, device, self.piece_bounds, copy_in)
                self.graph_sizes = sorted(self.graphs)
        self.decode_trace: DecodeTrace | None = None  # the CPU's traced decode step (``cpu_graphs``)
        if cpu_graphs:
            if self.is_cuda or tp is not None:
                raise ValueError("cpu_graphs needs a CPU engine without tensor parallelism")
            # the trace reads the host buffers in place (on the CPU they are the device memory)
            self.decode_trace = DecodeTrace(model, kv_cache, self.host.tensors[0][0])
        if worker_process:  # last: the child is forked with everything above
            self.device_side = CpuProcessDevice(self.device_side)

    @property
    def copy_graphs(self) -> bool:
        """Whether idle decode steps enter the GPU through a first piece that copies their inputs in
        (``graph_copy``)."""
        return any(graph.copy_firsts for graph, _ in self.graphs.values())

    @property
    def np_views(self) -> list[dict]:
        """The first part's numpy views of host buffers 0 and 1."""
        return [per_k[0] for per_k in self.host.views]

    def close(self) -> None:
        self.device_side.close()

    def configure_sampling(self, params: SamplingParams, seed: int) -> None:
        """The sampling parameters and a generator seeded with ``seed``, for the next ``generate`` (and the
        device process's, which samples there)."""
        self.params = params
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        if isinstance(self.device_side, CpuProcessDevice):
            self.device_side.configure(params, seed)

    # ---- host side ---------------------------------------------------------------------------
    def prepare(self, batch: ScheduledBatch, k: int, part: int = 0) -> StepPlan:
        """Write a step's (or, ``part=1``, a split step's second batch's) inputs into host buffer ``k``."""
        graph_bs = 0
        if batch.decode_only and part == 0:  # the trace takes any row count: no padding
            graph_bs = len(batch.seqs) if self.decode_trace is not None else graph_size(self.graph_sizes,
                                                                                         len(batch.seqs))
        return self.host.prepare(batch, k, part, graph_bs, self.block_size)  # graphs read part 0 only

    def prepare_step(self, batch: ScheduledBatch, k: int) -> StepPlan:
        """The whole step into host buffer ``k``: one batch, or a split step's two and their merge index."""
        with record_function("abprof.prepare"):
            split = split_batch(batch) if self.split else micro_batches(batch) if self.overlap else None
            if split is None:
                return self.prepare(batch, k)
            plan = self.prepare(split[0], k)
            plan.part2 = self.prepare(split[1], k, part=1)
            self.host.views[k][1]["merge"][:len(split[2])] = split[2]
            return plan

    # ---- launch and wait ---------------------------------------------------------------------
    @torch.inference_mode()
    def launch(self, batch: ScheduledBatch) -> StepHandle:
        """Prepare the step into the next host buffer and enqueue its device work (CPU inline: run it)."""
        k = self._step % 2
        self._step += 1
        self.wait_buffer(k)
        plan = self.prepare_step(batch, k)
        if self.tp is not None:
            with record_function("abprof.batch_broadcast"):
                send_step(self.host, k, plan, self.tp.cpu_group)
        return self.device_side.launch(plan)

    @torch.inference_mode()
    def follow(self) -> StepHandle | None:
        """A rank other than 0: receive rank 0's next step and launch it; None when rank 0 stopped."""
        k = self._step % 2
        self._step += 1
        self.wait_buffer(k)
        with record_function("abprof.batch_broadcast"):  # also waits for rank 0 to have prepared the step
            plan = receive_step(self.host, k, self.tp.cpu_group)
        return None if plan is None else self.device_side.launch(plan)

    def stop_followers(self) -> None:
        """Rank 0, after its last step: tell the other ranks that ``generate`` is over."""
        k = self._step % 2
        self._step += 1
        self.wait_buffer(k)
        send_step(self.host, k, None, self.tp.cpu_group)

    def wait_buffer(self, k: int) -> None:
        """Block (inside ``abprof.sync_wait``) until no copy still reads host buffer ``k``."""
        pending = self.device_side.copy_pending(k)
        if pending is not None:  # two steps ago: long done in practice
            with record_function("abprof.sync_wait"):
                pending.synchronize() if self.is_cuda else pending.result()

    def wait(self, handle: StepHandle) -> list[int]:
        """Block until the step's sampled tokens are on the host; returns them."""
        with record_function("abprof.sync_wait"):
            tokens = self.device_side.finish(handle)
        handle.tokens = None
        return tokens

    # ---- what the device sides share ---------------------------------------------------------
    def forward(self, plan: StepPlan, d: dict | None = None, copy_from: int | None = None) -> torch.Tensor:
        """One forward batch from the device buffers ``d`` (default part 0, which the graphs read);
        returns the fp32 logits of its sampled rows. ``copy_from``: a decode graph step whose inputs are still
        in host buffer ``copy_from``; its first piece copies them in (``DecodeGraph.replay``)."""
        d = self.dev[0] if d is None else d
        with torch.inference_mode():
            if plan.graph_bs:
                assert d is self.dev[0]
                if self.decode_trace is not None:
                    return self.traced_decode(plan, d)[0]
                self._gather(plan, d)
                graph, logits = self.graphs[plan.graph_bs]
                graph.replay(copy_from)
                return logits[:plan.num_seqs]
            hidden = self.model(*self.model_inputs(plan, d), self.kv_cache)
            return self.model.compute_logits(hidden[d["sample"][:plan.padded_samples]])[:plan.num_samples]

    def traced_decode(self, plan: StepPlan, d: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """A decode-only step through the CPU's trace (``cpu_graphs``) from buffers ``d``: (logits, greedy tokens)."""
        blocks = -(-plan.max_context_len // self.block_size)
        return self.decode_trace(d, plan.num_seqs, blocks, self.prev_tokens if plan.has_gather else None)

    def model_inputs(self, plan: StepPlan, d: dict) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        """An eager batch's (ids, positions, attention metadata) from device buffers ``d``, the tokens
        sampled by the previous step gathered into the ids."""
        t, b = plan.num_tokens, plan.num_seqs
        self._gather(plan, d)
        meta = AttentionMetadata(d["slot"][:t], d["qsl"][:b + 1], d["ctx"][:b], d["bt"][:b],
                                 plan.max_query_len, plan.max_context_len, plan.qsl_host, plan.ctx_host)
        return d["ids"][:plan.padded_tokens], d["pos"][:plan.padded_tokens], meta

    def _gather(self, plan: StepPlan, d: dict) -> None:
        if plan.has_gather:
            ids, g = d["ids"][:plan.num_tokens], d["gather"][:plan.num_tokens]
            ids.copy_(torch.where(g >= 0, self.prev_tokens[g.clamp(min=0)], ids))

    def merge(self, first: torch.Tensor, second: torch.Tensor, plan: StepPlan) -> torch.Tensor:
        """A split step's two logits in the step's sampled-row order."""
        return merge_logits(first, second, self.dev[1]["merge"][:plan.total_samples])

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        """Token ids ``[S]`` from fp32 logits ``[S, V]`` with the run's sampling parameters and generator."""
        return sample(logits, self.params, self.generator)

    @torch.inference_mode()
    def warmup_shapes(self, on_cpu: bool = False) -> None:
        """CUDA: one eager forward per padded token count and LM-head row count, so that no step of a
        measured run is the first to use a GEMM shape (cuBLAS's first use of a shape costs host time).
        Nothing is written to the KV cache. On the CPU only when asked (tests). Blocks the host (before
        a measured run, never inside one)."""
        if not (self.is_cuda or on_cpu):
            return
        d = self.dev[0]
        tokens = sorted({bucket(n, TOKEN_BUCKET, self.max_t) for n in range(1, self.max_t + 1)})
        samples = sorted({bucket(n, SAMPLE_BUCKET, self.max_s) for n in range(1, self.max_s + 1)})
        if self.is_cuda:
            torch.cuda.synchronize(self.device)  # nothing in flight reads the buffers rewritten here
        d["ids"].zero_()  # on the current stream: every stream below waits for it
        d["pos"].zero_()
        d["slot"].fill_(-1)  # nothing is written to the cache
        d["sample"].zero_()
        d["bt"][0].zero_()
        for stream in self.device_side.streams:  # a split engine's second stream needs its own first GEMMs
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
