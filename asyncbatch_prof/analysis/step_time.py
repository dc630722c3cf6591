"""Where one run's step time goes: GPU busy by category and idle by cause, over the default window.

``step_time`` in metrics.json holds window totals (µs) that add up exactly to the window:
sum(gpu_busy_us.values()) + host_bound (all phases) + launch_latency + dependency = window_us.
Divided by ``steps`` they give the time of an average step; ``explain`` compares two of them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from asyncbatch_prof.analysis.categories import CATEGORIES, LABELS, breakdown, categorize, category_time, name_time, segments
from asyncbatch_prof.analysis.gpu import DEPENDENCY, HOST_BOUND, LAUNCH_LATENCY
from asyncbatch_prof.analysis.loader import TraceEvents
from asyncbatch_prof.analysis.table import Table
from asyncbatch_prof.analysis.windows import WindowResult

TOP_NAMES = 60  # op names kept per run for the explanation (by apportioned busy time)


def _window(ta) -> WindowResult | None:
    res = ta.windows.get(ta.device, {}).get(ta.window) if ta.device is not None else None
    return res if isinstance(res, WindowResult) and res.hi > res.lo else None


def step_categories_table(ev: TraceEvents, ta) -> Table:
    """Per profiled step: apportioned GPU busy µs per category (columns ``<category>_us``)."""
    columns = [f"{c}_us" for c in CATEGORIES]
    steps = ta.tables["steps"]
    res = ta.windows.get(ta.device, {}).get("step") if ta.device is not None else None
    if not len(steps) or not isinstance(res, WindowResult):
        return Table.empty(["step", *columns])
    ops = ta.devices[ta.device]
    edges = np.append(steps["start_us"] - ev.origin_us, res.hi)
    per = category_time(segments(ops, categorize(ev, ops), res.lo, res.hi, edges), edges)
    return Table({"step": steps["step"], **{name: per[:, i] for i, name in enumerate(columns)}})


def step_time_doc(ev: TraceEvents, ta) -> dict[str, Any]:
    """The ``step_time`` section: window totals (µs) of GPU busy by category and idle by cause, the step
    count, the GPU work breakdown (counts, copies' bytes and GB/s, multi-stream time, top ops)."""
    res = _window(ta)
    if res is None:
        return {"absent": "no GPU activity in trace" if ta.device is None else f"the {ta.window} window is empty"}
    ops = ta.devices[ta.device]
    work = breakdown(ev, ops, res.lo, res.hi)
    gap = res.details.get("gap_us", {})
    steps = int(len(ta.tables["steps"])) if ta.window == "step" else None
    names = name_time(ev, ops, res.lo, res.hi)
    kept = sorted(names.items(), key=lambda kv: (-kv[1][1], kv[0]))[:TOP_NAMES]
    doc = {
        "window": ta.window, "steps": steps, "window_us": res.hi - res.lo,
        "gpu_busy_us": {c: work["categories"][c]["busy_us"] for c in CATEGORIES},
        "idle_us": {HOST_BOUND: dict(sorted(res.phases.items(), key=lambda kv: -kv[1])),
                    LAUNCH_LATENCY: gap.get(LAUNCH_LATENCY, 0.0), DEPENDENCY: gap.get(DEPENDENCY, 0.0)},
        "gpu_work": work,
        "ops_busy_us": {n: {"category": c, "busy_us": v} for n, (c, v) in kept},
        "category_labels": dict(LABELS),
    }
    total = sum(doc["gpu_busy_us"].values()) + sum(doc["idle_us"][HOST_BOUND].values()) + \
        doc["idle_us"][LAUNCH_LATENCY] + doc["idle_us"][DEPENDENCY]
    assert abs(total - doc["window_us"]) <= 1e-6 * doc["window_us"] + 1e-6, (total, doc["window_us"])
    return doc


def one_line(doc: dict[str, Any]) -> str | None:
    """``per step (12.3 ms): GPU busy 9.1 ms (GEMM 5.2, attention 2.0, ...), idle 3.2 ms (host-bound 2.9, ...)``."""
    st = doc.get("step_time") or {}
    if "window_us" not in st:
        return None
    n = st.get("steps") or 1
    unit = f"per step ({n} steps)" if st.get("steps") else f"over the {st['window']} window"
    busy = {c: v / n for c, v in st["gpu_busy_us"].items() if v > 0}
    idle = {"host-bound": sum(st["idle_us"][HOST_BOUND].values()) / n,
            "launch latency": st["idle_us"][LAUNCH_LATENCY] / n, "dependency": st["idle_us"][DEPENDENCY] / n}
    ms = lambda us: f"{us / 1e3:.3g}"  # noqa: E731
    b = ", ".join(f"{LABELS[c]} {ms(v)}" for c, v in sorted(busy.items(), key=lambda kv: -kv[1])[:4])
    i = ", ".join(f"{k} {ms(v)}" for k, v in sorted(idle.items(), key=lambda kv: -kv[1]) if v > 0)
    return (f"{unit}, {ms(st['window_us'] / n)} ms: GPU busy {ms(sum(busy.values()))} ms ({b}); "
            f"idle {ms(sum(idle.values()))} ms ({i or 'none'})")
