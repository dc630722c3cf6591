"""Triton paged attention against the plain-torch reference.

Where there is no CUDA device these run under Triton's interpreter (``TRITON_INTERPRET=1``) on CPU
tensors, and only where ``triton`` is importable (CI's CPU torch has none: the module is skipped).
The ``cuda``-marked tests run the same checks compiled, on the GPU, at larger sizes.
"""

from __future__ import annotations

import importlib
import math
import sys

import _interp  # noqa: F401  (sets TRITON_INTERPRET before triton is imported)
import pytest
import torch

triton = pytest.importorskip("triton")

from _cases import make_case, random_seqs, reference, rel_err  # noqa: E402

from reference_engine.attention import store_kv_reference  # noqa: E402

if _interp.INTERPRET:
    _interp.patch_interpreter()
    if "reference_engine.triton_attention" in sys.modules:  # imported before the variable was set
        importlib.reload(sys.modules["reference_engine.triton_attention"])
from reference_engine import triton_attention as ta  # noqa: E402

interp = pytest.mark.skipif(not _interp.INTERPRET, reason="interpreter tests run where there is no CUDA")
TOL = {torch.float32: 1e-3, torch.bfloat16: 1e-2}


@pytest.fixture(autouse=True)
def _reset_configs():
    saved = dict(ta.decode_config), dict(ta.varlen_config)
    yield
    for config, values in zip((ta.decode_config, ta.varlen_config), saved):
        config.clear()
        config.update(values)


def check_attention(seqs, *, num_heads, num_kv_heads, head_dim, block_size, dtype, device, seed,
                    check_rows=None):
    q, kc, vc, meta = make_case(seqs, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                                block_size=block_size, dtype=dtype, device=device, seed=seed)
    scale = 1.0 / math.sqrt(head_dim)
    out = ta.paged_attention(q, kc, vc, meta, scale)
    assert out.shape == q.shape and out.dtype == q.dtype
    ref = reference(q, kc, vc, meta, scale)
    err = rel_err(out, ref, check_rows)
    assert err < TOL[dtype], f"rel err {err:.2e} for {seqs}"
    return err


def check_store_kv(*, num_tokens, num_kv_heads, head_dim, block_size, num_blocks, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(num_tokens, num_kv_heads, head_dim, generator=g).to(dtype).to(device)
    v = torch.randn(num_tokens, num_kv_heads, head_dim, generator=g).to(dtype).to(device)
    slots = torch.randperm(num_blocks * block_size, generator=g)[:num_tokens]
    slots[torch.rand(num_tokens, generator=g) < 0.2] = -1  # padding
    slots = slots.to(device)
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    kc = torch.randn(shape, generator=g).to(dtype).to(device)
    vc = torch.randn(shape, generator=g).to(dtype).to(device)
    kc_ref, vc_ref = kc.clone(), vc.clone()
    ta.store_kv(k, v, kc, vc, slots)
    store_kv_reference(k, v, kc_ref, vc_ref, slots)
    assert torch.equal(kc, kc_ref) and torch.equal(vc, vc_ref)


# ------------------------------------------------------------------ interpreter (CPU) tests


@interp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_size,num_kv_heads,head_dim", [(16, 2, 64), (32, 3, 128), (16, 1, 80)])
def test_store_kv_interp(dtype, block_size, num_kv_heads, head_dim):
    check_store_kv(num_tokens=37, num_kv_heads=num_kv_heads, head_dim=head_dim, block_size=block_size,
                   num_blocks=9, dtype=dtype, device="cpu", seed=block_size + head_dim)


@interp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,block_size,splits,block_n", [
    (4, 4, 64, 16, 1, 16),     # MHA, one split
    (8, 2, 64, 16, 4, 16),     # GQA 4, split-K with a reduce
    (12, 4, 128, 32, 2, 32),   # GQA 3 (not a power of two), head_dim 128, block 32
    (16, 2, 64, 32, 8, 16),    # GQA 8, more splits than some sequences have tiles
    (4, 1, 80, 64, 2, 32),     # head_dim 80 (masked), block 64
    (8, 8, 64, 16, None, None),  # the heuristic's choice
])
def test_decode_interp(dtype, num_heads, num_kv_heads, head_dim, block_size, splits, block_n):
    ta.decode_config.update(num_splits=splits, block_n=block_n)
    gen = torch.Generator().manual_seed(num_heads * 131 + head_dim)
    seqs = random_seqs(gen, 5, max_ctx=150, max_query=1, decode_only=True)
    seqs += [(1, 1), (block_size, 1), (2 * block_size + 1, 1)]  # edges: one token, exact block, one past
    check_attention(seqs, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                    block_size=block_size, dtype=dtype, device="cpu", seed=splits or 0)


