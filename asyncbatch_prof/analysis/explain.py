"""Why run B's step takes longer (or shorter) than run A's: the difference split into parts that add up.

Each run's ``step_time`` (step_time.py) splits its window exactly into GPU busy by category and idle
by cause, so the time of an average step is a sum of parts and the difference of two such sums is the
sum of the parts' differences. The unit is one step when both runs have steps and the same output
tokens per step; per output token when tokens per step differ (from run metadata), with the change
in tokens per step as its own component; the whole profiled window when a run has no steps.
"""

from __future__ import annotations

from typing import Any

from asyncbatch_prof.analysis.categories import CATEGORIES, LABELS
from asyncbatch_prof.analysis.gpu import DEPENDENCY, HOST_BOUND, LAUNCH_LATENCY

TOP_OPS = 5  # op names listed under each category; the rest of the category is one "other ops" child
_SAME_TOKENS = 0.01  # relative difference in tokens per step below which steps are compared directly


def _node(name: str, kind: str, delta_ms: float, children: list[dict] | None = None, **extra) -> dict[str, Any]:
    node: dict[str, Any] = {"name": name, "kind": kind, "delta_ms": delta_ms, **extra}
    if children:
        node["children"] = sorted(children, key=lambda c: -abs(c["delta_ms"]))
    return node


def tokens_per_step(doc: dict[str, Any]) -> float | None:
    """Output tokens per engine step from a run's metrics.json (serving.output_tokens / run.num_steps)."""
    tokens = (doc.get("serving") or {}).get("output_tokens")
    steps = (doc.get("run") or {}).get("num_steps")
    return float(tokens) / steps if tokens and steps else None


def choose_unit(a: dict, b: dict, tps: tuple[float | None, float | None]) -> tuple[str, str]:
    """('step' | 'output token' | 'window', why) for two step_time sections."""
    if not (a.get("steps") and b.get("steps")):
        return "window", "a run has no steps, so the whole profiled windows are compared"
    if tps[0] and tps[1] and abs(tps[1] - tps[0]) > _SAME_TOKENS * tps[0]:
        return "output token", (f"tokens per step differ ({tps[0]:.3g} vs {tps[1]:.3g}), so a step is not the same "
                                "amount of work")
    return "step", "both runs have steps" + (" with the same tokens per step" if tps[0] and tps[1] else
                                             " (tokens per step unknown)")


def _parts(st: dict) -> dict[str, Any]:
    """Per-step µs of every part of one run (window totals / steps)."""
    n = st.get("steps") or 1
    return {
        "total": st["window_us"] / n,
        "busy": {c: st["gpu_busy_us"].get(c, 0.0) / n for c in CATEGORIES},
        "host": {p: v / n for p, v in st["idle_us"][HOST_BOUND].items()},
        LAUNCH_LATENCY: st["idle_us"][LAUNCH_LATENCY] / n, DEPENDENCY: st["idle_us"][DEPENDENCY] / n,
        "ops": {name: (v["category"], v["busy_us"] / n) for name, v in (st.get("ops_busy_us") or {}).items()},
    }


def _busy_children(pa: dict, pb: dict, scale: float) -> list[dict]:
    out = []
    for c in CATEGORIES:
        d = (pb["busy"][c] - pa["busy"][c]) * scale / 1e3
        if pa["busy"][c] == 0 and pb["busy"][c] == 0:
            continue
        names = {n for n, (cat, _) in pa["ops"].items() if cat == c} | {n for n, (cat, _) in pb["ops"].items() if cat == c}
        ops = [(n, (pb["ops"].get(n, (c, 0.0))[1] - pa["ops"].get(n, (c, 0.0))[1]) * scale / 1e3) for n in names]
        ops.sort(key=lambda kv: -abs(kv[1]))
        kids = [_node(n, "op", v) for n, v in ops[:TOP_OPS]]
        rest = d - sum(k["delta_ms"] for k in kids)
        if kids and abs(rest) > 1e-9:
            kids.append(_node(f"other {LABELS[c]}", "op", rest))
        out.append(_node(LABELS[c], "gpu_category", d, kids, category=c,
                         a_ms=pa["busy"][c] * scale / 1e3, b_ms=pb["busy"][c] * scale / 1e3))
    return out


