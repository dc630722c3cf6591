"""CUDA graphs for decode steps: one graph per padded batch size, all reading the runner's device buffers.

A decode-only step of ``b`` sequences replays the graph of the smallest captured size ``>= b``; its
inputs are padded to that size on the host (``step_inputs``: pad rows write no K/V and have an empty
context). The graphs read the first part's static device buffers, so only that part may use them.
"""

from __future__ import annotations

import torch

from reference_engine.attention import AttentionMetadata


def graph_batch_sizes(max_bs: int) -> list[int]:
    """The batch sizes to capture: 1, 2, 4, 8, then every 16 up to ``max_bs`` (and ``max_bs`` itself)."""
    sizes = [s for s in (1, 2, 4, 8) if s <= max_bs] + list(range(16, max_bs + 1, 16))
    if sizes[-1] != max_bs:
        sizes.append(max_bs)
    return sizes


def graph_size(sizes: list[int], b: int) -> int:
    """The smallest captured size holding ``b`` rows, or 0 (run eagerly)."""
    for size in sizes:
        if size >= b:
            return size
    return 0


@torch.inference_mode()
def capture_graphs(model, kv_cache: torch.Tensor, dev: dict, max_bs: int, max_seqs: int, max_model_len: int,
                   device: torch.device) -> dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]]:
    """Capture one decode graph per size of ``graph_batch_sizes(max_bs)``; → {size: (graph, logits)}.

    ``dev``: the named device buffers the graphs read (``step_inputs.layout``). Blocks the host (init only).
    """
    d = dev
    sizes = graph_batch_sizes(max_bs)
    d["ids"].zero_()
    d["pos"].zero_()
    d["slot"].fill_(-1)
    d["ctx"].zero_()
    d["qsl"].copy_(torch.arange(max_seqs + 1, dtype=torch.int32, device=device))
    graphs, pool = {}, None
    for bs in reversed(sizes):  # largest first: smaller graphs reuse its memory pool
        meta = AttentionMetadata(d["slot"][:bs], d["qsl"][:bs + 1], d["ctx"][:bs], d["bt"][:bs], 1, max_model_len)

        def body(bs=bs, meta=meta):
            return model.compute_logits(model(d["ids"][:bs], d["pos"][:bs], meta, kv_cache))

        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up (Triton compiles, cuBLAS picks its kernels)
            body()
            body()
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, stream=side):
            logits = body()
        if pool is None:
            pool = graph.pool()
        graphs[bs] = (graph, logits)
    torch.cuda.synchronize(device)
    return graphs
