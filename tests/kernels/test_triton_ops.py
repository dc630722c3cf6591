"""The fused elementwise kernels (``reference_engine.triton_ops``) against ``reference_engine.fused``'s references.

Where there is no CUDA device they run under Triton's interpreter on CPU tensors; the ``cuda``-marked
tests run them compiled on the GPU, at the model's sizes, inside a CUDA graph, and through a whole model.
"""

from __future__ import annotations

import importlib
import sys

import _interp  # noqa: F401  (sets TRITON_INTERPRET before triton is imported)
import pytest
import torch

triton = pytest.importorskip("triton")

if _interp.INTERPRET:
    _interp.patch_interpreter()
    for name in ("reference_engine.triton_attention", "reference_engine.triton_ops"):
        if name in sys.modules:  # imported before the variable was set
            importlib.reload(sys.modules[name])
from reference_engine import fused  # noqa: E402
from reference_engine import triton_ops as to  # noqa: E402

interp = pytest.mark.skipif(not _interp.INTERPRET, reason="interpreter tests run where there is no CUDA")
DEVICE = "cpu" if _interp.INTERPRET else "cuda"


def _randn(*shape, dtype, seed, device=DEVICE, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype).to(device)


def _rtol(dtype) -> float:
    """bf16: about one rounding (the interpreter truncates instead of rounding, so allow two); fp32: tight."""
    if dtype != torch.bfloat16:
        return 1e-5
    return 3.2e-2 if _interp.INTERPRET else 1.6e-2


def check_rms_norm(rows, n, dtype, seed, device=DEVICE):
    x = _randn(rows, n, dtype=dtype, seed=seed, device=device, scale=3.0)
    res = _randn(rows, n, dtype=dtype, seed=seed + 1, device=device)
    w = _randn(n, dtype=dtype, seed=seed + 2, device=device)
    want = fused.rms_norm_reference(x, w, 1e-5)
    got = to.rms_norm(x, w, 1e-5)
    assert got.dtype == dtype and got.shape == x.shape
    torch.testing.assert_close(got, want, rtol=_rtol(dtype), atol=1e-5)
    want_res = x + res
    want_out = fused.rms_norm_reference(want_res, w, 1e-5)
    got_out, got_res = to.add_rms_norm(x, res.clone(), w, 1e-5)
    torch.testing.assert_close(got_out, want_out, rtol=_rtol(dtype), atol=1e-5)
    if device == "cuda":  # Triton's interpreter truncates fp32 -> bf16 where the GPU rounds to nearest
        assert torch.equal(got_res, want_res)  # the residual add rounds exactly like torch's
        if dtype == torch.bfloat16:  # a different rsqrt or sum order may flip a last bit, rarely
            assert (got_out != want_out).float().mean().item() < 0.02
    else:
        torch.testing.assert_close(got_res, want_res, rtol=1.6e-2 if dtype == torch.bfloat16 else 0, atol=0)


def check_rope(tokens, heads, head_dim, dtype, seed, device=DEVICE, stride_pad=0):
    base = _randn(tokens, heads * head_dim + stride_pad, dtype=dtype, seed=seed, device=device)
    x = base[:, :heads * head_dim].view(tokens, heads, head_dim)  # strided like the fused QKV output's q/k
    pos = torch.randint(0, 4096, (tokens,), generator=torch.Generator().manual_seed(seed))
    inv = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(pos.float(), inv)
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos().unsqueeze(1).to(device), emb.sin().unsqueeze(1).to(device)
    want = fused.rope_reference(x.clone(), cos, sin)
    untouched = base[:, heads * head_dim:].clone()
    got = to.rope_(x, cos, sin)
    assert got.data_ptr() == x.data_ptr()  # in place
    assert torch.equal(base[:, heads * head_dim:], untouched)  # nothing past the rotated heads written
    torch.testing.assert_close(got, want, rtol=_rtol(dtype), atol=1e-5)


