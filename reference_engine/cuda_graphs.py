"""CUDA graphs for decode steps: one graph per padded batch size, all reading the runner's device buffers.

A decode-only step of ``b`` sequences replays the graph of the smallest captured size ``>= b``; its
inputs are padded to that size on the host (``step_inputs``: pad rows write no K/V and have an empty
context). The graphs read the first part's static device buffers, so only that part may use them.

Piecewise (the default): each size's decode is captured as a few graphs over growing runs of layers
(``piece_bounds``: the embedding and layer 0, layers 1-3, 4-15, 16-63 ..., the last piece ending with the
LM head), replayed one after another on the same stream. The GPU starts on the first piece while the host
is still launching the others. With nothing recording that changes little (a graph launch costs the host
5-10 us); under CUDA activity tracing CUPTI spends about 1 us of host time per kernel node at every
launch (reports/h200/graph-cupti.md), which for a whole 167-kernel decode graph lands on the synchronous
loop's critical path and with pieces only the first piece's share does (reports/h200/overhead-arms.md).
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


def piece_bounds(num_layers: int, piecewise: bool = True) -> list[int]:
    """Layer boundaries of the decode graph's pieces: ``[0, 1, 4, 16, 64, ..., num_layers]`` (each piece up to
    three times the layers before it, so that launching the next piece takes the host less time than the GPU
    takes for the pieces before it), or ``[0, num_layers]`` for one graph."""
    bounds = [0]
    while piecewise and bounds[-1] < num_layers and 4 * bounds[-1] + (bounds[-1] == 0) < num_layers:
        bounds.append(max(1, 4 * bounds[-1]))
    return bounds + [num_layers]


class DecodeGraph:
    """The graphs of one batch size, replayed in order (one, or the pieces of ``piece_bounds``)."""

    def __init__(self, graphs: list[torch.cuda.CUDAGraph]):
        self.graphs = graphs

    def replay(self) -> None:
        for graph in self.graphs:
            graph.replay()


def graph_size(sizes: list[int], b: int) -> int:
    """The smallest captured size holding ``b`` rows, or 0 (run eagerly)."""
    for size in sizes:
        if size >= b:
            return size
    return 0


@torch.inference_mode()
def capture_graphs(model, kv_cache: torch.Tensor, dev: dict, max_bs: int, max_seqs: int, max_model_len: int,
                   device: torch.device, bounds: list[int] | None = None) -> dict[int, tuple[DecodeGraph, torch.Tensor]]:
    """Capture the decode graph(s) of each size of ``graph_batch_sizes(max_bs)``; → {size: (graphs, logits)}.

    ``dev``: the named device buffers the graphs read (``step_inputs.layout``); ``bounds``: the layer
    boundaries of the pieces (``piece_bounds``; None: one graph). Blocks the host (init only). Every graph shares one memory pool:
    safe because they are replayed one at a time, each size's pieces in the order of their capture, and the
    tensors passed from one piece to the next stay referenced (never handed out again).
    """
    d = dev
    sizes = graph_batch_sizes(max_bs)
    bounds = bounds or piece_bounds(len(model.layers), piecewise=False)
    d["ids"].zero_()
    d["pos"].zero_()
    d["slot"].fill_(-1)
    d["ctx"].zero_()
    d["qsl"].copy_(torch.arange(max_seqs + 1, dtype=torch.int32, device=device))
    graphs, pool = {}, None
    for bs in reversed(sizes):  # largest first: smaller graphs reuse its memory pool
        meta = AttentionMetadata(d["slot"][:bs], d["qsl"][:bs + 1], d["ctx"][:bs], d["bt"][:bs], 1, max_model_len)

        def piece(state, i, bs=bs, meta=meta):
            """Piece ``i`` from the previous piece's ``state`` (None for the first): the next state, or logits."""
            if i == 0:
                state = model.start(d["ids"][:bs], d["pos"][:bs])
            state = model.run_layers(state, meta, kv_cache, bounds[i], bounds[i + 1])
            return model.compute_logits(model.finish(state)) if i == len(bounds) - 2 else state

        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up (Triton compiles, cuBLAS picks its kernels)
            for _ in range(2):
                state = None
                for i in range(len(bounds) - 1):
                    state = piece(state, i)
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)
        pieces, state = [], None
        for i in range(len(bounds) - 1):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, stream=side):
                state = piece(state, i)
            if pool is None:
                pool = graph.pool()
            pieces.append(graph)
        graphs[bs] = (DecodeGraph(pieces), state)
    torch.cuda.synchronize(device)
    return graphs
