"""The synchronous loop: schedule → prepare → copy → forward → sample → wait for the tokens → update.

The GPU idles while the host schedules, prepares and updates: that idle time is what abprof measures.
Compare with ``async_loop.py``: the steps are the same calls, only the wait moves.
"""

from __future__ import annotations

from torch.profiler import record_function


def run_sync(scheduler, runner, clock, on_step=None, idle=None) -> list[tuple[float, float]]:
    """Run until every request has finished; returns each step's (start, end) on ``clock`` (seconds)."""
    spans = []
    while scheduler.has_unfinished:
        start = clock()
        with record_function("abprof.step"):
            with record_function("abprof.schedule"):
                batch = scheduler.schedule(clock())
            if batch is not None:
                handle = runner.launch(batch)  # abprof.prepare, abprof.forward, abprof.sample
                tokens = runner.wait(handle)  # abprof.sync_wait: the GPU's tokens, blocking
                with record_function("abprof.update"):
                    scheduler.update(batch, tokens, clock())
        if batch is None:
            idle(scheduler, clock)  # nothing has arrived yet
            continue
        spans.append((start, clock()))  # before on_step: a profiler's step() is not the engine's time
        if on_step is not None:
            on_step(len(spans) - 1)
    return spans