@interp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,block_size,seed", [
    (4, 4, 64, 16, 0),
    (8, 2, 64, 16, 1),
    (12, 4, 128, 32, 2),
    (16, 2, 64, 32, 3),
    (6, 2, 80, 64, 4),
])
def test_varlen_interp(dtype, num_heads, num_kv_heads, head_dim, block_size, seed):
    """Mixed steps: decodes, fresh prefills and chunks over a cached prefix, in one batch."""
    gen = torch.Generator().manual_seed(seed)
    seqs = random_seqs(gen, 5, max_ctx=130, max_query=40)
    seqs += [(70, 70), (90, 23), (5, 1)]  # at least one of each kind
    check_attention(seqs, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                    block_size=block_size, dtype=dtype, device="cpu", seed=seed)


@interp
@pytest.mark.parametrize("block_m,block_n", [(16, 16), (32, 128), (128, 32)])
def test_varlen_tiles_interp(block_m, block_n):
    """Other tile shapes: tiles of one or few query tokens, and key tiles over several cache blocks."""
    ta.varlen_config.update(block_m=block_m, block_n=block_n)
    check_attention([(70, 70), (90, 23), (5, 1), (130, 40)], num_heads=8, num_kv_heads=2, head_dim=64,
                    block_size=16, dtype=torch.float32, device="cpu", seed=block_m)


@interp
def test_varlen_empty_sequence_interp():
    """A sequence with no query tokens this step contributes nothing and breaks nothing."""
    check_attention([(20, 4), (33, 0), (17, 17)], num_heads=4, num_kv_heads=2, head_dim=64, block_size=16,
                    dtype=torch.float32, device="cpu", seed=5)


@interp
def test_decode_padded_batch_interp():
    """CUDA-graph padding: extra sequences with no context (slot -1) leave the real rows exact and finite."""
    ta.decode_config.update(num_splits=2, block_n=16)
    seqs = [(40, 1), (7, 1), (0, 1), (0, 1)]
    q, kc, vc, meta = make_case(seqs, num_heads=8, num_kv_heads=2, head_dim=64, block_size=16,
                                dtype=torch.float32, device="cpu", seed=6)
    out = ta.paged_attention(q, kc, vc, meta, 0.125)
    ref = reference(q, kc, vc, meta, 0.125)
    assert rel_err(out, ref, slice(0, 2)) < 1e-5
    assert torch.isfinite(out[2:]).all()


# ------------------------------------------------------------------ CUDA tests


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_size,num_kv_heads,head_dim", [(16, 8, 64), (32, 4, 128), (16, 2, 80)])
def test_store_kv_cuda(dtype, block_size, num_kv_heads, head_dim):
    check_store_kv(num_tokens=3000, num_kv_heads=num_kv_heads, head_dim=head_dim, block_size=block_size,
                   num_blocks=400, dtype=dtype, device="cuda", seed=block_size + head_dim)


@pytest.fixture
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", [(32, 8, 64), (16, 16, 128), (12, 4, 128),
                                                              (16, 2, 64), (8, 1, 80)])
@pytest.mark.parametrize("block_size", [16, 32, 64])
@pytest.mark.parametrize("splits", [None, 1, 4])
def test_decode_cuda(no_tf32, dtype, num_heads, num_kv_heads, head_dim, block_size, splits):
    ta.decode_config.update(num_splits=splits)
    gen = torch.Generator().manual_seed(block_size * 7 + head_dim + (splits or 0))
    seqs = random_seqs(gen, 40, max_ctx=2000, max_query=1, decode_only=True)
    seqs += [(1, 1), (block_size, 1), (block_size + 1, 1), (704, 1)]
    check_attention(seqs, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                    block_size=block_size, dtype=dtype, device="cuda", seed=block_size)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", [(32, 8, 64), (16, 16, 128), (12, 4, 128),
                                                              (8, 1, 80)])
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("seed", [0, 1])
def test_varlen_cuda(no_tf32, dtype, num_heads, num_kv_heads, head_dim, block_size, seed):
    gen = torch.Generator().manual_seed(seed * 97 + head_dim + block_size)
    seqs = random_seqs(gen, 24, max_ctx=1500, max_query=600)
    seqs += [(1024, 1024), (1500, 512), (704, 1), (3, 3)]
    check_attention(seqs, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                    block_size=block_size, dtype=dtype, device="cuda", seed=seed)


