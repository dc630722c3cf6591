"""Paged attention: the interface the model calls, and the plain-torch reference implementation.

Layout (shared by every backend):

- ``k_cache``/``v_cache``: ``[num_blocks, block_size, num_kv_heads, head_dim]``, one pair per layer.
- A step's tokens are packed: ``q`` is ``[T, num_heads, head_dim]``, ``k``/``v`` ``[T, num_kv_heads, head_dim]``;
  sequence ``i`` owns rows ``query_start_loc[i]:query_start_loc[i+1]``.
- ``slot_mapping[t]`` = ``block_id * block_size + offset`` where token ``t``'s K/V go; ``-1`` skips
  the token (padding in CUDA-graph batches).
- ``context_lens[i]`` = tokens of sequence ``i`` in the cache *after* this step's tokens are stored;
  its ``n`` query tokens sit at positions ``context_lens[i]-n .. context_lens[i]-1`` and attend
  causally to every cached token up to their own position (prefill chunks over a cached prefix,
  decodes, and mixtures of both in one step).
- ``block_tables[i, j]`` = the cache block holding positions ``j*block_size ..`` of sequence ``i``.

The CUDA fast path (Triton kernels reading K/V in place through the block tables) lives in
``reference_engine.triton_attention`` and is chosen automatically for CUDA tensors when Triton is
importable; this module's reference implementation is what it is tested against.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(slots=True)
class AttentionMetadata:
    """Where a step's tokens sit in the paged cache. Tensors live on the model's device."""

    slot_mapping: torch.Tensor  # [T] int64
    query_start_loc: torch.Tensor  # [B+1] int32
    context_lens: torch.Tensor  # [B] int32
    block_tables: torch.Tensor  # [B, max_blocks_per_seq] int32
    max_query_len: int  # host-side bounds, so no kernel needs a device→host read
    max_context_len: int
    # Host copies of query_start_loc / context_lens for the reference path (avoids device syncs).
    query_start_loc_host: list[int] | None = None
    context_lens_host: list[int] | None = None
    # a decode-only step with no host values at all (``cpu_graphs``' traced forward): ``block_tables`` holds
    # exactly the columns the longest context needs
    traced_decode: bool = False

    @property
    def decode_only(self) -> bool:
        """Every sequence contributes exactly one query token."""
        return self.max_query_len == 1


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write a step's K/V into the paged cache through ``slot_mapping``, one operation per tensor."""
    if k.is_cuda and _triton_backend() is not None:
        _triton_backend().store_kv(k, v, k_cache, v_cache, slot_mapping)
        return
    store_kv_reference(k, v, k_cache, v_cache, slot_mapping)


def store_kv_reference(k, v, k_cache, v_cache, slot_mapping) -> None:
    """Plain torch: scatter rows whose slot is not -1."""
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slots, k[keep].to(k_cache.dtype))
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slots, v[keep].to(v_cache.dtype))


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    meta: AttentionMetadata, scale: float | None = None) -> torch.Tensor:
    """Causal attention of packed queries over the paged cache; returns ``[T, num_heads, head_dim]``."""
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    backend = _triton_backend() if q.is_cuda else None
    if backend is not None:
        return backend.paged_attention(q, k_cache, v_cache, meta, scale)
    if meta.traced_decode:
        return paged_decode_padded(q, k_cache, v_cache, meta.block_tables, meta.context_lens, scale)
    return paged_attention_batched(q, k_cache, v_cache, meta, scale)


def paged_decode_padded(q, k_cache, v_cache, block_tables, context_lens, scale: float) -> torch.Tensor:
    """A decode-only step (one query per row) from device tensors alone: every row's K/V gathered through
    all the columns of ``block_tables`` (``[B, NB]``: the caller slices it to the blocks the longest context
    needs), positions past ``context_lens`` masked, one SDPA. No host value and no shape-dependent branch,
    so that one ``torch.jit.trace`` of it serves every batch size and context length (``cpu_graphs``). A
    row with an empty context (padding) attends to its first slot, so that its output stays finite."""
    b, nb = block_tables.shape
    block_size, num_kv_heads, head_dim = k_cache.shape[1], k_cache.shape[2], k_cache.shape[3]
    blocks = block_tables.long()
    keys = k_cache[blocks].reshape(b, nb * block_size, num_kv_heads, head_dim).transpose(1, 2).to(q.dtype)
    values = v_cache[blocks].reshape(b, nb * block_size, num_kv_heads, head_dim).transpose(1, 2).to(q.dtype)
    mask = torch.arange(nb * block_size, device=q.device)[None, :] < context_lens.clamp(min=1)[:, None]
    o = F.scaled_dot_product_attention(q[:, :, None, :], keys, values, attn_mask=mask[:, None, None, :],
                                       scale=scale, enable_gqa=True)
    return o[:, :, 0, :]


