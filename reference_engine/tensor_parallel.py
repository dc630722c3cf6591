"""Tensor parallelism (Megatron style) over ``torch.distributed``: shard a built model across ranks.

Every rank builds the full model deterministically (from the seed or the checkpoint) and keeps its
shard, so that TP=N computes what TP=1 computes up to the order of the all-reduce's sums:

- column-parallel ``qkv_proj`` (each rank: its ``heads/N`` query heads and ``kv_heads/N`` K/V heads) and
  ``gate_up_proj`` (its ``intermediate/N`` gate and up rows); attention and the paged KV cache hold the
  rank's K/V heads only;
- row-parallel ``o_proj`` and ``down_proj`` (the matching input columns), each followed by an all-reduce
  (sum) of its output; their bias, if any, is added on rank 0 only, so it is counted once;
- a vocab-parallel LM head (rows ``vocab/N``), its logits gathered (all-gather) before sampling, so every
  rank holds the full logits. The embedding stays replicated.

Two process groups: ``group`` carries the model's collectives (NCCL on CUDA, gloo on the CPU), and
``cpu_group`` (gloo) carries the per-step batch broadcast from rank 0 (``model_runner``), host to host,
never waiting on a device stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(slots=True)
class TPGroup:
    """This process's place in a tensor-parallel group."""

    rank: int
    size: int
    group: object  # model collectives (NCCL / gloo)
    cpu_group: object  # batch broadcast (gloo)


_GROUP: TPGroup | None = None


def tp_group(tp_size: int) -> TPGroup:
    """The process's TP group (created on first use; every rank must call this in the same order).

    Needs ``torch.distributed`` initialized with world size ``tp_size`` (see ``distributed.launch``).
    """
    global _GROUP
    if not dist.is_initialized():
        raise ValueError(f"tp_size={tp_size} needs torch.distributed initialized (use reference_engine.distributed)")
    if dist.get_world_size() != tp_size:
        raise ValueError(f"tp_size={tp_size} but torch.distributed has world size {dist.get_world_size()}")
    if _GROUP is None:
        cpu = dist.new_group(backend="gloo")  # its own group even on gloo: a second thread may run model collectives
        _GROUP = TPGroup(dist.get_rank(), tp_size, dist.group.WORLD, cpu)
    return _GROUP


def check_divisible(config, tp_size: int) -> None:
    """Raise a one-line ValueError unless heads, K/V heads, intermediate size and vocab split evenly."""
    sizes = {"num_attention_heads": config.num_attention_heads, "num_key_value_heads": config.num_key_value_heads,
             "intermediate_size": config.intermediate_size, "vocab_size": config.vocab_size}
    bad = [f"{name}={value}" for name, value in sizes.items() if value % tp_size]
    if bad:
        raise ValueError(f"tp_size={tp_size} does not divide the model's {', '.join(bad)}")


class RowParallelLinear(nn.Module):
    """A row-parallel projection: this rank's input columns, then an all-reduce (sum) of the output."""

    def __init__(self, full: nn.Linear, rank: int, size: int, group):
        super().__init__()
        n = full.in_features // size
        self.weight = nn.Parameter(full.weight[:, rank * n:(rank + 1) * n].contiguous(), requires_grad=False)
        self.bias = (nn.Parameter(full.bias.clone(), requires_grad=False)
                     if full.bias is not None and rank == 0 else None)
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = nn.functional.linear(x, self.weight, self.bias)
        dist.all_reduce(out, group=self.group)
        return out

    def start(self, x: torch.Tensor) -> tuple[torch.Tensor, object]:
        """The GEMM, then its all-reduce issued without waiting: → (output, work). The output holds the
        sum only after ``work.wait()`` (gloo: blocks the host; NCCL: orders the current stream after it)."""
        out = nn.functional.linear(x, self.weight, self.bias)
        return out, all_reduce_async(out, self.group)


def all_reduce_async(tensor: torch.Tensor, group) -> object:
    """Sum ``tensor`` over ``group`` in place, asynchronously (``async_op=True``); → the work handle.
    One function so that a test can record the order in which the collectives are issued."""
    return dist.all_reduce(tensor, group=group, async_op=True)


def _rows(linear: nn.Linear, spans: list[tuple[int, int]]) -> nn.Linear:
    """A column-parallel shard: the output rows ``spans`` of ``linear``, concatenated."""
    weight = torch.cat([linear.weight[a:b] for a, b in spans])
    shard = nn.Linear(linear.in_features, weight.shape[0], bias=linear.bias is not None,
                      device=weight.device, dtype=weight.dtype)
    shard.weight.copy_(weight)
    if linear.bias is not None:
        shard.bias.copy_(torch.cat([linear.bias[a:b] for a, b in spans]))
    return shard.requires_grad_(False)


@torch.no_grad()
def shard_model(model, tp: TPGroup) -> None:
    """Replace ``model``'s (a built ``CausalLM``) parameters by rank ``tp.rank``'s shard, in place."""
    r, n = tp.rank, tp.size
    check_divisible(model.config, n)
    for layer in model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        hq, hk, d = attn.num_heads // n, attn.num_kv_heads // n, attn.head_dim
        q, kv = attn.q_size, attn.kv_size
        attn.qkv_proj = _rows(attn.qkv_proj, [(r * hq * d, (r + 1) * hq * d),
                                              (q + r * hk * d, q + (r + 1) * hk * d),
                                              (q + kv + r * hk * d, q + kv + (r + 1) * hk * d)])
        attn.o_proj = RowParallelLinear(attn.o_proj, r, n, tp.group)
        attn.num_heads, attn.num_kv_heads, attn.q_size, attn.kv_size = hq, hk, hq * d, hk * d
        m = mlp.intermediate // n
        mlp.gate_up_proj = _rows(mlp.gate_up_proj, [(r * m, (r + 1) * m),
                                                    (mlp.intermediate + r * m, mlp.intermediate + (r + 1) * m)])
        mlp.down_proj = RowParallelLinear(mlp.down_proj, r, n, tp.group)
        mlp.intermediate = m
    head = model.embed_tokens.weight if model.tie else model.lm_head.weight
    v = head.shape[0] // n
    model.lm_head = nn.Linear(head.shape[1], v, bias=False, device=head.device, dtype=head.dtype)
    model.lm_head.weight.copy_(head[r * v:(r + 1) * v])
    model.lm_head.requires_grad_(False)
    model.tie = False
    model.gather_logits = lambda logits: gather_vocab(logits, tp)


def gather_vocab(logits: torch.Tensor, tp: TPGroup) -> torch.Tensor:
    """``[S, V/N]`` per rank → ``[S, V]`` on every rank (all-gather; rank r's slice is columns r·V/N ..)."""
    parts = [torch.empty_like(logits) for _ in range(tp.size)]
    dist.all_gather(parts, logits.contiguous(), group=tp.group)
    return torch.cat(parts, dim=-1)
