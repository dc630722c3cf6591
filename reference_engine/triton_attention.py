"""Triton paged attention: the CUDA fast path behind ``reference_engine.attention``.

Same layout and semantics as ``attention.py`` (see its docstring). Three kernels:

- ``_store_kv_kernel``: one launch per call writes every token's K and V through ``slot_mapping``
  (slot ``-1`` is skipped).
- ``_decode_kernel`` + ``_decode_reduce_kernel``: decode-only steps (``meta.max_query_len == 1``),
  flash-decoding style. Program ``(kv_head, split, seq)`` handles all query heads of one KV head
  group over one contiguous share of the sequence's context, reading K/V in place through the block
  table; when there is more than one split a second small kernel merges the partial softmaxes.
  The grid depends only on the batch size, the head counts and the device's SM count, and every loop
  bound is read from ``context_lens`` inside the kernel, so the pair replays from a CUDA graph
  captured once per padded batch size.
- ``_varlen_kernel``: any step (prefill chunks over a cached prefix, decodes, mixtures). Program
  ``(query_tile, kv_head)`` finds its sequence by a binary search over ``query_start_loc`` (the grid
  is ``cdiv(T, BLOCK_Q) + B`` tiles, from shapes alone), takes ``BLOCK_Q`` query tokens times the
  group's query heads as the rows of one tile, and walks the keys up to its last query's position.

Nothing here reads a device tensor on the host.
"""

from __future__ import annotations

import math
import os

import torch

try:  # Triton ships with torch's CUDA builds; CPU-only installs may lack it.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is missing
    triton = None
    tl = None

__all__ = ["available", "store_kv", "paged_attention", "decode_config", "varlen_config"]

_LOG2E = 1.4426950408889634


def available() -> bool:
    """True only where Triton imports and a CUDA device is present."""
    if triton is None:
        return False
    try:
        return torch.cuda.is_available()
    except Exception:  # pragma: no cover
        return False


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


