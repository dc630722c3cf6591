"""The device side of a step on CUDA: copy-in, forward and sampling on streams ordered by events.

A step's inputs (each batch part's bytes, up to its last used block-table row) go in one H2D copy on their
own stream into a device staging buffer (two, alternating with the host buffers); the compute stream then
copies the staging buffer, in one copy, into the static buffer that the model and the CUDA graphs read,
runs the forward and samples; the D2H stream copies the sampled tokens into a pinned host buffer. When the
host has waited for every step launched before (the sync loop), nothing on the GPU reads the static buffer:
the H2D copy goes straight into it on the compute stream, and a decode graph step's copy is a node of its
first piece (``cuda_graphs.DecodeGraph``), so that no recorded op or event comes before its first launch.
Nothing here blocks the host: ``launch`` only enqueues, and what the host waits on (``copy_pending``,
``StepHandle.done``) is an event the runner synchronizes inside ``abprof.sync_wait``.

A split step (``split_step``) runs its first (decode) batch on the compute stream and its second on
the prefill stream, joined by an event before the logits are merged. A ``tp_overlap`` step runs both
micro-batches on the compute stream, their all-reduces on NCCL's stream (``tp_overlap``).
"""

from __future__ import annotations

import torch
from torch.profiler import record_function

from reference_engine.step_inputs import StepHandle, StepPlan
from reference_engine.tp_overlap import overlapped_logits


