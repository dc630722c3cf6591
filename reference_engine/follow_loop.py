"""The loop of a tensor-parallel rank other than 0: receive rank 0's step, run it on this rank's shard.

No scheduler here: rank 0 schedules, and each step's prepared inputs arrive by broadcast
(``batch_broadcast``). The rank launches the step, then waits for the step before it (so at most two
are in flight, as in the async loop); the tokens it samples equal rank 0's and are not used on the
host. A stop message from rank 0 ends the loop.
"""

from __future__ import annotations

from torch.profiler import record_function


def run_follower(runner, on_step=None) -> int:
    """Follow rank 0's steps until it stops; returns the number of steps run."""
    step, inflight = 0, None
    while True:
        with record_function("abprof.step"):
            handle = runner.follow()  # abprof.batch_broadcast, then abprof.forward, abprof.sample
            if inflight is not None:
                runner.wait(inflight)
            inflight = handle
        if handle is None:
            return step
        if on_step is not None:
            on_step(step)
        step += 1