if triton is not None:

    @triton.jit
    def _cache_slot(c_ptr, slot, offs_h, offs_d, stride_b, stride_s, stride_h, BLOCK_SIZE: tl.constexpr):
        """Pointers to heads ``offs_h`` (rows) × dims ``offs_d`` of a paged cache's slot ``slot`` (int64)."""
        return (c_ptr + (slot // BLOCK_SIZE) * stride_b + (slot % BLOCK_SIZE) * stride_s
                + offs_h[:, None] * stride_h + offs_d[None, :])

    @triton.jit
    def _store_kv_kernel(k_ptr, v_ptr, kc_ptr, vc_ptr, slot_ptr,
                         stride_kt, stride_kh, stride_vt, stride_vh,
                         stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch,
                         NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                         BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr):
        t = tl.program_id(0)
        slot = tl.load(slot_ptr + t).to(tl.int64)
        offs_h = tl.arange(0, BLOCK_H)
        offs_d = tl.arange(0, BLOCK_D)
        mask = (offs_h[:, None] < NUM_KV_HEADS) & (offs_d[None, :] < HEAD_DIM) & (slot >= 0)
        t64 = t.to(tl.int64)
        k = tl.load(k_ptr + t64 * stride_kt + offs_h[:, None] * stride_kh + offs_d[None, :], mask=mask)
        v = tl.load(v_ptr + t64 * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :], mask=mask)
        kc = _cache_slot(kc_ptr, slot, offs_h, offs_d, stride_kcb, stride_kcs, stride_kch, BLOCK_SIZE)
        vc = _cache_slot(vc_ptr, slot, offs_h, offs_d, stride_vcb, stride_vcs, stride_vch, BLOCK_SIZE)
        tl.store(kc, k.to(kc_ptr.dtype.element_ty), mask=mask)
        tl.store(vc, v.to(vc_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _decode_kernel(q_ptr, k_ptr, v_ptr, bt_ptr, ctx_ptr, qsl_ptr, out_ptr,
                       po_ptr, pml_ptr,
                       qk_scale,  # softmax scale * log2(e)
                       stride_qt, stride_qh,
                       stride_kb, stride_ks, stride_kh,
                       stride_vb, stride_vs, stride_vh,
                       stride_bt, stride_ot, stride_oh,
                       NUM_HEADS: tl.constexpr, GROUP: tl.constexpr, BLOCK_G: tl.constexpr,
                       HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                       BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr, IEEE: tl.constexpr,
                       UPCAST: tl.constexpr):
        kvh = tl.program_id(0)
        split = tl.program_id(1)
        seq = tl.program_id(2)
        q_row = tl.load(qsl_ptr + seq)
        n_q = tl.load(qsl_ptr + seq + 1) - q_row
        ctx = tl.load(ctx_ptr + seq)
        ctx = tl.where(n_q > 0, ctx, 0)

        offs_g = tl.arange(0, BLOCK_G)
        offs_d = tl.arange(0, BLOCK_D)
        offs_n = tl.arange(0, BLOCK_N)
        heads = kvh * GROUP + offs_g
        g_mask = offs_g < GROUP
        if HEAD_DIM == BLOCK_D:
            q_mask = g_mask[:, None]
        else:
            q_mask = g_mask[:, None] & (offs_d[None, :] < HEAD_DIM)
        q = tl.load(q_ptr + q_row.to(tl.int64) * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
                    mask=q_mask & (n_q > 0), other=0.0)
        if UPCAST:  # Triton's interpreter gets bf16/fp16 tl.dot wrong; it computes in fp32 instead
            q = q.to(tl.float32)

        # this split's share of the context, in whole key tiles
        per_split = tl.cdiv(tl.cdiv(ctx, NUM_SPLITS), BLOCK_N) * BLOCK_N
        start = split * per_split
        end = tl.minimum(start + per_split, ctx)

        m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
        acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
        bt_row = bt_ptr + seq.to(tl.int64) * stride_bt
        for n0 in range(start, end, BLOCK_N):
            pos = n0 + offs_n
            n_mask = pos < end
            blk = tl.load(bt_row + pos // BLOCK_SIZE, mask=n_mask, other=0).to(tl.int64)
            within = pos % BLOCK_SIZE
            if HEAD_DIM == BLOCK_D:
                kv_mask = n_mask[:, None]
            else:
                kv_mask = n_mask[:, None] & (offs_d[None, :] < HEAD_DIM)
            k = tl.load(k_ptr + blk[:, None] * stride_kb + within[:, None] * stride_ks + kvh * stride_kh
                        + offs_d[None, :], mask=kv_mask, other=0.0)
            v = tl.load(v_ptr + blk[:, None] * stride_vb + within[:, None] * stride_vs + kvh * stride_vh
                        + offs_d[None, :], mask=kv_mask, other=0.0)
            k = k.to(q.dtype)
            v = v.to(q.dtype)
            if IEEE:
                s = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                s = tl.dot(q, tl.trans(k))
            s = s * qk_scale
            s = tl.where(n_mask[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            if IEEE:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
            else:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new

        if NUM_SPLITS == 1:
            out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
            o_ptrs = out_ptr + q_row.to(tl.int64) * stride_ot + heads[:, None] * stride_oh + offs_d[None, :]
            tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=q_mask & (n_q > 0))
        else:
            # partials: po [B, H, S, BLOCK_D] (unnormalized), pml [B, H, S, 2] (max, sum)
            base = (seq.to(tl.int64) * NUM_HEADS + heads) * NUM_SPLITS + split
            tl.store(po_ptr + base[:, None] * BLOCK_D + offs_d[None, :], acc, mask=g_mask[:, None])
            tl.store(pml_ptr + base * 2, m_i, mask=g_mask)
            tl.store(pml_ptr + base * 2 + 1, l_i, mask=g_mask)

    @triton.jit
    def _decode_reduce_kernel(po_ptr, pml_ptr, qsl_ptr, out_ptr, stride_ot, stride_oh,
                              NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                              NUM_SPLITS: tl.constexpr):
        head = tl.program_id(0)
        seq = tl.program_id(1)
        q_row = tl.load(qsl_ptr + seq)
        n_q = tl.load(qsl_ptr + seq + 1) - q_row
        offs_s = tl.arange(0, NUM_SPLITS)
        offs_d = tl.arange(0, BLOCK_D)
        base = (seq.to(tl.int64) * NUM_HEADS + head) * NUM_SPLITS + offs_s
        m = tl.load(pml_ptr + base * 2)
        l = tl.load(pml_ptr + base * 2 + 1)
        m_max = tl.max(m, 0)
        m_safe = tl.where(m_max == float("-inf"), 0.0, m_max)
        w = tl.where(m == float("-inf"), 0.0, tl.exp2(m - m_safe))
        total = tl.sum(w * l, 0)
        acc = tl.load(po_ptr + base[:, None] * BLOCK_D + offs_d[None, :])
        out = tl.sum(acc * w[:, None], 0) / tl.where(total > 0, total, 1.0)
        tl.store(out_ptr + q_row.to(tl.int64) * stride_ot + head * stride_oh + offs_d,
                 out.to(out_ptr.dtype.element_ty), mask=(offs_d < HEAD_DIM) & (n_q > 0))

    @triton.jit
    def _varlen_step(q, m_i, l_i, acc, n0, kv_end, q_pos, offs_n, offs_d, bt_row, k_ptr, v_ptr, kvh, qk_scale,
                     stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                     HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                     IEEE: tl.constexpr, MASKED: tl.constexpr):
        """One key tile of the varlen kernel's online softmax; MASKED: the causal/length edge."""
        pos = n0 + offs_n
        if MASKED:
            n_mask = pos < kv_end
            blk = tl.load(bt_row + pos // BLOCK_SIZE, mask=n_mask, other=0).to(tl.int64)
            if HEAD_DIM == BLOCK_D:
                kv_mask = n_mask[:, None]
            else:
                kv_mask = n_mask[:, None] & (offs_d[None, :] < HEAD_DIM)
        else:
            blk = tl.load(bt_row + pos // BLOCK_SIZE).to(tl.int64)
            kv_mask = (offs_d < HEAD_DIM)[None, :]  # all true (constant) where HEAD_DIM == BLOCK_D
        within = pos % BLOCK_SIZE
        k = tl.load(k_ptr + blk[:, None] * stride_kb + within[:, None] * stride_ks + kvh * stride_kh
                    + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + blk[:, None] * stride_vb + within[:, None] * stride_vs + kvh * stride_vh
                    + offs_d[None, :], mask=kv_mask, other=0.0)
        k = k.to(q.dtype)
        v = v.to(q.dtype)
        if IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = s * qk_scale
        if MASKED:
            visible = n_mask[None, :] & (pos[None, :] <= q_pos[:, None])
            s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that saw nothing yet
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(s - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        return m_new, l_i, acc

    @triton.jit
    def _varlen_kernel(q_ptr, k_ptr, v_ptr, bt_ptr, ctx_ptr, qsl_ptr, out_ptr,
                       qk_scale, num_seqs,
                       stride_qt, stride_qh,
                       stride_kb, stride_ks, stride_kh,
                       stride_vb, stride_vs, stride_vh,
                       stride_bt, stride_ot, stride_oh,
                       GROUP: tl.constexpr, BLOCK_G: tl.constexpr,
                       HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                       BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
                       UPCAST: tl.constexpr):
        tile = tl.program_id(0)
        kvh = tl.program_id(1)
        # sequence i owns tiles [qsl[i] // BLOCK_Q + i, qsl[i+1] // BLOCK_Q + i + 1): find i by binary search
        lo = 0
        hi = num_seqs
        while lo < hi:
            mid = (lo + hi) // 2
            first = tl.load(qsl_ptr + mid) // BLOCK_Q + mid
            if first <= tile:
                lo = mid + 1
            else:
                hi = mid
        seq = lo - 1
        q_start = tl.load(qsl_ptr + seq)
        n_q = tl.load(qsl_ptr + seq + 1) - q_start
        local = (tile - (q_start // BLOCK_Q + seq)) * BLOCK_Q
        if local < n_q:
            ctx = tl.load(ctx_ptr + seq)
            BLOCK_M: tl.constexpr = BLOCK_Q * BLOCK_G
            offs_m = tl.arange(0, BLOCK_M)
            offs_d = tl.arange(0, BLOCK_D)
            offs_n = tl.arange(0, BLOCK_N)
            qi = local + offs_m // BLOCK_G  # query index within the sequence
            g = offs_m % BLOCK_G
            row_mask = (qi < n_q) & (g < GROUP)
            heads = kvh * GROUP + g
            rows = (q_start + qi).to(tl.int64)
            if HEAD_DIM == BLOCK_D:
                q_mask = row_mask[:, None]
            else:
                q_mask = row_mask[:, None] & (offs_d[None, :] < HEAD_DIM)
            q = tl.load(q_ptr + rows[:, None] * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
                        mask=q_mask, other=0.0)
            if UPCAST:
                q = q.to(tl.float32)
            q_pos = ctx - n_q + qi  # each query's position; it sees keys 0..q_pos
            kv_end = tl.minimum(ctx, ctx - n_q + local + BLOCK_Q)

            m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
            l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
            acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
            bt_row = bt_ptr + seq.to(tl.int64) * stride_bt
            # keys below full_end are visible to every row of the tile: no masks there
            full_end = ((ctx - n_q + local + 1) // BLOCK_N) * BLOCK_N
            for n0 in range(0, full_end, BLOCK_N):
                m_i, l_i, acc = _varlen_step(q, m_i, l_i, acc, n0, kv_end, q_pos, offs_n, offs_d, bt_row,
                                             k_ptr, v_ptr, kvh, qk_scale,
                                             stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                                             HEAD_DIM, BLOCK_D, BLOCK_SIZE, IEEE, False)
            for n0 in range(full_end, kv_end, BLOCK_N):
                m_i, l_i, acc = _varlen_step(q, m_i, l_i, acc, n0, kv_end, q_pos, offs_n, offs_d, bt_row,
                                             k_ptr, v_ptr, kvh, qk_scale,
                                             stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                                             HEAD_DIM, BLOCK_D, BLOCK_SIZE, IEEE, True)
            out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
            tl.store(out_ptr + rows[:, None] * stride_ot + heads[:, None] * stride_oh + offs_d[None, :],
                     out.to(out_ptr.dtype.element_ty), mask=q_mask)


# ----------------------------------------------------------------------------------------------
# host side


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write ``k``/``v`` ``[T, num_kv_heads, head_dim]`` into the paged caches through ``slot_mapping``."""
    num_tokens = k.shape[0]
    if num_tokens == 0:
        return
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    k = k if k.stride(-1) == 1 else k.contiguous()
    v = v if v.stride(-1) == 1 else v.contiguous()
    assert k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1
    _store_kv_kernel[(num_tokens,)](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim,
        BLOCK_H=_next_pow2(num_kv_heads), BLOCK_D=_next_pow2(head_dim), BLOCK_SIZE=k_cache.shape[1],
        num_warps=4 if num_kv_heads * head_dim >= 1024 else 2,
    )


# Tuning knobs for the decode kernel; ``None`` means the heuristic. The benchmark overrides them.
decode_config: dict[str, int | None] = {"num_splits": None, "block_n": None, "num_warps": None,
                                        "num_stages": None}
# The same for the varlen kernel (block_m: rows of a tile = query tokens x the group's heads, padded).
varlen_config: dict[str, int | None] = {"block_m": None, "block_n": None, "num_warps": None, "num_stages": None}

_SM_COUNT: dict[int, int] = {}


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 132
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNT[index]


def _num_splits(batch: int, num_kv_heads: int, max_tokens: int, device: torch.device) -> int:
    """Splits per sequence so that the grid fills the GPU (at least 2 programs per SM).

    On the H100 (132 SMs), llama-1b shape, 64 x 704 and 256 x 704 ran fastest with one split
    (reports/h100/attention-speed.md); more splits pay only when the grid is smaller than the GPU.

    Depends only on shapes (batch, heads, the block table's capacity) and the device, never on
    the values of ``context_lens``, so it is fixed for a CUDA graph captured at one batch size.
    """
    target = 2 * _sm_count(device)
    splits = 1
    while batch * num_kv_heads * splits < target and splits < 16 and max_tokens // (splits * 2) >= 128:
        splits *= 2
    return splits


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta,
                    scale: float | None = None) -> torch.Tensor:
    """Causal attention of packed ``q`` ``[T, H, D]`` over the paged cache; returns ``[T, H, D]``."""
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    num_tokens, num_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    assert num_heads % num_kv_heads == 0, "query heads must be a multiple of KV heads"
    assert k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1
    group = num_heads // num_kv_heads
    q = q if q.stride(-1) == 1 else q.contiguous()
    out = torch.empty_like(q)
    num_seqs = meta.context_lens.shape[0]
    if num_tokens == 0 or num_seqs == 0:
        return out
    block_d = _next_pow2(head_dim)
    block_g = _next_pow2(group)
    ieee = q.dtype == torch.float32
    upcast = q.dtype != torch.float32 and _interpreting()
    bt = meta.block_tables
    qk_scale = scale * _LOG2E
    strides = (q.stride(0), q.stride(1),
               k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
               v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
               bt.stride(0), out.stride(0), out.stride(1))

    if meta.max_query_len == 1:
        cfg = decode_config
        splits = cfg["num_splits"] or _num_splits(num_seqs, num_kv_heads, bt.shape[1] * block_size, q.device)
        block_n = cfg["block_n"] or (64 if head_dim <= 64 else 32)
        num_warps = cfg["num_warps"] or 4
        num_stages = cfg["num_stages"] or 2
        if splits > 1:
            po = torch.empty((num_seqs, num_heads, splits, block_d), dtype=torch.float32, device=q.device)
            pml = torch.empty((num_seqs, num_heads, splits, 2), dtype=torch.float32, device=q.device)
        else:
            po = pml = out  # unused
        _decode_kernel[(num_kv_heads, splits, num_seqs)](
            q, k_cache, v_cache, bt, meta.context_lens, meta.query_start_loc, out, po, pml,
            qk_scale, *strides,
            NUM_HEADS=num_heads, GROUP=group, BLOCK_G=max(16, block_g), HEAD_DIM=head_dim, BLOCK_D=block_d,
            BLOCK_SIZE=block_size, BLOCK_N=block_n, NUM_SPLITS=splits, IEEE=ieee, UPCAST=upcast,
            num_warps=num_warps, num_stages=num_stages,
        )
        if splits > 1:
            _decode_reduce_kernel[(num_heads, num_seqs)](
                po, pml, meta.query_start_loc, out, out.stride(0), out.stride(1),
                NUM_HEADS=num_heads, HEAD_DIM=head_dim, BLOCK_D=block_d, NUM_SPLITS=splits,
                num_warps=1 if block_d * splits <= 1024 else 4,
            )
        return out

    # general varlen: BLOCK_Q query tokens x the group's heads make the rows of one tile
    cfg = varlen_config
    block_m = cfg["block_m"] or (64 if head_dim <= 128 else 32)
    block_q = max(1, block_m // block_g)
    block_n = cfg["block_n"] or (64 if head_dim <= 64 else 32)
    grid = (triton.cdiv(num_tokens, block_q) + num_seqs, num_kv_heads)
    _varlen_kernel[grid](
        q, k_cache, v_cache, bt, meta.context_lens, meta.query_start_loc, out,
        qk_scale, num_seqs, *strides,
        GROUP=group, BLOCK_G=block_g, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_SIZE=block_size,
        BLOCK_Q=block_q, BLOCK_N=block_n, IEEE=ieee, UPCAST=upcast,
        num_warps=cfg["num_warps"] or 4, num_stages=cfg["num_stages"] or 2,
    )
    return out
