"""The device on the CPU: a child process that runs each step's device work, in both loops.

A GPU computes while the host thread prepares the next step. On the CPU the async loop's device work was
a worker thread of the engine's own process, and the worker and the host thread are both Python under one
interpreter lock: every torch call the worker makes hands the lock to the host thread, which keeps it for
its whole turn, so the two took turns instead of overlapping and the async loop was not faster than the
sync one (reports/cpu-default.md). A forked child process has its own interpreter: it computes step N
while the host prepares step N+1, as the GPU does. The sync loop hands its steps to the same child and
waits for each, as it waits for a GPU.

The child is forked when the runner is built, so it holds the model, the KV cache and the traced decode
step as they are then (the parent's copies are no longer written). The two host input buffers are shared
memory: the host prepares step N+1 into one while the child reads step N's inputs from the other, and
``copy_pending`` keeps the host from rewriting a buffer whose step has not finished (the runner's
``wait_buffer``). A step goes to the child as its ``StepPlan`` through a pipe, and its sampled tokens come
back the same way, in launch order, with when the child worked on it (``spans``, epoch ns: one clock for both
processes). The child's work is not in the parent's profile, as a GPU's kernels are not CPU ops: the host's
side (``abprof.forward`` around the hand-over, ``abprof.sync_wait`` around the wait for the tokens) is, and
abprof run adds the child's steps to the trace from ``spans`` (``GenerateResult.device_spans_ns``).
"""

from __future__ import annotations

import multiprocessing
import signal
import time
import traceback
import warnings
import weakref

import torch
from torch.profiler import record_function

from reference_engine.step_inputs import StepHandle, StepPlan


# Each side polls its pipe for this long before it sleeps in the kernel: a sleeping process takes 100-300 us
# to wake on a small VM, a whole decode step's worth; CUDA's default wait spins too while a core is free
SPIN_S = 0.01


def _readable(conn, spin_s: float = SPIN_S) -> bool:
    """Poll ``conn`` for up to ``spin_s`` without sleeping; True once a message is waiting."""
    end = time.perf_counter() + spin_s
    while True:
        if conn.poll(0):
            return True
        if time.perf_counter() > end:
            return False


def can_fork() -> bool:
    """Whether this process can fork the device process: not on Windows (no fork), and not in a daemonic process
    (abprof run's rank processes, ``--tp``), which multiprocessing does not let have children. Where it cannot,
    the worker thread runs the async loop's device work."""
    return "fork" in multiprocessing.get_all_start_methods() and not multiprocessing.current_process().daemon


class DeviceProcessError(RuntimeError):
    """The device process failed a step, or died."""


class _Pending:
    """The step ``step`` still reading a host buffer; ``result()`` blocks until its tokens have come back."""

    def __init__(self, device: CpuProcessDevice, step: int):
        self.device, self.step = device, step

    def result(self) -> None:
        self.device._receive_until(self.step)


