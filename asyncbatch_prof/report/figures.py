"""The report's figures other than the timeline, each from one DataFrame or one metrics document.

Figures draw; they compute nothing a card shows. Histograms are binned here (numpy) so the page
carries counts, not every gap or token.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from asyncbatch_prof.analysis.contract import lookup
from asyncbatch_prof.report.style import (GAP_COLORS, GAP_LABELS, OTHER_PHASE_COLORS, PHASE_ORDER, SERIES_COLORS,
                                          base_layout, phase_color)


def idle_by_cause_figure(doc: Mapping[str, Any], phases: pd.DataFrame) -> go.Figure | None:
    """One stacked bar of idle share (% of the step window, or kernel window without steps): host-bound
    split by the CPU phase the engine was in, then launch latency, then dependency. None if absent."""
    values = {c: lookup(doc, f"{c}_pct")[0] for c in GAP_COLORS}
    if all(v is None for v in values.values()):
        return None
    bars = []
    host = values["host_bound"]
    if host is not None and len(phases) and phases["host_bound_pct"].sum() > 0:
        for index, (name, share) in enumerate(_top_phases(phases)):
            color = phase_color(name) if name in PHASE_ORDER else OTHER_PHASE_COLORS[index % len(OTHER_PHASE_COLORS)]
            bars.append(go.Bar(x=[share], y=["idle"], orientation="h", name=f"host-bound: {name}",
                               marker_color=color, marker_line={"color": GAP_COLORS["host_bound"], "width": 2},
                               hovertemplate=f"host-bound during {name}: %{{x:.2f}}%<extra></extra>"))
    elif host is not None:
        bars.append(go.Bar(x=[host], y=["idle"], orientation="h", name=GAP_LABELS["host_bound"],
                           marker_color=GAP_COLORS["host_bound"]))
    for gap_class in ("launch_latency", "dependency"):
        if values[gap_class] is not None:
            bars.append(go.Bar(x=[values[gap_class]], y=["idle"], orientation="h", name=GAP_LABELS[gap_class],
                               marker_color=GAP_COLORS[gap_class],
                               hovertemplate=f"{GAP_LABELS[gap_class]}: %{{x:.2f}}%<extra></extra>"))
    fig = go.Figure(bars)
    fig.update_layout(base_layout("Idle time by cause (% of the window)", height=300), barmode="stack")
    fig.update_layout(legend={"orientation": "v", "y": 1, "x": 1.02, "traceorder": "normal"})
    fig.update_layout(margin={"l": 60})
    fig.update_xaxes(title_text="% of the window", rangemode="tozero")
    return fig


def _top_phases(phases: pd.DataFrame, keep: int = 5) -> list[tuple[str, float]]:
    """The CPU phases with the most host-bound idle (% of the window), the rest summed as 'other phases':
    a trace without the engine's annotations names dozens of aten ops here."""
    ordered = phases.sort_values("host_bound_pct", ascending=False)
    top = [(str(p).removeprefix("abprof."), float(v)) for p, v in zip(ordered["phase"], ordered["host_bound_pct"])]
    if len(top) > keep + 1:
        top = top[:keep] + [(f"{len(top) - keep} other phases", sum(v for _, v in top[keep:]))]
    return top


def gap_histogram_figure(gaps: pd.DataFrame, device: Any, threshold_us: float | None) -> go.Figure | None:
    """Counts of idle gaps by length (log-spaced µs bins), stacked by cause; None without gaps."""
    gaps = gaps[gaps["device"].astype(str) == str(device)]
    durations = gaps["duration_us"].to_numpy(float)
    durations = durations[durations > 0]
    if not len(durations):
        return None
    # bins and axis in log10(µs) on a linear axis: bar widths on a log axis would be distorted
    logs = np.log10(np.maximum(durations, 1e-3))
    edges = np.linspace(logs.min(), max(logs.max(), logs.min() + 1e-6), 41)
    centers = (edges[:-1] + edges[1:]) / 2
    fig = go.Figure()
    for gap_class, color in GAP_COLORS.items():
        own = gaps.loc[gaps["gap_class"] == gap_class, "duration_us"].to_numpy(float)
        counts, _ = np.histogram(np.log10(np.maximum(own[own > 0], 1e-3)), bins=edges)
        fig.add_bar(x=centers, y=counts, name=GAP_LABELS[gap_class], marker_color=color,
                    customdata=10 ** centers, hovertemplate="~%{customdata:.3g} µs: %{y} gaps<extra></extra>")
    fig.update_layout(base_layout("Idle gaps by length (kernel window, headline device)", height=320),
                      barmode="stack", bargap=0)
    fig.update_layout(margin={"l": 60})
    decades = np.arange(np.floor(edges[0]), np.ceil(edges[-1]) + 1)
    fig.update_xaxes(title_text="gap length (µs, log scale)", tickvals=decades,
                     ticktext=[f"{10 ** d:g}" for d in decades])
    fig.update_yaxes(title_text="gaps")
    if threshold_us:
        fig.add_vline(x=float(np.log10(threshold_us)), line_dash="dot",
                      annotation_text=f"launch-latency threshold {threshold_us:g} µs")
    return fig


def step_series_figure(steps: pd.DataFrame) -> go.Figure | None:
    """Per profiled step: wall length, GPU busy and host work (µs); None without steps."""
    if not len(steps):
        return None
    fig = go.Figure()
    for column, label, color in (("wall_us", "step length", SERIES_COLORS[0]), ("gpu_busy_us", "GPU busy", SERIES_COLORS[1]),
                                 ("host_work_us", "host work", SERIES_COLORS[2])):
        if column in steps.columns:
            fig.add_scatter(x=steps["step"].to_numpy(), y=steps[column].to_numpy(float), mode="lines+markers",
                              marker={"size": 3}, name=label, line={"color": color, "width": 1.5})
    fig.update_layout(base_layout("Per-step time", height=320), margin={"l": 60})
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="µs", rangemode="tozero")
    return fig


