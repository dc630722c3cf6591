"""The asynchronous loop: step N+1 is scheduled, prepared and launched before step N's tokens are read.

While the device computes step N, the host schedules step N+1 (the scheduler counts step N's tokens
as already sampled), prepares its inputs into the other host buffer and launches it; the tokens of
step N reach step N+1's inputs on the device. Only then does the host wait for step N's tokens and
update the requests, so the device always has the next step queued. A request that ends at EOS is
noticed one step late: the token it sampled in the step after is discarded.
"""

from __future__ import annotations

from torch.profiler import record_function


def run_async(scheduler, runner, clock, on_step=None, idle=None) -> list[tuple[float, float]]:
    """Run until every request has finished; returns each step's (start, end) on ``clock`` (seconds)."""
    spans = []
    inflight = None  # (batch, handle) of the step the device is computing
    while scheduler.has_unfinished or inflight is not None:
        start = clock()
        with record_function("abprof.step"):
            with record_function("abprof.schedule"):
                batch = scheduler.schedule(clock()) if scheduler.has_unfinished else None
            handle = runner.launch(batch) if batch is not None else None  # step N+1 queued behind step N
            if inflight is not None:
                tokens = runner.wait(inflight[1])  # abprof.sync_wait: step N's tokens
                with record_function("abprof.update"):
                    scheduler.update(inflight[0], tokens, clock())
            ran = batch is not None or inflight is not None
            inflight = (batch, handle) if batch is not None else None
        if not ran:
            idle(scheduler, clock)  # nothing has arrived yet
            continue
        spans.append((start, clock()))  # before on_step: a profiler's step() is not the engine's time
        if on_step is not None:
            on_step(len(spans) - 1)
    return spans
