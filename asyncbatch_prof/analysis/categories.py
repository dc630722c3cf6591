"""GPU busy time by category of work (GEMM, attention, elementwise and norms, communication, copies, memset).

Busy time is the union of a device's GPU ops, so two streams running at once are never counted
twice. Where k ops overlap, each gets 1/k of that time (its *share*), so the shares of all ops, and
hence of all categories, add up to the busy union exactly. Copies also report their bytes and the
achieved bandwidth, computed over their own (not apportioned) durations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from asyncbatch_prof.analysis import intervals
from asyncbatch_prof.analysis.gpu import DeviceOps
from asyncbatch_prof.analysis.loader import MEMCPY, MEMSET, TraceEvents

GEMM, ATTENTION, ELEMENTWISE, COMMUNICATION = "gemm", "attention", "elementwise_norm", "communication"
MEMCPY_H2D, MEMCPY_D2H, MEMCPY_D2D, MEMSET_CAT, OTHER = "memcpy_h2d", "memcpy_d2h", "memcpy_d2d", "memset", "other"
CATEGORIES = (GEMM, ATTENTION, ELEMENTWISE, COMMUNICATION, MEMCPY_H2D, MEMCPY_D2H, MEMCPY_D2D, MEMSET_CAT, OTHER)
LABELS = {GEMM: "GEMM", ATTENTION: "attention", ELEMENTWISE: "elementwise & norms", COMMUNICATION: "communication",
          MEMCPY_H2D: "memcpy H2D", MEMCPY_D2H: "memcpy D2H", MEMCPY_D2D: "memcpy D2D", MEMSET_CAT: "memset",
          OTHER: "other kernels"}
APPORTIONING = ("time covered by k concurrent GPU ops is split 1/k to each, so categories sum exactly to the "
                "busy union")

# Checked in this order: a flash-attention kernel that mentions "gemm" in its template is attention.
_KERNEL_RULES = (
    (COMMUNICATION, re.compile(r"nccl|rccl|all_?reduce|all_?gather|reduce_?scatter|alltoall|cross_device|"
                               r"custom_?ar|one_?shot|two_?shot", re.I)),
    (ATTENTION, re.compile(r"flash|fmha|attention|attn|sdpa|mha_|paged|xformers|flashinfer|"
                           r"batchdecode|batchprefill|unified_attention", re.I)),
    (GEMM, re.compile(r"gemm|gemv|cutlass|cublas|nvjet|xmma|wgmma|matmul|_mm_|splitk|hgemm|sgemm|"
                      r"ampere_|sm\d\d_|cijk_|bmm|dot_", re.I)),
    (ELEMENTWISE, re.compile(r"elementwise|vectorized|unrolled|norm|rms|silu|gelu|swiglu|act_and_mul|rotary|"
                             r"rope|softmax|reduce|triton_poi|triton_per|triton_red|copy|cat_|index|fill|"
                             r"gather|scatter|add|mul|sigmoid|tanh|exp|where|embedding", re.I)),
)


@dataclass
class OpCategories:
    """Per op of a DeviceOps (same order): category code (index into CATEGORIES) and name code."""

    code: np.ndarray
    name: np.ndarray


def categorize(ev: TraceEvents, ops: DeviceOps) -> OpCategories:
    """The category of every GPU op of one device, from its trace category and name."""
    table = np.array([_kernel_category(n) for n in ev.names], dtype=np.int8)
    copy = np.array([_copy_category(n) for n in ev.names], dtype=np.int8)
    name = ev.name[ops.row]
    cat = ev.cat[ops.row]
    code = np.where(cat == MEMCPY, copy[name], np.where(cat == MEMSET, CATEGORIES.index(MEMSET_CAT), table[name]))
    return OpCategories(code.astype(np.int64), name)


def _kernel_category(name: str) -> int:
    for category, pattern in _KERNEL_RULES:
        if pattern.search(name):
            return CATEGORIES.index(category)
    return CATEGORIES.index(OTHER)


def _copy_category(name: str) -> int:
    if "HtoD" in name or "H2D" in name:
        return CATEGORIES.index(MEMCPY_H2D)
    if "DtoH" in name or "D2H" in name:
        return CATEGORIES.index(MEMCPY_D2H)
    return CATEGORIES.index(MEMCPY_D2D)  # DtoD, PtoP and anything else device-side


@dataclass
class Segments:
    """The elementary time segments between consecutive op boundaries inside a window (µs)."""

    start_us: np.ndarray
    end_us: np.ndarray
    active: np.ndarray  # ops running in each segment
    per_category: np.ndarray  # (len(CATEGORIES), segments): ops of each category running


def segments(ops: DeviceOps, cats: OpCategories, lo: float, hi: float, edges: np.ndarray | None = None) -> Segments:
    """Cut [lo, hi) at every op start/end (and at ``edges``) and count the ops running in each piece."""
    s, e = np.clip(ops.start_us, lo, hi), np.clip(ops.end_us, lo, hi)
    extra = np.empty(0) if edges is None else np.clip(np.asarray(edges, dtype=np.float64), lo, hi)
    bounds = np.unique(np.concatenate(([lo, hi], s, e, extra)))
    seg_s, seg_e = bounds[:-1], bounds[1:]
    i0, i1 = np.searchsorted(bounds, s), np.searchsorted(bounds, e)
    per_cat = np.zeros((len(CATEGORIES), bounds.size), dtype=np.int64)
    np.add.at(per_cat, (cats.code, i0), 1)
    np.add.at(per_cat, (cats.code, i1), -1)
    per_cat = np.cumsum(per_cat, axis=1)[:, :-1]
    return Segments(seg_s, seg_e, per_cat.sum(axis=0), per_cat)


def category_time(seg: Segments, step_edges: np.ndarray | None = None) -> np.ndarray:
    """Apportioned busy µs per category (shape (categories,)), or per step and category
    (shape (steps, categories)) when ``step_edges`` (step starts plus the window end, µs) are given."""
    length = seg.end_us - seg.start_us
    with np.errstate(invalid="ignore", divide="ignore"):
        weight = np.where(seg.active > 0, length / np.maximum(seg.active, 1), 0.0)
    share = seg.per_category * weight  # (categories, segments)
    if step_edges is None:
        return share.sum(axis=1)
    step_of = np.searchsorted(step_edges, seg.start_us, side="right") - 1
    n = step_edges.size - 1
    inside = (step_of >= 0) & (step_of < n)
    out = np.zeros((n, len(CATEGORIES)))
    for c in range(len(CATEGORIES)):
        out[:, c] = np.bincount(step_of[inside], weights=share[c, inside], minlength=n)[:n]
    return out


def op_shares(ops: DeviceOps, seg: Segments) -> np.ndarray:
    """Each op's apportioned busy µs inside the segments' window (1/k of time shared with k−1 others)."""
    length = seg.end_us - seg.start_us
    weight = np.where(seg.active > 0, length / np.maximum(seg.active, 1), 0.0)
    cum = np.concatenate(([0.0], np.cumsum(weight)))
    bounds = np.append(seg.start_us, seg.end_us[-1] if seg.end_us.size else 0.0)
    lo, hi = bounds[0] if bounds.size else 0.0, bounds[-1] if bounds.size else 0.0
    i0 = np.searchsorted(bounds, np.clip(ops.start_us, lo, hi))
    i1 = np.searchsorted(bounds, np.clip(ops.end_us, lo, hi))
    return cum[i1] - cum[i0]


def breakdown(ev: TraceEvents, ops: DeviceOps, lo: float, hi: float, top: int = 10) -> dict:
    """GPU work of one device over [lo, hi): busy µs per category (summing to the busy union), kernel
    and op counts, copies with bytes and GB/s, time with two or more streams busy, and the top ops by
    apportioned time (µs)."""
    cats = categorize(ev, ops)
    seg = segments(ops, cats, lo, hi)
    per_cat = category_time(seg)
    busy = intervals.length(intervals.clip(ops.busy, lo, hi))
    assert abs(per_cat.sum() - busy) <= 1e-6 * max(hi - lo, 1.0), (per_cat.sum(), busy)
    inside = (ops.end_us > lo) & (ops.start_us < hi)
    dur = np.minimum(ops.end_us, hi) - np.maximum(ops.start_us, lo)
    nbytes = np.nan_to_num(ev.nbytes[ops.row], nan=0.0)
    categories = {}
    for i, c in enumerate(CATEGORIES):
        sel = inside & (cats.code == i)
        entry = {"busy_us": float(per_cat[i]), "busy_pct": 100.0 * per_cat[i] / busy if busy > 0 else 0.0,
                 "ops": int(sel.sum())}
        if c.startswith("memcpy"):
            moved, took = float(nbytes[sel].sum()), float(dur[sel].sum())
            entry.update(bytes=int(moved), gb_per_s=moved / took / 1e3 if took > 0 else None)
        categories[c] = entry
    shares = op_shares(ops, seg)
    per_stream = [intervals.clip(b, lo, hi) for b in ops.stream_busy().values()]
    return {
        "busy_us": busy, "apportioning": APPORTIONING, "categories": categories,
        "ops": int(inside.sum()), "kernels": int((inside & (ev.cat[ops.row] == 0)).sum()),
        "multi_stream_us": intervals.length(intervals.coverage_at_least(per_stream, 2)),
        "top_ops": top_ops(ev, cats, shares, inside, top),
    }


def top_ops(ev: TraceEvents, cats: OpCategories, shares: np.ndarray, inside: np.ndarray, top: int) -> list[dict]:
    """The ``top`` op names by apportioned busy µs, with their category and count."""
    if not inside.any():
        return []
    names, inverse = np.unique(cats.name[inside], return_inverse=True)
    total = np.bincount(inverse, weights=shares[inside])
    count = np.bincount(inverse)
    order = np.lexsort((names, -total))[:top]
    first_cat = {}
    for n, c in zip(cats.name[inside].tolist(), cats.code[inside].tolist()):
        first_cat.setdefault(n, c)
    return [{"name": ev.names[int(names[i])], "category": CATEGORIES[first_cat[int(names[i])]],
             "busy_us": float(total[i]), "count": int(count[i])} for i in order]


def name_time(ev: TraceEvents, ops: DeviceOps, lo: float, hi: float) -> dict[str, tuple[str, float]]:
    """Apportioned busy µs of every op name over [lo, hi), with its category: {name: (category, µs)}."""
    cats = categorize(ev, ops)
    seg = segments(ops, cats, lo, hi)
    shares = op_shares(ops, seg)
    inside = (ops.end_us > lo) & (ops.start_us < hi)
    out: dict[str, tuple[str, float]] = {}
    for n, c, v in zip(cats.name[inside].tolist(), cats.code[inside].tolist(), shares[inside].tolist()):
        name = ev.names[n]
        prev = out.get(name)
        out[name] = (CATEGORIES[c], v + (prev[1] if prev else 0.0))
    return out
