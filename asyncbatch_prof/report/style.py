"""Colours, lane order and the small plotly layout every report figure shares (one look, small files)."""

from __future__ import annotations

GAP_COLORS = {"host_bound": "#d62728", "launch_latency": "#ff7f0e", "dependency": "#9467bd"}
GAP_LABELS = {"host_bound": "idle: host-bound", "launch_latency": "idle: launch latency",
              "dependency": "idle: dependency"}
PHASE_ORDER = {"step": 0, "schedule": 1, "prepare": 2, "forward": 3, "sample": 4, "update": 5, "sync_wait": 6}
_PHASE_COLORS = {"step": "#9e9e9e", "schedule": "#1f77b4", "prepare": "#17becf", "forward": "#8c564b",
                 "sample": "#bcbd22", "update": "#e377c2", "sync_wait": "#d62728"}
OTHER_PHASE_COLORS = ["#7f7f7f", "#aec7e8", "#c49c94", "#dbdb8d", "#9edae5", "#f7b6d2", "#c7c7c7", "#98df8a"]
SERIES_COLORS = ["#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]


def phase_color(phase: str) -> str:
    """Colour of a CPU phase lane (grey for phases outside the engine's annotations)."""
    return _PHASE_COLORS.get(phase, "#7f7f7f")


def base_layout(title: str, height: int = 360) -> dict:
    """Layout shared by every figure; an explicit small template instead of plotly's default, which
    would repeat ~10 kB of styling in every figure of the page."""
    return {
        "template": {"layout": {"font": {"family": "system-ui, sans-serif", "size": 12},
                                "paper_bgcolor": "white", "plot_bgcolor": "white",
                                "xaxis": {"gridcolor": "#eee", "zeroline": False},
                                "yaxis": {"gridcolor": "#eee", "zeroline": False}}},
        "title": {"text": title, "x": 0.01, "font": {"size": 14}},
        "height": height,
        "margin": {"l": 150, "r": 20, "t": 40, "b": 45},
        "legend": {"orientation": "h", "y": -0.18},
    }
