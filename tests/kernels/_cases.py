"""Random paged-attention cases shared by the interpreter and CUDA kernel tests."""

from __future__ import annotations

import torch

from reference_engine.attention import AttentionMetadata, paged_attention_reference


def make_case(seqs, *, num_heads, num_kv_heads, head_dim, block_size, dtype, device, seed,
              spare_blocks=7, extra_table_cols=3):
    """``seqs``: list of ``(context_len, n_query)``. K/V for every position are already in the cache.

    Blocks are drawn from a shuffled pool with spare blocks, so tables are non-contiguous; the
    unused tail of each table row points at random (valid) blocks holding random data, so a kernel
    that reads past a sequence's length gets a wrong answer rather than a lucky one.
    """
    g = torch.Generator().manual_seed(seed)
    nblocks = [-(-c // block_size) for c, _ in seqs]
    total = sum(nblocks) + spare_blocks
    width = max(nblocks + [1]) + extra_table_cols
    perm = torch.randperm(total, generator=g)
    tables = torch.randint(0, total, (len(seqs), width), generator=g, dtype=torch.int32)
    cursor = 0
    for i, nb in enumerate(nblocks):
        tables[i, :nb] = perm[cursor:cursor + nb].to(torch.int32)
        cursor += nb
    k_cache = torch.randn(total, block_size, num_kv_heads, head_dim, generator=g).to(dtype)
    v_cache = torch.randn(total, block_size, num_kv_heads, head_dim, generator=g).to(dtype)
    qsl = [0]
    for _, n in seqs:
        qsl.append(qsl[-1] + n)
    q = torch.randn(qsl[-1], num_heads, head_dim, generator=g).to(dtype)
    ctx = [c for c, _ in seqs]
    meta = AttentionMetadata(
        slot_mapping=torch.full((qsl[-1],), -1, dtype=torch.int64, device=device),
        query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=device),
        context_lens=torch.tensor(ctx, dtype=torch.int32, device=device),
        block_tables=tables.to(device),
        max_query_len=max([n for _, n in seqs] + [0]),
        max_context_len=max(ctx + [0]),
        query_start_loc_host=qsl,
        context_lens_host=ctx,
    )
    return q.to(device), k_cache.to(device), v_cache.to(device), meta


def reference(q, k_cache, v_cache, meta, scale):
    """The plain-torch reference in float64."""
    return paged_attention_reference(q.double(), k_cache.double(), v_cache.double(), meta, scale)


def rel_err(out, ref, rows=None):
    out = out.double()
    ref = ref.double()
    if rows is not None:
        out, ref = out[rows], ref[rows]
    assert torch.isfinite(out).all(), "non-finite output"
    return ((out - ref).norm() / ref.norm()).item()


def random_seqs(gen, n, *, max_ctx, max_query, decode_only=False):
    """Random (context_len, n_query) pairs: decodes, whole prefills and chunks over a cached prefix."""
    seqs = []
    for _ in range(n):
        ctx = int(torch.randint(1, max_ctx + 1, (1,), generator=gen))
        if decode_only:
            seqs.append((ctx, 1))
            continue
        kind = int(torch.randint(0, 3, (1,), generator=gen))
        if kind == 0:
            nq = 1
        elif kind == 1:
            nq = min(ctx, max_query)
            ctx = nq  # a fresh prefill
        else:
            nq = int(torch.randint(1, min(ctx, max_query) + 1, (1,), generator=gen))
        seqs.append((ctx, nq))
    return seqs
