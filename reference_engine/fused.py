"""The per-layer elementwise operations of the model, each with a plain-torch reference.

On CUDA (where Triton imports) they run as the fused kernels of ``reference_engine.triton_ops``: four
kernels per layer where plain torch launches ~15, which is what a decode step at small batch sizes is
made of besides its GEMMs and attention. Everywhere else, and with ``REFERENCE_ENGINE_FUSED=0`` (to
measure what the fusion buys), the reference functions below run: they define the semantics, and the
Triton kernels are tested against them.

The fused versions work in place where the reference returns new tensors (the residual stream, the
rotated query/key heads); callers use the returned tensors and never the inputs afterwards.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from reference_engine.attention import _triton_backend, store_kv, triton_module

ENABLED = os.environ.get("REFERENCE_ENGINE_FUSED", "1") not in ("0", "")


def _fast(x: torch.Tensor):
    return triton_module("triton_ops") if ENABLED and x.is_cuda else None


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Normalized in fp32, scaled in the model's dtype (as transformers does)."""
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    fast = _fast(x)
    return fast.rms_norm(x, weight, eps) if fast else rms_norm_reference(x, weight, eps)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``residual = x + residual``; returns ``(rms_norm(residual) * weight, residual)``."""
    fast = _fast(x)
    if fast:
        return fast.add_rms_norm(x, residual, weight, eps)
    residual = x + residual
    return rms_norm_reference(residual, weight, eps), residual


def rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[T, heads, D]`` in fp32 (rotate-half convention); ``cos``/``sin`` ``[T, 1, D]``."""
    dtype = x.dtype
    x = x.float()
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(dtype)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x`` (rotated in place on the fast path)."""
    fast = _fast(x)
    return fast.rope_(x, cos, sin) if fast and x.stride(-1) == 1 else rope_reference(x, cos, sin)


def rope_store_kv(x: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor,
                  v_cache: torch.Tensor, slot_mapping: torch.Tensor, num_q_heads: int) -> torch.Tensor:
    """``rope`` of ``x`` ``[P, q_heads + kv_heads, D]`` (query and key heads), then the first ``len(slot_mapping)``
    tokens' rotated key heads and ``v`` into the paged cache (``attention.store_kv``); returns the rotated ``x``.
    One kernel on the fast path (with the Triton attention backend, whose cache layout it writes)."""
    fast = _fast(x)
    if fast and x.stride(-1) == 1 and v.stride(-1) == 1 and _triton_backend() is not None:
        return fast.rope_store_kv_(x, v, cos, sin, k_cache, v_cache, slot_mapping)
    x = rope(x, cos, sin)
    t = slot_mapping.shape[0]
    store_kv(x[:t, num_q_heads:], v[:t], k_cache, v_cache, slot_mapping)
    return x


def silu_mul_reference(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """SwiGLU's activation: ``silu(gate) * up`` for ``gate_up = cat(gate, up)``."""
    fast = _fast(gate_up)
    return fast.silu_mul(gate_up) if fast else silu_mul_reference(gate_up)
