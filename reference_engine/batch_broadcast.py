"""Tensor parallelism: how each step's batch reaches the ranks that do not schedule.

Rank 0 schedules and prepares a step into host buffer ``k`` (``step_inputs``): the header's int64 words
get the ``StepPlan`` (token, sequence and sample counts, graph size, gather flag, max query and context
lengths, padded row counts; for a two-part step both parts), and the whole byte buffer goes to every
other rank in **one** ``torch.distributed.broadcast`` over the gloo ``cpu_group``, host to host. The other
ranks receive into their own host buffer ``k`` and launch the same device work; they never run the
scheduler. The sampling parameters and seed do not travel per step: every rank gets them from its
``generate`` call (same arguments on every rank) and samples the same tokens from the same gathered
logits, so no token is ever sent back.

Cost per step: one broadcast of ``HostInputs.nbytes`` bytes (the buffer is sent whole, so the size is
fixed and no size message is needed): ``256 + parts × (8·(4·max_batch_tokens + 2·max_seqs) +
4·(2·max_seqs + 1 + max_seqs·ceil(max_model_len / block_size)))`` rounded up to 8 per part. The tiny
preset with the default ``max_batch_tokens=2048, max_seqs=256, block_size=16`` (``max_model_len`` 2048):
203,016 bytes (``tests/engine/test_engine_tp.py`` checks it);
the block tables are most of it. A stop message (a header with ``STOP``) ends a follower's ``generate``.
"""

from __future__ import annotations

import torch.distributed as dist

from reference_engine.step_inputs import HostInputs, StepPlan

STOP, STEP = 0, 1
_FIELDS = ("num_tokens", "num_seqs", "num_samples", "graph_bs", "has_gather", "max_query_len",
           "max_context_len", "padded_tokens", "padded_samples")


def send_step(host: HostInputs, k: int, plan: StepPlan | None, cpu_group) -> None:
    """Rank 0: write ``plan`` (None: stop) into buffer ``k``'s header and broadcast the buffer."""
    h = host.header[k]
    h[0] = STOP if plan is None else STEP
    h[1] = k
    if plan is not None:
        parts = [plan] if plan.part2 is None else [plan, plan.part2]
        h[2] = len(parts)
        for i, p in enumerate(parts):
            h[3 + 9 * i:12 + 9 * i] = h.new_tensor([int(getattr(p, f)) for f in _FIELDS])
    dist.broadcast(host.raw[k], src=0, group=cpu_group)


def receive_step(host: HostInputs, k: int, cpu_group) -> StepPlan | None:
    """Other ranks: receive rank 0's buffer ``k``; → the step's plan, or None at a stop message."""
    dist.broadcast(host.raw[k], src=0, group=cpu_group)
    h = host.header[k].tolist()
    if h[0] == STOP:
        return None
    if h[1] != k:
        raise RuntimeError(f"tensor-parallel ranks out of step: rank 0 sent buffer {h[1]}, expected {k}")
    plans = [_plan(host, k, i, h[3 + 9 * i:12 + 9 * i]) for i in range(h[2])]
    if len(plans) == 2:
        plans[0].part2 = plans[1]
    return plans[0]


def _plan(host: HostInputs, k: int, part: int, values: list[int]) -> StepPlan:
    f = dict(zip(_FIELDS, values))
    v, b = host.views[k][part], f["num_seqs"]
    eager = f["graph_bs"] == 0  # the host lists only the reference attention reads (eager steps)
    return StepPlan(k, f["num_tokens"], b, f["num_samples"], f["graph_bs"], bool(f["has_gather"]),
                    f["max_query_len"], f["max_context_len"], v["qsl"][:b + 1].tolist() if eager else None,
                    v["ctx"][:b].tolist() if eager else None, f["padded_tokens"], f["padded_samples"])