def busy_share_in_bins(busy_starts_us: np.ndarray, busy_ends_us: np.ndarray, edges_us: np.ndarray) -> np.ndarray:
    """Share (%) of each bin [edges[i], edges[i+1]) covered by the merged busy intervals (trace µs).

    The cumulative busy time is piecewise linear in t, so np.interp over the interval ends gives it
    exactly at every bin edge."""
    if not len(busy_starts_us):
        return np.zeros(len(edges_us) - 1)
    lengths = busy_ends_us - busy_starts_us
    before = np.concatenate([[0.0], np.cumsum(lengths)[:-1]])
    x = np.empty(2 * len(busy_starts_us))
    y = np.empty_like(x)
    x[0::2], x[1::2] = busy_starts_us, busy_ends_us
    y[0::2], y[1::2] = before, before + lengths
    cumulative = np.interp(edges_us, x, y)
    return 100.0 * np.diff(cumulative) / np.maximum(np.diff(edges_us), 1e-9)


def nvml_figure(nvml: pd.DataFrame, base_time_ns: int | None, busy: tuple[np.ndarray, np.ndarray] | None,
                origin_us: float) -> go.Figure | None:
    """NVML util with the trace-derived busy share of the same sample periods, SM clock and power, on
    one time axis (ms since the first GPU op; NVML's epoch µs aligned through base_time_ns). None
    without samples; without base_time_ns the busy share is left out, since it cannot be aligned."""
    if not len(nvml):
        return None
    series = {name: group.sort_values("epoch_us") for name, group in nvml.groupby("series")}
    if base_time_ns is not None:
        shift_us = base_time_ns / 1e3 + origin_us
        x_title = "ms since the first GPU op"
    else:
        shift_us = float(nvml["epoch_us"].min())
        x_title = "ms since the first NVML sample (trace not aligned: no baseTimeNanoseconds)"
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=("utilization (%)", "SM clock (MHz)", "power (W)"))
    util = series.get("util_pct")
    if util is not None:
        t_ms = (util["epoch_us"].to_numpy(float) - shift_us) / 1e3
        fig.add_scatter(x=t_ms, y=util["value"].to_numpy(float), mode="lines+markers", line_shape="hv",
                          name="NVML util (any kernel running in the sample; not SM utilization)", row=1, col=1,
                          line={"color": SERIES_COLORS[3]})
        if busy is not None and base_time_ns is not None and len(t_ms) > 1:
            # util sample i covers the period since sample i-1: compare like with like
            edges_us = util["epoch_us"].to_numpy(float) - base_time_ns / 1e3
            share = busy_share_in_bins(busy[0], busy[1], edges_us)
            fig.add_scatter(x=t_ms[1:], y=share, mode="lines+markers", line_shape="hv", row=1, col=1,
                              name="trace busy share, same periods", line={"color": SERIES_COLORS[1]})
    sm_active = series.get("gpm_sm_active_pct")
    if sm_active is not None:
        fig.add_scatter(x=(sm_active["epoch_us"].to_numpy(float) - shift_us) / 1e3, y=sm_active["value"].to_numpy(float),
                        mode="lines", line_shape="hv", name="GPM SM active (%)", row=1, col=1,
                        line={"color": SERIES_COLORS[4]})
    for row, (name, color) in enumerate((("sm_clock_mhz", SERIES_COLORS[0]), ("power_w", SERIES_COLORS[2])), start=2):
        frame = series.get(name)
        if frame is not None:
            fig.add_scatter(x=(frame["epoch_us"].to_numpy(float) - shift_us) / 1e3, y=frame["value"].to_numpy(float),
                              mode="lines", name=name, row=row, col=1, line={"color": color})
    fig.update_layout(base_layout("NVML samples beside the trace", height=520), margin={"l": 60})
    fig.update_xaxes(title_text=x_title, row=3, col=1)
    return fig


def _hist_bars(values: np.ndarray, name: str, color: str) -> go.Bar:
    edges = np.histogram_bin_edges(values, bins=min(60, max(5, int(np.sqrt(len(values))))))
    counts, _ = np.histogram(values, bins=edges)
    return go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, width=np.diff(edges), name=name, marker_color=color,
                  hovertemplate="%{x:.3g} ms: %{y}<extra></extra>")


def latency_figure(ttft_ms: np.ndarray, itl_ms: np.ndarray) -> go.Figure | None:
    """Distributions of time to first token and inter-token latency (ms); None when neither exists."""
    ttft_ms, itl_ms = ttft_ms[np.isfinite(ttft_ms)], itl_ms[np.isfinite(itl_ms)]
    if not len(ttft_ms) and not len(itl_ms):
        return None
    fig = make_subplots(rows=1, cols=2, subplot_titles=("TTFT (ms)", "inter-token latency (ms)"))
    if len(ttft_ms):
        fig.add_trace(_hist_bars(ttft_ms, "TTFT", SERIES_COLORS[0]), row=1, col=1)
    if len(itl_ms):
        fig.add_trace(_hist_bars(itl_ms, "ITL", SERIES_COLORS[2]), row=1, col=2)
    fig.update_layout(base_layout("Request latency", height=320), margin={"l": 60}, bargap=0, showlegend=False)
    fig.update_yaxes(title_text="count", row=1, col=1)
    return fig
