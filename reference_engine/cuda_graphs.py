"""CUDA graphs for decode steps: one graph per padded batch size, all reading the runner's device buffers.

A decode-only step of ``b`` sequences replays the graph of the smallest captured size ``>= b``; its
inputs are padded to that size on the host (``step_inputs``: pad rows write no K/V and have an empty
context). The graphs read the first part's static device buffers, so only that part may use them.

Piecewise (the default): each size's decode is captured as a few graphs over growing runs of layers
(``piece_bounds``: the embedding and layer 0, layers 1-3, 4-15, 16-63 ..., the last piece ending with the LM
head), replayed one after another on the same stream. The GPU starts on the first piece while the host is
still launching the others. With nothing recording that changes little (a graph launch costs the host 5-10
us); under CUDA activity tracing CUPTI spends about 1 us of host time per kernel node at every launch
(reports/h200/graph-cupti.md), which for a whole 167-kernel decode graph lands on the synchronous loop's
critical path and with pieces only the first piece's share does (reports/h200/overhead-arms.md).

Copy variants (``EngineConfig.graph_copy``, with pieces): the first piece is captured three times per size:
alone (the async loop, whose inputs arrive through staging buffers), and behind the H2D copy of each of the
two host buffers. A step whose device is idle (the sync loop) replays the latter, so that its copy is a node
of the graph that starts its GPU work, and the GPU runs from the copy through layer 0 without waiting for
another launch. Every variant writes its state where the next piece reads it: the embedding and rotary
lookups into the same tensors (``start_buffers``), and layer 0's output copied into the plain variant's.
"""

from __future__ import annotations

import gc

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
    """The graphs of one batch size, replayed in order (one, or the pieces of ``piece_bounds``).

    ``copy_firsts[k]`` is the first piece again behind the H2D copy of host buffer ``k``'s inputs: a step whose
    device is idle (the sync loop) starts through it (``replay(k)``), its copy a node of that graph."""

    def __init__(self, graphs: list[torch.cuda.CUDAGraph], copy_firsts: list[torch.cuda.CUDAGraph] | None = None):
        self.graphs = graphs
        self.copy_firsts = copy_firsts or []

    def replay(self, copy_from: int | None = None) -> None:
        """``copy_from``: the host buffer whose inputs to copy in first (its ``copy_firsts`` graph), or None."""
        (self.graphs[0] if copy_from is None else self.copy_firsts[copy_from]).replay()
        for graph in self.graphs[1:]:
            graph.replay()


def graph_size(sizes: list[int], b: int) -> int:
    """The smallest captured size holding ``b`` rows, or 0 (run eagerly)."""
    for size in sizes:
        if size >= b:
            return size
    return 0


@torch.inference_mode()
def capture_graphs(model, kv_cache: torch.Tensor, dev: dict, max_bs: int, max_seqs: int, max_model_len: int,
                   device: torch.device, bounds: list[int] | None = None,
                   copy_in: tuple | None = None) -> dict[int, tuple[DecodeGraph, torch.Tensor]]:
    """Capture the decode graph(s) of each size of ``graph_batch_sizes(max_bs)``; → {size: (graphs, logits)}.

    ``dev``: the named device buffers the graphs read (``step_inputs.layout``); ``bounds``: the layer
    boundaries of the pieces (``piece_bounds``; None: one graph); ``copy_in``: ``(device bytes, [host bytes of
    each host buffer], used_bytes)``: the first piece again behind each host buffer's copy into the device
    bytes (``DecodeGraph.copy_firsts``). Blocks the host (init only). Every graph shares one memory pool: safe
    because they are replayed one at a time, each size's pieces in the order of their capture (a copy variant in
    place of the first piece, its own tensors dead once it has written the first piece's state), and the
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
    # a garbage collection inside a capture may destroy a dead engine's graphs, which CUDA forbids during a
    # capture (it invalidates it): collect now, and not again until the captures are done
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _capture_sizes(model, kv_cache, d, sizes, bounds, max_model_len, device, copy_in)
    finally:
        if enabled:
            gc.enable()


def _capture_sizes(model, kv_cache, d, sizes, bounds, max_model_len, device, copy_in) -> dict:
    graphs, pool = {}, None
    for bs in reversed(sizes):  # largest first: smaller graphs reuse its memory pool
        meta = AttentionMetadata(d["slot"][:bs], d["qsl"][:bs + 1], d["ctx"][:bs], d["bt"][:bs], 1, max_model_len)
        # the embedding and rotary lookups at addresses of their own: every variant of the first piece writes them
        start_out = model.start_buffers(bs) if copy_in is not None else None

        def piece(state, i, meta=meta, bs=bs):
            """Piece ``i`` from the previous piece's ``state`` (None: start here): the next state, or logits."""
            if state is None:
                state = model.start(d["ids"][:bs], d["pos"][:bs], out=start_out)
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
        pieces, copies, state = [], [], None
        for i in range(len(bounds) - 1):
            graph, pool, state = _capture(lambda i=i, state=state: piece(state, i), pool, side)
            pieces.append(graph)
            if i == 0 and copy_in is not None and len(bounds) > 2:  # (one piece ends in the logits: no variants)
                copies = [_capture(lambda src=src, first=state: _copy_then_first(copy_in, src, bs, piece, first),
                                   pool, side)[0] for src in copy_in[1]]
        graphs[bs] = (DecodeGraph(pieces, copies), state)
    torch.cuda.synchronize(device)
    return graphs


def _copy_then_first(copy_in: tuple, src: torch.Tensor, bs: int, piece, first: tuple) -> None:
    """What a copy variant of the first piece runs: host bytes ``src`` into the device bytes, the first piece,
    and its output into ``first`` (the plain variant's state, which the next piece reads)."""
    dst, _, used_bytes = copy_in
    n = used_bytes(bs)
    dst[:n].copy_(src[:n], non_blocking=True)
    state = piece(None, 0)  # the lookups already write into the shared start_buffers
    for mine, plain in zip(state[:2], first[:2]):
        if mine.data_ptr() != plain.data_ptr():  # (the residual is the embedding buffer, updated in place)
            plain.copy_(mine)


def _capture(fn, pool, stream: torch.cuda.Stream):
    """``fn`` captured into a new graph on ``stream`` in ``pool`` (None: a new pool); → (graph, pool, what
    ``fn`` returned: the tensors the graph writes)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, stream=stream):
        result = fn()
    return graph, (graph.pool() if pool is None else pool), result