class CudaDevice:
    """Streams, events and staging buffers of one runner on one GPU."""

    def __init__(self, runner):
        self.runner = r = runner
        device = r.device
        self.h2d_stream = torch.cuda.Stream(device)
        self.compute_stream = torch.cuda.Stream(device)
        self.d2h_stream = torch.cuda.Stream(device)
        self.stage = [[torch.zeros(r.host.part_bytes, dtype=torch.uint8, device=device) for _ in range(2)]
                      for _ in r.dev]
        self._copy_views: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.host_out = [torch.zeros(r.max_s, dtype=torch.int64, pin_memory=True) for _ in range(2)]
        self._host_out_np = [t.numpy() for t in self.host_out]  # read without a (recorded) torch op
        self.ev_h2d = [torch.cuda.Event() for _ in range(2)]
        self.ev_stage_free = [torch.cuda.Event() for _ in range(2)]
        self.ev_d2h = [torch.cuda.Event() for _ in range(2)]
        self.ev_sampled = torch.cuda.Event()
        # steps are numbered as launched; a step whose tokens the host has waited for is known to have finished
        # its copy (and so has every step before it: one H2D stream), which spares the event query
        self._launched, self._finished = 0, -1
        self._copy_step = [-1, -1]  # the step whose copy reads host buffer k
        self.prefill_stream = None
        if r.split:  # created once: a stream per step would defeat the caching allocator's reuse
            self.prefill_stream = torch.cuda.Stream(device)
            self.ev_inputs = torch.cuda.Event()
            self.ev_prefill_done = torch.cuda.Event()

    @property
    def streams(self) -> list[torch.cuda.Stream]:
        """The streams that run forward passes (each needs its own first GEMMs, see ``warmup_shapes``)."""
        return [s for s in (self.compute_stream, self.prefill_stream) if s is not None]

    def copy_pending(self, k: int) -> torch.cuda.Event | None:
        """The H2D copy still reading host buffer ``k`` (from two steps ago), or None when it is done."""
        if self._copy_step[k] <= self._finished:  # also before any step has used buffer k (-1)
            return None
        ev = self.ev_h2d[k]
        return None if ev.query() else ev

    def launch(self, plan: StepPlan) -> StepHandle:
        """Enqueue copy-in, forward, sampling and copy-out of a prepared step; never blocks the host."""
        r, k = self.runner, plan.buf
        parts = [plan] if plan.part2 is None else [plan, plan.part2]
        with record_function("abprof.forward"):
            self._copy_step[k] = self._launched
            if self._finished == self._launched - 1:
                # the host has waited for every launched step (the sync loop): nothing on the GPU reads the device
                # buffers, so the inputs go straight into them on the compute stream (no staging copy, no event
                # between streams), and a decode graph's first piece copies them in itself (``graph_copy``)
                in_graph = (plan.graph_bs and plan.part2 is None and not plan.has_gather
                            and bool(r.graphs[plan.graph_bs][0].copy_firsts))
                with torch.cuda.stream(self.compute_stream):
                    if not in_graph:
                        for host, _, dev in self._part_views(parts, k):
                            dev.copy_(host, non_blocking=True)
                    logits = self._forward(plan, k if in_graph else None)
                    self.ev_h2d[k].record(self.compute_stream)  # after the forward: off the critical path
            else:
                views = self._part_views(parts, k)
                with torch.cuda.stream(self.h2d_stream):
                    self.h2d_stream.wait_event(self.ev_stage_free[k])
                    for host, stage, _ in views:
                        stage.copy_(host, non_blocking=True)
                    self.ev_h2d[k].record(self.h2d_stream)
                with torch.cuda.stream(self.compute_stream):
                    self.compute_stream.wait_event(self.ev_h2d[k])
                    for _, stage, dev in views:
                        dev.copy_(stage)
                    self.ev_stage_free[k].record(self.compute_stream)
                    logits = self._forward(plan)
        with record_function("abprof.sample"):
            with torch.cuda.stream(self.compute_stream):
                tokens = r.sample(logits)
                r.prev_tokens = tokens
                self.ev_sampled.record(self.compute_stream)
            with torch.cuda.stream(self.d2h_stream):
                self.d2h_stream.wait_event(self.ev_sampled)
                self.host_out[k][:plan.total_samples].copy_(tokens, non_blocking=True)
                self.ev_d2h[k].record(self.d2h_stream)
        self._launched += 1
        return StepHandle(plan, self.ev_d2h[k], tokens, step=self._launched - 1)

    def _forward(self, plan: StepPlan, copy_from: int | None = None) -> torch.Tensor:
        """The step's logits, on the current (compute) stream, its inputs in the device buffers (or still in
        host buffer ``copy_from``, for a decode graph whose first piece copies them in)."""
        r = self.runner
        if plan.part2 is None:
            return r.forward(plan, copy_from=copy_from)
        if r.overlap:  # NCCL's own stream runs each all-reduce under the other micro-batch
            return overlapped_logits(r, plan)
        return self._forward_split(plan)

    def _part_views(self, parts: list[StepPlan], k: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``_views`` of each batch part's used bytes in host buffer ``k``."""
        used = self.runner.host.used_bytes
        return [self._views(i, k, used(max(p.num_seqs, p.graph_bs))) for i, p in enumerate(parts)]

    def _views(self, part: int, k: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The first ``n`` bytes of part ``part``'s host buffer ``k``, staging buffer ``k`` and device buffer,
        made once per size (slicing them anew each step is three more recorded ops on the host's critical path)."""
        key = (part, k, n)
        if key not in self._copy_views:
            r = self.runner
            self._copy_views[key] = (r.host.part_raw[k][part][:n], self.stage[part][k][:n], r.dev_raw[part][:n])
        return self._copy_views[key]

    def finish(self, handle: StepHandle) -> list[int]:
        """Block until the step's tokens are in the pinned host buffer; returns them (call inside a wait)."""
        handle.done.synchronize()
        self._finished = max(self._finished, handle.step)
        return self._host_out_np[handle.plan.buf][:handle.plan.total_samples].tolist()

    def _forward_split(self, plan: StepPlan) -> torch.Tensor:
        """A split step on the compute stream (inputs already in the device buffers): decode batch here,
        prefill batch on ``prefill_stream``, joined by an event; returns the merged logits."""
        r, compute, prefill = self.runner, self.compute_stream, self.prefill_stream
        self.ev_inputs.record(compute)  # after the input copies and the previous step's sampling
        with record_function("abprof.forward.decode"):
            decode_logits = r.forward(plan)
        with torch.cuda.stream(prefill), record_function("abprof.forward.prefill"):
            prefill.wait_event(self.ev_inputs)
            if plan.part2.has_gather:  # read on this stream, allocated on the compute stream
                r.prev_tokens.record_stream(prefill)
            prefill_logits = r.forward(plan.part2, r.dev[1])
            self.ev_prefill_done.record(prefill)
        compute.wait_event(self.ev_prefill_done)
        prefill_logits.record_stream(compute)  # allocated on the prefill stream, read by the merge
        return r.merge(decode_logits, prefill_logits, plan)

    def close(self) -> None:
        pass