def check_rope_store_kv(tokens, padded, q_heads, kv_heads, head_dim, dtype, seed, device=DEVICE, block_size=4):
    """The fused rotation + cache write against ``rope_reference`` then ``store_kv_reference``, through the
    fused QKV output's strided views, with a skipped slot (-1) and padded rows past the tokens."""
    from reference_engine.attention import store_kv_reference

    heads = q_heads + kv_heads
    qkv = _randn(padded, (heads + kv_heads) * head_dim, dtype=dtype, seed=seed, device=device)
    x = qkv[:, :heads * head_dim].view(padded, heads, head_dim)
    v = qkv[:, heads * head_dim:].view(padded, kv_heads, head_dim)
    pos = torch.randint(0, 4096, (padded,), generator=torch.Generator().manual_seed(seed))
    inv = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    emb = torch.cat([torch.outer(pos.float(), inv)] * 2, dim=-1)
    cos, sin = emb.cos().unsqueeze(1).to(device), emb.sin().unsqueeze(1).to(device)
    blocks = -(-2 * tokens // block_size)
    slots = torch.randperm(blocks * block_size, generator=torch.Generator().manual_seed(seed))[:tokens]
    slots[tokens // 2] = -1
    slots = slots.to(device)
    cache = _randn(2, blocks, block_size, kv_heads, head_dim, dtype=dtype, seed=seed + 1, device=device)
    want_x = fused.rope_reference(x.clone(), cos, sin)
    want_cache = cache.clone()
    store_kv_reference(want_x[:tokens, q_heads:], v[:tokens], want_cache[0], want_cache[1], slots)
    pad_rows = x[tokens:].clone()
    got = to.rope_store_kv_(x, v, cos, sin, cache[0], cache[1], slots)
    assert got.data_ptr() == x.data_ptr()  # in place
    assert torch.equal(x[tokens:], pad_rows)  # padding rows untouched
    torch.testing.assert_close(got[:tokens], want_x[:tokens], rtol=_rtol(dtype), atol=1e-5)
    torch.testing.assert_close(cache, want_cache, rtol=_rtol(dtype), atol=1e-5)
    if device == "cuda":  # the cache holds exactly the rotated keys the attention will read
        assert torch.equal(cache[0].view(-1, kv_heads, head_dim)[slots[slots >= 0]],
                           got[:tokens, q_heads:][slots >= 0])


def check_silu_mul(rows, n, dtype, seed, device=DEVICE):
    gate_up = _randn(rows, 2 * n, dtype=dtype, seed=seed, device=device, scale=4.0)
    want = fused.silu_mul_reference(gate_up)
    got = to.silu_mul(gate_up)
    assert got.shape == (rows, n)
    torch.testing.assert_close(got, want, rtol=_rtol(dtype), atol=1e-5)


@interp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,n", [(3, 64), (5, 96), (1, 200)])
def test_rms_norm_interp(dtype, rows, n):
    check_rms_norm(rows, n, dtype, seed=rows * n)


@interp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens,heads,head_dim,pad", [(4, 5, 64, 0), (3, 20, 32, 64), (2, 3, 80, 16)])
def test_rope_interp(dtype, tokens, heads, head_dim, pad):
    check_rope(tokens, heads, head_dim, dtype, seed=tokens + heads, stride_pad=pad)


@interp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens,padded,q_heads,kv_heads,head_dim", [(5, 8, 4, 2, 32), (3, 3, 6, 6, 16),
                                                                      (4, 6, 32, 8, 64)])
def test_rope_store_kv_interp(dtype, tokens, padded, q_heads, kv_heads, head_dim):
    check_rope_store_kv(tokens, padded, q_heads, kv_heads, head_dim, dtype, seed=tokens * q_heads)


@interp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,n", [(3, 64), (2, 1500)])
def test_silu_mul_interp(dtype, rows, n):
    check_silu_mul(rows, n, dtype, seed=rows + n)


def test_fused_references_match_plain_layers():
    """The CPU references are the model's old plain-torch code paths, op for op."""
    import torch.nn.functional as F

    x = torch.randn(6, 32, dtype=torch.bfloat16)
    r = torch.randn(6, 32, dtype=torch.bfloat16)
    w = torch.randn(32, dtype=torch.bfloat16)
    out, res = fused.add_rms_norm(x, r, w, 1e-6)
    assert torch.equal(res, x + r)
    assert torch.equal(out, w * F.rms_norm((x + r).float(), (32,), eps=1e-6).to(torch.bfloat16))
    gu = torch.randn(6, 64, dtype=torch.bfloat16)
    gate, up = gu.split(32, dim=-1)
    assert torch.equal(fused.silu_mul(gu), F.silu(gate) * up)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,n", [(1, 2048), (64, 2048), (2048, 2048), (7, 896)])
