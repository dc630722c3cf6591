"""The explanation as pictures: a waterfall from run A's step time to run B's, and one run's step split."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from asyncbatch_prof.analysis.categories import CATEGORIES, LABELS
from asyncbatch_prof.analysis.gpu import DEPENDENCY, HOST_BOUND, LAUNCH_LATENCY
from asyncbatch_prof.report.style import GAP_COLORS, GAP_LABELS, base_layout

_CATEGORY_COLORS = dict(zip(CATEGORIES, ["#1f77b4", "#2ca02c", "#17becf", "#8c564b", "#bcbd22", "#e377c2",
                                         "#7f7f7f", "#c7c7c7", "#aec7e8"]))
_MAX_BARS = 10  # second-level parts drawn one by one; the rest is one "everything else" bar


def _bars(ex: dict[str, Any]) -> list[tuple[str, float]]:
    """Second-level parts (GPU categories, host-bound phases) and the other top-level ones, largest first."""
    out = []
    for comp in ex["components"]:
        kids = comp.get("children") or []
        if comp["kind"] in ("gpu_busy", "idle") and kids:
            prefix = "GPU " if comp["kind"] == "gpu_busy" else "host-bound: "
            out += [(prefix + k["name"], k["delta_ms"]) for k in kids]
        else:
            out.append((comp["name"], comp["delta_ms"]))
    out.sort(key=lambda kv: -abs(kv[1]))
    if len(out) > _MAX_BARS:
        out = out[:_MAX_BARS - 1] + [("everything else", sum(v for _, v in out[_MAX_BARS - 1:]))]
    return out


def waterfall_figure(ex: dict[str, Any], names: tuple[str, str]) -> go.Figure | None:
    """Plotly waterfall: A's time per unit, each part's change, B's time per unit (ms). None if absent."""
    if "absent" in ex:
        return None
    bars = _bars(ex)
    unit = ex["unit"]
    x = [f"{names[0]}"] + [n[:50] for n, _ in bars] + [f"{names[1]}"]
    fig = go.Figure(go.Waterfall(
        orientation="v", x=x, y=[ex["a_ms"]] + [v for _, v in bars] + [ex["b_ms"]],
        measure=["absolute"] + ["relative"] * len(bars) + ["total"],
        increasing={"marker": {"color": "#d62728"}}, decreasing={"marker": {"color": "#2ca02c"}},
        totals={"marker": {"color": "#1f77b4"}}, hovertemplate="%{x}: %{y:.4g} ms<extra></extra>"))
    fig.update_layout(**base_layout(f"ms per {unit}: {names[0]} → {names[1]} ({ex['unit_reason']})", 420))
    fig.update_layout(showlegend=False, margin={"l": 60, "r": 20, "t": 40, "b": 140})
    fig.update_yaxes(title_text=f"ms per {unit}")
    return fig


def step_split_figure(step_time: dict[str, Any]) -> go.Figure | None:
    """One stacked bar of an average step (ms): GPU busy by category, then idle by cause. None if absent."""
    if not step_time or "window_us" not in step_time:
        return None
    n = step_time.get("steps") or 1
    fig = go.Figure()
    for c in CATEGORIES:
        v = step_time["gpu_busy_us"].get(c, 0.0) / n / 1e3
        if v > 0:
            fig.add_trace(go.Bar(x=[v], y=["step"], orientation="h", name=f"GPU {LABELS[c]}",
                                 marker_color=_CATEGORY_COLORS[c], hovertemplate=f"{LABELS[c]}: %{{x:.4g}} ms<extra></extra>"))
    idle = step_time["idle_us"]
    for cause, v in ((HOST_BOUND, sum(idle[HOST_BOUND].values())), (LAUNCH_LATENCY, idle[LAUNCH_LATENCY]),
                     (DEPENDENCY, idle[DEPENDENCY])):
        if v > 0:
            fig.add_trace(go.Bar(x=[v / n / 1e3], y=["step"], orientation="h", name=GAP_LABELS[cause],
                                 marker_color=GAP_COLORS[cause], hovertemplate=f"{GAP_LABELS[cause]}: %{{x:.4g}} ms<extra></extra>"))
    per = "an average step" if step_time.get("steps") else f"the {step_time['window']} window"
    fig.update_layout(**base_layout(f"Where the time of {per} goes (ms)", 200))
    fig.update_layout(barmode="stack")
    return fig