def explain(a: dict, b: dict, tps: tuple[float | None, float | None] = (None, None)) -> dict[str, Any]:
    """The explanation of run B against run A from their ``step_time`` sections (metrics.json); ``tps``
    are their output tokens per step. Components are ms per unit; top-level ones sum to total_delta_ms."""
    for which, st in (("A", a), ("B", b)):
        if not st or "window_us" not in st:
            return {"absent": f"run {which} has no step time breakdown ({(st or {}).get('absent', 'not computed')})"}
    unit, why = choose_unit(a, b, tps)
    pa, pb = _parts(a), _parts(b)
    ta_, tb_ = (tps[0], tps[1]) if unit == "output token" else (1.0, 1.0)
    scale = 1.0 / ta_  # parts measured at A's tokens per step; the change in tokens per step is its own part
    busy = _busy_children(pa, pb, scale)
    phases = sorted(set(pa["host"]) | set(pb["host"]))
    host = [_node(p, "host_bound_phase", (pb["host"].get(p, 0.0) - pa["host"].get(p, 0.0)) * scale / 1e3)
            for p in phases]
    comps = [
        _node("GPU busy", "gpu_busy", sum(k["delta_ms"] for k in busy), busy),
        _node("host-bound idle", "idle", sum(k["delta_ms"] for k in host), host, cause=HOST_BOUND),
        _node("launch-latency idle", "idle", (pb[LAUNCH_LATENCY] - pa[LAUNCH_LATENCY]) * scale / 1e3,
              cause=LAUNCH_LATENCY),
        _node("dependency idle", "idle", (pb[DEPENDENCY] - pa[DEPENDENCY]) * scale / 1e3, cause=DEPENDENCY),
    ]
    total_a, total_b = pa["total"] / ta_ / 1e3, pb["total"] / tb_ / 1e3
    if unit == "output token":
        comps.append(_node("tokens per step", "tokens_per_step", pb["total"] * (1 / tb_ - 1 / ta_) / 1e3))
    comps.sort(key=lambda c: -abs(c["delta_ms"]))
    total = total_b - total_a
    assert abs(sum(c["delta_ms"] for c in comps) - total) <= 1e-6 * max(abs(total_a), abs(total_b), 1e-9)
    return {"unit": unit, "unit_reason": why, "a_ms": total_a, "b_ms": total_b, "total_delta_ms": total,
            "ratio": total_b / total_a if total_a > 0 else None, "steps": [a.get("steps"), b.get("steps")],
            "tokens_per_step": list(tps), "components": comps}


HARDWARE = (("sm_active_pct", "SM active"), ("gpm_dram_bw_pct", "DRAM bandwidth"),
            ("gpm_tensor_active_pct", "tensor active"), ("nvml_util_pct", "NVML util"))


def hardware(doc: dict[str, Any]) -> dict[str, float]:
    """NVML/GPM figures of a run's metrics.json (% means over the measured window), only those it has."""
    out = {}
    for name, _ in HARDWARE:
        value = (doc.get("metrics") or {}).get(name)
        if value is None:
            value = ((doc.get("nvml") or {}).get(name) or {}).get("mean")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def hardware_line(a: dict[str, float], b: dict[str, float] | None = None) -> str | None:
    """``SM active 71% → 45%, DRAM bandwidth 30% → 12%`` (one run when ``b`` is None); None if none measured."""
    parts = []
    for name, label in HARDWARE:
        if b is None and name in a:
            parts.append(f"{label} {a[name]:.0f}%")
        elif b is not None and name in a and name in b:
            parts.append(f"{label} {a[name]:.0f}% → {b[name]:.0f}%")
    return ("NVML/GPM: " + ", ".join(parts)) if parts else None


def _ms(v: float) -> str:
    return f"{v:+.3g} ms" if abs(v) >= 0.01 else f"{v * 1e3:+.3g} µs"


def verdict(ex: dict[str, Any], name_b: str = "B") -> str:
    """One ranked sentence: ``B is 3.1× slower per step (32 → 99 ms): +60 ms GPU busy, of which +55 ms in
    memcpy H2D; −4 ms host-bound idle``."""
    if "absent" in ex:
        return f"no explanation: {ex['absent']}"
    ratio = ex["ratio"]
    per = {"step": "per step", "output token": "per output token", "window": "over the profiled window"}[ex["unit"]]
    if ratio is None or abs(ratio - 1) < 0.005:
        head = f"{name_b} takes the same time {per}"
    elif ratio > 1:
        head = f"{name_b} is {ratio:.3g}× slower {per}"
    else:
        head = f"{name_b} is {1 / ratio:.3g}× faster {per}"
    parts = []
    for comp in ex["components"][:3]:
        if abs(comp["delta_ms"]) < 1e-3 * max(abs(ex["total_delta_ms"]), 1e-9):
            continue
        text = f"{_ms(comp['delta_ms'])} {comp['name']}"
        kids = comp.get("children") or []
        if kids and abs(kids[0]["delta_ms"]) > 0:
            text += f", of which {_ms(kids[0]['delta_ms'])} in {kids[0]['name']}"
            grand = kids[0].get("children") or []
            if grand and not grand[0]["name"].startswith("other "):
                text += f" (most: {grand[0]['name'][:60]} {_ms(grand[0]['delta_ms'])})"
        parts.append(text)
    return f"{head} ({ex['a_ms']:.4g} → {ex['b_ms']:.4g} ms): " + "; ".join(parts)
