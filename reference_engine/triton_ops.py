"""Triton kernels for the per-layer elementwise work: the CUDA fast path behind ``reference_engine.fused``.

A decode step of the ``llama-1b`` shape at 64 sequences moves little data per kernel, so its time is
set as much by the number of kernels as by their bytes: in plain torch, RMSNorm, the residual adds,
rotary embedding and SwiGLU's activation are ~15 small kernels per layer. Here they are four:

- ``_rms_norm_kernel``: ``out = w * rms_norm(x)``; with ``HAS_RESIDUAL`` it first adds the residual
  (``residual = x + residual``, written back in place) and normalizes the sum, so each layer's two
  residual adds ride on the norms that follow them.
- ``_rope_kernel``: rotates the query and key heads of the fused QKV projection in place
  (rotate-half convention, in fp32, rounded once to the model's dtype).
- ``_rope_store_kv_kernel``: the same rotation, then the rotated key heads and the value heads into the
  paged KV cache (``attention.store_kv``'s job), so that a layer's attention inputs take one kernel.
- ``_silu_mul_kernel``: ``silu(gate) * up`` from the fused gate/up projection.

Each reproduces the plain-torch order of roundings (fp32 math, the model's dtype at the same points as
``fused``'s reference functions), so outputs agree with the CPU path to the last bit or two of bf16.
Every grid depends on shapes only: the kernels replay from CUDA graphs.
"""

from __future__ import annotations

import torch

from reference_engine.triton_attention import _next_pow2, available, tl, triton

if triton is not None:
    from reference_engine.triton_attention import _cache_slot

__all__ = ["available", "rms_norm", "add_rms_norm", "rope_", "rope_store_kv_", "silu_mul"]