class CpuProcessDevice:
    """Runs a runner's steps in a forked child process (``worker``: the runner's inline ``CpuDevice``, which runs
    them there on the child's copy of the runner).

    ``reply_timeout_s``: how long the host waits for the child's next answer before it gives up on a child that
    is alive but stuck (as it was when GNU OpenMP hung in the fork, b5d50b4) with ``DeviceProcessError``
    instead of waiting forever; a step of the largest preset on the CPU takes seconds."""

    reply_timeout_s = 600.0

    def __init__(self, worker):
        self.streams: list = [None]
        ctx = multiprocessing.get_context("fork")
        parent_end, child_end = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(worker, child_end, parent_end), name="abprof-device",
                                 daemon=True)
        with warnings.catch_warnings():
            # Python 3.12 warns when a process with threads forks (a progress display's, a profiler's): the child
            # only runs torch and its pipe, none of the locks those threads take
            warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
            self._proc.start()
        child_end.close()
        self._conn = parent_end
        self._launched, self._received = 0, 0
        self._results: dict[int, list[int]] = {}
        self._buffer_step = [-1, -1]  # the step reading host buffer k
        self._handed: dict[int, tuple[int, int]] = {}  # step → the hand-over's start and end, epoch ns
        # per step whose tokens came back: (hand-over start, hand-over end, work start, work end), epoch ns
        self.spans: list[tuple[int, int, int, int]] = []
        self._finalizer = weakref.finalize(self, _stop, self._proc, self._conn)

    @property
    def device_spans(self) -> list[tuple[int, int, int, int]]:
        """``spans``: the child's steps, apart from the host (``GenerateResult.device_spans_ns``)."""
        return self.spans

    def configure(self, params, seed: int) -> None:
        """The sampling parameters and generator seed of the next ``generate`` (the child samples)."""
        self._send(("sampling", params, seed))

    def copy_pending(self, k: int) -> _Pending | None:
        step = self._buffer_step[k]
        return _Pending(self, step) if step >= self._received else None

    def launch(self, plan: StepPlan) -> StepHandle:
        """Hand the step to the child and return at once."""
        t0 = time.time_ns()
        with record_function("abprof.forward"):
            self._send(("step", plan))
        step = self._launched
        self._handed[step] = (t0, time.time_ns())
        self._launched += 1
        self._buffer_step[plan.buf] = step
        return StepHandle(plan, step, step=step)

    def finish(self, handle: StepHandle) -> list[int]:
        """The step's tokens (blocks until the child has sent them; call inside a wait)."""
        self._receive_until(handle.step)
        return self._results.pop(handle.step)

    def _receive_until(self, step: int) -> None:
        while self._received <= step:
            deadline = time.monotonic() + self.reply_timeout_s
            while not (_readable(self._conn) or self._conn.poll(min(1.0, self.reply_timeout_s))):
                if not self._proc.is_alive():
                    raise DeviceProcessError(f"the device process died (exit code {self._exit_code()})")
                if time.monotonic() > deadline:
                    self.close()  # a stuck child is stopped (killed if it does not stop), not left behind
                    raise DeviceProcessError(f"the device process has not finished step {self._received} in "
                                             f"{self.reply_timeout_s:g} s while alive: stuck; it was stopped")
            try:
                kind, value = self._conn.recv()
            except (EOFError, OSError):
                raise DeviceProcessError(f"the device process died (exit code {self._exit_code()})") from None
            if kind == "error":
                raise DeviceProcessError(f"the device process failed a step:\n{value}")
            tokens, (_, _, start, end) = value
            self._results[self._received] = tokens
            self.spans.append((*self._handed.pop(self._received), start, end))
            self._received += 1

    def _send(self, msg) -> None:
        try:
            self._conn.send(msg)
        except OSError:  # BrokenPipeError, ConnectionResetError
            raise DeviceProcessError(f"the device process died (exit code {self._exit_code()})") from None

    def _exit_code(self):
        self._proc.join(timeout=1)
        return self._proc.exitcode

    def close(self) -> None:
        self._finalizer()


def _stop(proc, conn) -> None:
    try:
        conn.send(None)
    except (BrokenPipeError, OSError):
        pass
    proc.join(timeout=5)
    if proc.is_alive():
        proc.kill()
        proc.join(timeout=5)
    conn.close()


def _serve(worker, conn, parent_end) -> None:
    """The child: run each step it is sent, send back its tokens, until told to stop (None) or orphaned."""
    parent_end.close()  # so that the parent's exit ends recv() with EOFError
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it then stops the child
    # one compute thread: GNU OpenMP (torch's CPU builds) cannot start threads in a process forked from one that
    # has used them, and a parallel region would hang here; the engine asks for one thread throughout (engine.py)
    torch.set_num_threads(1)
    runner = worker.runner
    while True:
        try:
            _readable(conn)
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        if msg[0] == "sampling":
            runner.configure_sampling(*msg[1:])  # its device side is the inline worker: no message back
            continue
        try:
            tokens = worker.finish(worker.launch(msg[1]))
        except Exception:  # noqa: BLE001 - reported to the parent, which raises it
            conn.send(("error", traceback.format_exc()))
            continue
        conn.send(("tokens", (tokens, worker.spans.pop())))  # with when the child worked on it (epoch ns)