def test_rms_norm_cuda(dtype, rows, n):
    check_rms_norm(rows, n, dtype, seed=rows, device="cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens,heads,head_dim,pad", [(256, 40, 64, 512), (2048, 40, 64, 512), (9, 18, 128, 256)])
def test_rope_cuda(dtype, tokens, heads, head_dim, pad):
    check_rope(tokens, heads, head_dim, dtype, seed=tokens, device="cuda", stride_pad=pad)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens,padded,q_heads,kv_heads,head_dim,block_size", [
    (64, 64, 32, 8, 64, 16), (50, 64, 32, 8, 64, 16), (300, 320, 14, 2, 64, 16), (7, 8, 16, 16, 128, 32)])
def test_rope_store_kv_cuda(dtype, tokens, padded, q_heads, kv_heads, head_dim, block_size):
    check_rope_store_kv(tokens, padded, q_heads, kv_heads, head_dim, dtype, seed=tokens, device="cuda",
                        block_size=block_size)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,n", [(64, 8192), (2048, 8192), (5, 4864)])
def test_silu_mul_cuda(dtype, rows, n):
    check_silu_mul(rows, n, dtype, seed=rows, device="cuda")


@pytest.mark.cuda
def test_fused_ops_cuda_graph_replay():
    x = _randn(64, 2048, dtype=torch.bfloat16, seed=1, device="cuda")
    res = _randn(64, 2048, dtype=torch.bfloat16, seed=2, device="cuda")
    w = _randn(2048, dtype=torch.bfloat16, seed=3, device="cuda")
    gu = _randn(64, 2 * 8192, dtype=torch.bfloat16, seed=4, device="cuda")
    to.add_rms_norm(x, res.clone(), w, 1e-5), to.silu_mul(gu)  # compile outside the capture
    res_buf = res.clone()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, _ = to.add_rms_norm(x, res_buf, w, 1e-5)
        act = to.silu_mul(gu)
    for seed in range(3):
        x.copy_(_randn(64, 2048, dtype=torch.bfloat16, seed=10 + seed, device="cuda"))
        res_buf.copy_(res)
        gu.copy_(_randn(64, 2 * 8192, dtype=torch.bfloat16, seed=20 + seed, device="cuda"))
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(out, fused.rms_norm_reference(x + res, w, 1e-5), rtol=1.6e-2, atol=1e-5)
        torch.testing.assert_close(act, fused.silu_mul_reference(gu), rtol=1.6e-2, atol=1e-5)


@pytest.mark.cuda
def test_model_fused_matches_unfused_cuda(monkeypatch):
    """A whole llama-shaped model (fp32, small): the fused CUDA path gives the plain-torch path's logits."""
    from reference_engine.attention import AttentionMetadata
    from reference_engine.config import preset_config
    from reference_engine.model import CausalLM, init_random_weights

    config = preset_config("tiny")
    with torch.device("cuda"):
        model = CausalLM(config)
    init_random_weights(model, 0)
    t, bs = 40, 16
    ids = torch.randint(0, config.vocab_size, (t,), device="cuda")
    pos = torch.arange(t, device="cuda")
    nblocks = -(-t // bs)
    meta = AttentionMetadata(slot_mapping=torch.arange(t, device="cuda"),
                             query_start_loc=torch.tensor([0, t], dtype=torch.int32, device="cuda"),
                             context_lens=torch.tensor([t], dtype=torch.int32, device="cuda"),
                             block_tables=torch.arange(nblocks, dtype=torch.int32, device="cuda")[None],
                             max_query_len=t, max_context_len=t, query_start_loc_host=[0, t], context_lens_host=[t])

    def logits():
        kv = torch.zeros(2, config.num_hidden_layers, nblocks, bs, config.num_key_value_heads, model.head_dim,
                         device="cuda")
        with torch.no_grad():
            return model.compute_logits(model(ids, pos, meta, kv))

    fast = logits()
    monkeypatch.setattr(fused, "ENABLED", False)
    plain = logits()
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