@pytest.mark.cuda
@pytest.mark.parametrize("block_m,block_n,num_warps", [(16, 32, 4), (32, 64, 4), (128, 64, 8), (128, 128, 8)])
def test_varlen_tiles_cuda(no_tf32, block_m, block_n, num_warps):
    ta.varlen_config.update(block_m=block_m, block_n=block_n, num_warps=num_warps)
    gen = torch.Generator().manual_seed(block_m + block_n)
    seqs = random_seqs(gen, 24, max_ctx=1500, max_query=600) + [(1024, 1024), (1500, 512), (704, 1)]
    for dtype in (torch.float32, torch.bfloat16):
        check_attention(seqs, num_heads=32, num_kv_heads=8, head_dim=64, block_size=16, dtype=dtype,
                        device="cuda", seed=block_m)


@pytest.mark.cuda
def test_dispatcher_uses_triton_cuda():
    from reference_engine import attention

    assert ta.available()
    assert attention._triton_backend() is ta
    q, kc, vc, meta = make_case([(300, 1), (50, 20), (64, 64)], num_heads=32, num_kv_heads=8, head_dim=64,
                                block_size=16, dtype=torch.bfloat16, device="cuda", seed=7)
    out = attention.paged_attention(q, kc, vc, meta)
    assert rel_err(out, reference(q, kc, vc, meta, 1 / 8)) < 1e-2


@pytest.mark.cuda
@pytest.mark.parametrize("splits", [None, 1, 4])
def test_decode_cuda_graph_replay(splits):
    """Captured once, replayed after the lengths, tables and queries change in place."""
    ta.decode_config.update(num_splits=splits)
    batch, width, bs = 48, 64, 16
    gen = torch.Generator().manual_seed(11)
    q, kc, vc, meta = make_case([(1000, 1)] * batch, num_heads=32, num_kv_heads=8, head_dim=64, block_size=bs,
                                dtype=torch.bfloat16, device="cuda", seed=11, extra_table_cols=0)
    meta.block_tables = torch.zeros(batch, width, dtype=torch.int32, device="cuda")
    num_blocks = kc.shape[0]
    out = ta.paged_attention(q, kc, vc, meta, 0.125)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ta.paged_attention(q, kc, vc, meta, 0.125)
    for _ in range(3):
        lens = torch.randint(1, width * bs + 1, (batch,), generator=gen, dtype=torch.int32)
        meta.context_lens.copy_(lens)
        meta.context_lens_host = lens.tolist()
        meta.block_tables.copy_(torch.randint(0, num_blocks, (batch, width), generator=gen, dtype=torch.int32))
        q.copy_(torch.randn(q.shape, generator=gen).to(q.dtype))
        graph.replay()
        torch.cuda.synchronize()
        assert rel_err(out, reference(q, kc, vc, meta, 0.125)) < 1e-2


@pytest.mark.cuda
def test_store_kv_cuda_graph_replay():
    g = torch.Generator().manual_seed(3)
    k = torch.randn(64, 8, 64, generator=g).to(torch.bfloat16).cuda()
    v = torch.randn(64, 8, 64, generator=g).to(torch.bfloat16).cuda()
    kc = torch.randn(100, 16, 8, 64, generator=g).to(torch.bfloat16).cuda()
    vc = torch.randn(100, 16, 8, 64, generator=g).to(torch.bfloat16).cuda()
    slots = torch.full((64,), -1, dtype=torch.int64, device="cuda")
    ta.store_kv(k, v, kc, vc, slots)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ta.store_kv(k, v, kc, vc, slots)
    new_slots = torch.randperm(1600, generator=g)[:64]
    new_slots[::5] = -1
    slots.copy_(new_slots)
    kc_ref, vc_ref = kc.clone(), vc.clone()
    graph.replay()
    store_kv_reference(k, v, kc_ref, vc_ref, slots)
    assert torch.equal(kc, kc_ref) and torch.equal(vc, vc_ref)