def paged_attention_batched(q, k_cache, v_cache, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """``paged_attention_reference`` with every decoding sequence at once: their K/V gathered through the block
    tables into rows padded to the longest context, one SDPA; a sequence with several queries (a prefill
    chunk) on its own, as in the reference, so that memory stays that of one sequence's scores.

    On the CPU, whose engine runs this path, the reference's dozen torch calls per sequence and layer held the
    interpreter lock for most of a decode step. Rows past the last query (padding) are zero."""
    qsl = meta.query_start_loc_host or meta.query_start_loc.tolist()
    ctx = meta.context_lens_host or meta.context_lens.tolist()
    out = torch.zeros_like(q)
    qlen = [qsl[i + 1] - qsl[i] for i in range(len(ctx))]
    decodes = [i for i, n in enumerate(qlen) if n == 1]
    for group in ([decodes] if decodes else []) + [[i] for i, n in enumerate(qlen) if n > 1]:
        _attend(q, k_cache, v_cache, meta.block_tables, qsl, ctx, group, scale, out)
    return out


def _attend(q, k_cache, v_cache, block_tables, qsl: list[int], ctx_l: list[int], seqs: list[int], scale: float,
            out: torch.Tensor) -> None:
    """Sequences ``seqs`` of the step (query rows from ``qsl``, context lengths ``ctx_l``) in one masked SDPA,
    written into ``out``."""
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads, block_size = k_cache.shape[2], k_cache.shape[1]
    dev = q.device
    qlens, ctxs = [qsl[i + 1] - qsl[i] for i in seqs], [ctx_l[i] for i in seqs]
    max_q, max_ctx = max(qlens), max(ctxs)
    start = torch.tensor([qsl[i] for i in seqs], device=dev)
    qlen = torch.tensor(qlens, device=dev)
    ctx = torch.tensor(ctxs, device=dev)
    kpos = torch.arange(max_ctx, device=dev)
    tables = block_tables[torch.tensor(seqs, device=dev), :-(-max_ctx // block_size)].long()
    # table entries past a sequence's blocks are stale: clamped into the cache, masked below
    slots = (tables[:, kpos // block_size] * block_size + kpos % block_size).clamp(0, k_cache.shape[0] * block_size - 1)
    keys = k_cache.reshape(-1, num_kv_heads, head_dim)[slots].to(q.dtype).transpose(1, 2)  # [B, KVH, L, D]
    values = v_cache.reshape(-1, num_kv_heads, head_dim)[slots].to(q.dtype).transpose(1, 2)
    if num_heads != num_kv_heads:
        keys = keys.repeat_interleave(num_heads // num_kv_heads, dim=1)
        values = values.repeat_interleave(num_heads // num_kv_heads, dim=1)
    j = torch.arange(max_q, device=dev)
    valid = j[None, :] < qlen[:, None]  # [B, Q]
    rows = (start[:, None] + j[None, :]).clamp(max=q.shape[0] - 1)
    query = q[rows].transpose(1, 2)  # [B, H, Q, D]
    # query j of a sequence sits at position ctx - qlen + j and sees keys 0 .. that position
    mask = kpos[None, None, :] <= (ctx[:, None] - qlen[:, None] + j[None, :])[:, :, None]
    o = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask[:, None], scale=scale).transpose(1, 2)
    out[rows[valid]] = o[valid]


def paged_attention_reference(q, k_cache, v_cache, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """Gather each sequence's K/V through its block table, then SDPA with a causal offset (slow, exact)."""
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads, block_size = k_cache.shape[2], k_cache.shape[1]
    group = num_heads // num_kv_heads
    qsl = meta.query_start_loc_host or meta.query_start_loc.tolist()
    ctx = meta.context_lens_host or meta.context_lens.tolist()
    out = torch.empty_like(q)
    for i, length in enumerate(ctx):
        start, end = qsl[i], qsl[i + 1]
        n = end - start
        if n == 0:
            continue
        nblocks = -(-length // block_size)
        blocks = meta.block_tables[i, :nblocks].long()
        keys = k_cache[blocks].reshape(-1, num_kv_heads, head_dim)[:length]
        values = v_cache[blocks].reshape(-1, num_kv_heads, head_dim)[:length]
        keys = keys.repeat_interleave(group, dim=1).transpose(0, 1).to(q.dtype)  # [H, L, D]
        values = values.repeat_interleave(group, dim=1).transpose(0, 1).to(q.dtype)
        query = q[start:end].transpose(0, 1)  # [H, n, D]
        # query j sits at position length-n+j and sees keys 0..length-n+j
        qpos = torch.arange(length - n, length, device=q.device).unsqueeze(1)
        kpos = torch.arange(length, device=q.device).unsqueeze(0)
        mask = kpos <= qpos
        out[start:end] = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask,
                                                        scale=scale).transpose(0, 1)
    return out


_MODULES: dict[str, object | None] = {}


def triton_module(name: str):
    """``reference_engine.<name>`` (a Triton kernel module), or None where Triton or CUDA is not available."""
    if name not in _MODULES:
        try:
            module = importlib.import_module(f"reference_engine.{name}")
        except ImportError:
            module = None
        _MODULES[name] = module if module is not None and module.available() else None
    return _MODULES[name]


def _triton_backend():
    """The Triton attention backend, or None where Triton (or the module) is not available."""
    return triton_module("triton_attention")