if triton is not None:

    @triton.jit
    def _rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, stride_x, stride_r, stride_o, n, eps,
                         HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
        if HAS_RESIDUAL:
            r = tl.load(res_ptr + row * stride_r + offs, mask=mask, other=0.0)
            x = (x.to(tl.float32) + r.to(tl.float32)).to(res_ptr.dtype.element_ty)
            tl.store(res_ptr + row * stride_r + offs, x, mask=mask)
        xf = x.to(tl.float32)
        inv = tl.rsqrt(tl.sum(xf * xf, axis=0) / n + eps)
        y = (xf * inv).to(out_ptr.dtype.element_ty).to(tl.float32)
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * stride_o + offs, (w * y).to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _rotate_heads(x_ptr, cos_ptr, sin_ptr, t, offs_h, stride_xt, stride_xh, stride_ct, stride_st, num_heads,
                      HALF: tl.constexpr, BLOCK_D: tl.constexpr):
        """Token ``t``'s heads ``offs_h`` of ``x`` rotated in place; → (first halves, second halves, mask), as
        stored."""
        offs_d = tl.arange(0, BLOCK_D)
        dmask = offs_d < HALF
        c1 = tl.load(cos_ptr + t * stride_ct + offs_d, mask=dmask, other=0.0)
        c2 = tl.load(cos_ptr + t * stride_ct + HALF + offs_d, mask=dmask, other=0.0)
        s1 = tl.load(sin_ptr + t * stride_st + offs_d, mask=dmask, other=0.0)
        s2 = tl.load(sin_ptr + t * stride_st + HALF + offs_d, mask=dmask, other=0.0)
        mask = (offs_h[:, None] < num_heads) & dmask[None, :]
        p1 = x_ptr + t * stride_xt + offs_h[:, None] * stride_xh + offs_d[None, :]
        x1 = tl.load(p1, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(p1 + HALF, mask=mask, other=0.0).to(tl.float32)
        # plain torch: x * cos + cat(-x2, x1) * sin, each product rounded before the sum
        r1 = (x1 * c1[None, :] + -x2 * s1[None, :]).to(x_ptr.dtype.element_ty)
        r2 = (x2 * c2[None, :] + x1 * s2[None, :]).to(x_ptr.dtype.element_ty)
        tl.store(p1, r1, mask=mask)
        tl.store(p1 + HALF, r2, mask=mask)
        return r1, r2, mask

    @triton.jit
    def _rope_kernel(x_ptr, cos_ptr, sin_ptr, stride_xt, stride_xh, stride_ct, stride_st, num_heads,
                     HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
        t = tl.program_id(0).to(tl.int64)
        offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
        _rotate_heads(x_ptr, cos_ptr, sin_ptr, t, offs_h, stride_xt, stride_xh, stride_ct, stride_st, num_heads,
                      HALF, BLOCK_D)

    @triton.jit
    def _rope_store_kv_kernel(x_ptr, v_ptr, cos_ptr, sin_ptr, kc_ptr, vc_ptr, slot_ptr,
                              stride_xt, stride_xh, stride_vt, stride_vh, stride_ct, stride_st,
                              stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch,
                              num_q_heads, num_heads, NUM_KV_HEADS: tl.constexpr, HALF: tl.constexpr,
                              BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_KV: tl.constexpr,
                              BLOCK_SIZE: tl.constexpr):
        """``_rope_kernel`` over the query and key heads, then the rotated key heads and the value heads of the
        token into the paged cache at its slot (as ``_store_kv_kernel``; slot -1 writes nothing)."""
        t = tl.program_id(0).to(tl.int64)
        offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
        r1, r2, mask = _rotate_heads(x_ptr, cos_ptr, sin_ptr, t, offs_h, stride_xt, stride_xh, stride_ct, stride_st,
                                     num_heads, HALF, BLOCK_D)
        offs_d = tl.arange(0, BLOCK_D)
        slot = tl.load(slot_ptr + t).to(tl.int64)
        kh = offs_h - num_q_heads  # the key heads follow the query heads
        kmask = mask & (kh[:, None] >= 0) & (slot >= 0)
        kc = _cache_slot(kc_ptr, slot, kh, offs_d, stride_kcb, stride_kcs, stride_kch, BLOCK_SIZE)
        tl.store(kc, r1.to(kc_ptr.dtype.element_ty), mask=kmask)
        tl.store(kc + HALF, r2.to(kc_ptr.dtype.element_ty), mask=kmask)
        if tl.program_id(1) == 0:  # the value heads, by the first head block's program
            offs_v = tl.arange(0, BLOCK_KV)
            vmask = (offs_v[:, None] < NUM_KV_HEADS) & (offs_d[None, :] < HALF) & (slot >= 0)
            pv = v_ptr + t * stride_vt + offs_v[:, None] * stride_vh + offs_d[None, :]
            vc = _cache_slot(vc_ptr, slot, offs_v, offs_d, stride_vcb, stride_vcs, stride_vch, BLOCK_SIZE)
            tl.store(vc, tl.load(pv, mask=vmask).to(vc_ptr.dtype.element_ty), mask=vmask)
            tl.store(vc + HALF, tl.load(pv + HALF, mask=vmask).to(vc_ptr.dtype.element_ty), mask=vmask)

    @triton.jit
    def _silu_mul_kernel(x_ptr, out_ptr, stride_x, stride_o, n, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        g = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(x_ptr + row * stride_x + n + offs, mask=mask, other=0.0).to(tl.float32)
        s = (g / (1.0 + tl.exp(-g))).to(out_ptr.dtype.element_ty).to(tl.float32)
        tl.store(out_ptr + row * stride_o + offs, (s * u).to(out_ptr.dtype.element_ty), mask=mask)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a 2-D tensor whose last dimension is contiguous (a view where possible)."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _norm(x, None, weight, eps)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``residual += x`` (in place), then ``(w * rms_norm(residual), residual)``."""
    return _norm(x, residual, weight, eps), residual


def _norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float) -> torch.Tensor:
    rows = _rows(x)
    res = rows if residual is None else residual.view(-1, residual.shape[-1])
    assert res.shape == rows.shape and res.stride(-1) == 1, "residual must be a contiguous tensor shaped like x"
    out = torch.empty_like(rows)
    n = rows.shape[1]
    if rows.shape[0]:
        _rms_norm_kernel[(rows.shape[0],)](rows, res, weight, out, rows.stride(0), res.stride(0), out.stride(0), n,
                                           eps, HAS_RESIDUAL=residual is not None, BLOCK=_next_pow2(n),
                                           num_warps=_warps(n))
    return out.view(x.shape)


def _rope_launch(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, t: int):
    """What the rotary kernels share: ``cos``/``sin`` as ``[rows, D]``, the grid for ``t`` tokens of ``x``'s
    heads, and the head and dim blocks."""
    heads, d = x.shape[1], x.shape[2]
    block_h = min(16, _next_pow2(heads))
    return (cos.reshape(cos.shape[0], d), sin.reshape(sin.shape[0], d), (t, triton.cdiv(heads, block_h)),
            dict(HALF=d // 2, BLOCK_H=block_h, BLOCK_D=_next_pow2(d // 2), num_warps=4))


def rope_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[T, heads, D]`` (last dim contiguous) in place; ``cos``/``sin`` ``[T, 1, D]`` fp32."""
    t, heads, d = x.shape
    assert x.stride(-1) == 1 and cos.shape[0] == t and sin.shape[0] == t and d % 2 == 0
    if t:
        cos2, sin2, grid, blocks = _rope_launch(x, cos, sin, t)
        _rope_kernel[grid](x, cos2, sin2, x.stride(0), x.stride(1), cos2.stride(0), sin2.stride(0), heads, **blocks)
    return x


def rope_store_kv_(x: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor,
                   v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> torch.Tensor:
    """``rope_`` of the query and key heads of ``x`` ``[P, q_heads + kv_heads, D]`` (in place), then the first
    ``T = len(slot_mapping)`` tokens' key heads (rotated) and ``v`` ``[P, kv_heads, D]`` into the paged cache
    ``[blocks, block_size, kv_heads, D]`` (as ``attention.store_kv``): one kernel where there were two. Rows past
    ``T`` (padding) are left as they are."""
    p, heads, d = x.shape
    t, kv_heads = slot_mapping.shape[0], k_cache.shape[2]
    assert x.stride(-1) == 1 and v.stride(-1) == 1 and d % 2 == 0 and t <= p and v.shape[1] == kv_heads
    assert k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1 and k_cache.shape[-1] == d
    if t:
        cos2, sin2, grid, blocks = _rope_launch(x, cos, sin, t)
        _rope_store_kv_kernel[grid](
            x, v, cos2, sin2, k_cache, v_cache, slot_mapping, x.stride(0), x.stride(1), v.stride(0), v.stride(1),
            cos2.stride(0), sin2.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), heads - kv_heads, heads,
            NUM_KV_HEADS=kv_heads, BLOCK_KV=_next_pow2(kv_heads), BLOCK_SIZE=k_cache.shape[1], **blocks)
    return x


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` where ``gate_up = cat(gate, up)`` on the last dimension."""
    rows = _rows(gate_up)
    n = rows.shape[1] // 2
    out = torch.empty(rows.shape[0], n, dtype=rows.dtype, device=rows.device)
    block = min(1024, _next_pow2(n))
    if rows.shape[0]:
        _silu_mul_kernel[(rows.shape[0], triton.cdiv(n, block))](rows, out, rows.stride(0), out.stride(0), n,
                                                                 BLOCK=block, num_warps=4)
    return out.view(*gate_up.shape[:-1], n)


def _warps(n: int) -> int:
    return 8 if n >= 4096 else 4
