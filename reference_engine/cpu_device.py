"""The device side of a step on the CPU: copy-in, forward and sampling, inline or on one worker thread.

By default neither runs in the engine's own process: a forked child runs this inline (``cpu_process``), for
both loops. Inline and worker-thread are what ``cpu_worker_process=False`` and tensor parallelism use.

The sync loop runs them inline on the engine thread (annotated: that is where the time goes). The
async loop runs them on a worker thread that plays the CUDA stream (not annotated: it plays the
device), its futures playing the events: the host waits on a future inside ``abprof.sync_wait``. A
split step runs its two batches one after the other: the CPU has no second stream to overlap them on.
A ``tp_overlap`` step pipelines its two micro-batches (``tp_overlap``): gloo runs the all-reduces on its
own threads.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import time

import torch
from torch.profiler import record_function

from reference_engine.step_inputs import StepHandle, StepPlan
from reference_engine.tp_overlap import overlapped_logits


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. under taskset), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def set_cpu_threads(requested: int | None) -> int:
    """Set torch's intra-op threads: ``requested``, or one fewer than the usable cores (at least 1).

    Compute threads that take every core preempt the engine thread and the async loop's worker, and one
    run's tokens/s then swings by an order of magnitude; one core left to them keeps both loops honest.
    Returns the count set.
    """
    threads = requested if requested is not None else max(1, usable_cores() - 1)
    torch.set_num_threads(threads)
    return threads


class CpuDevice:
    """Runs a prepared step's device work on the CPU (``worker_thread``: asynchronously)."""

    def __init__(self, runner, worker_thread: bool):
        self.runner = runner
        # OpenMP's thread count is per thread: a new thread starts with every core, whatever
        # torch.set_num_threads said on the engine's thread, so the worker sets it again for itself.
        self._worker = (concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="abprof-device",
                                                              initializer=torch.set_num_threads,
                                                              initargs=(torch.get_num_threads(),))
                        if worker_thread else None)
        self._copy_done: list[concurrent.futures.Future | None] = [None, None]
        self.streams: list = [None]
        # per launched step: (hand-over start, hand-over end, work start, work end), epoch ns (``device_spans_ns``)
        self.spans: list[tuple[int, int, int, int]] = []

    @property
    def device_spans(self) -> list[tuple[int, int, int, int]] | None:
        """``spans`` where the device work runs apart from the host (the worker thread), None inline: there the
        engine thread does the device work itself, and its time is host work (the forked device process reads
        its inline ``spans``)."""
        return self.spans if self._worker is not None else None

    def copy_pending(self, k: int) -> concurrent.futures.Future | None:
        """The worker step still reading host buffer ``k``, or None when it is done."""
        fut = self._copy_done[k]
        return fut if fut is not None and not fut.done() else None

    def launch(self, plan: StepPlan) -> StepHandle:
        """Inline: run the step now. Worker: submit it and return at once."""
        if self._worker is None:
            t0 = time.time_ns()
            tokens = self._device_step(plan, annotate=True)
            self.spans.append((t0, t0, t0, time.time_ns()))  # inline: handed over as it starts
            return StepHandle(plan, None, tokens)
        with record_function("abprof.forward"):
            future = self._worker.submit(self._timed_step, plan, time.time_ns())
        self._copy_done[plan.buf] = future
        return StepHandle(plan, future)

    def _timed_step(self, plan: StepPlan, handed_ns: int) -> torch.Tensor:
        """The worker's step, recorded in ``spans`` with the time the host handed it over."""
        t0 = time.time_ns()
        try:
            return self._device_step(plan, False)
        finally:
            self.spans.append((handed_ns, handed_ns, t0, time.time_ns()))

    def finish(self, handle: StepHandle) -> list[int]:
        """The step's tokens (blocks on the worker's future; call inside a wait)."""
        tokens = handle.tokens if handle.done is None else handle.done.result()
        return tokens.tolist()

    def _device_step(self, plan: StepPlan, annotate: bool) -> torch.Tensor:
        """The whole device side of a step (copy in, forward, sample)."""
        r, k = self.runner, plan.buf

        def note(name):
            return record_function(name) if annotate else contextlib.nullcontext()

        if r.decode_trace is not None and plan.graph_bs and plan.part2 is None:
            return self._traced_step(plan, note)
        parts = [plan] if plan.part2 is None else [plan, plan.part2]
        for i in range(len(parts)):
            r.dev_raw[i].copy_(r.host.part_raw[k][i])

        with torch.inference_mode():
            with note("abprof.forward"):
                if plan.part2 is None:
                    logits = r.forward(plan)
                elif r.overlap:
                    logits = overlapped_logits(r, plan, annotate)
                else:
                    with note("abprof.forward.decode"):
                        decode_logits = r.forward(plan)
                    with note("abprof.forward.prefill"):
                        prefill_logits = r.forward(plan.part2, r.dev[1])
                    logits = r.merge(decode_logits, prefill_logits, plan)
            with note("abprof.sample"):
                tokens = r.sample(logits)
        r.prev_tokens = tokens
        return tokens

    def _traced_step(self, plan: StepPlan, note) -> torch.Tensor:
        """A decode step as one traced call (``cpu_graphs``), reading the host buffer in place; the sampling too
        when it is greedy."""
        r = self.runner
        with torch.inference_mode():
            with note("abprof.forward"):
                logits, tokens = r.traced_decode(plan, r.host.tensors[plan.buf][0])
            if not r.params.greedy:
                with note("abprof.sample"):
                    tokens = r.sample(logits)
        r.prev_tokens = tokens
        return tokens

    def close(self) -> None:
        """Stop the worker thread (after its queued steps)."""
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None
