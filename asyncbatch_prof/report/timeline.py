"""The zoomable timeline of a slice of steps: CPU phase lanes above GPU stream lanes, the merged busy
lane, and the idle gaps coloured by cause.

Only the drawing is thinned: segments closer than about a pixel are merged before they are sent to
the browser (``merge_for_drawing``), so a 100k-kernel trace stays light. No number on the page comes
from the thinned segments.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from asyncbatch_prof.report.style import GAP_COLORS, GAP_LABELS, PHASE_ORDER, phase_color, base_layout

MAX_SLICE_OPS = 20_000  # GPU ops drawn at most; a slice of steps stops before this many
MAX_SLICE_STEPS = 40
MAX_CPU_SEGMENTS = 300  # without GPU ops: about 40 steps of the engine's phases
FIRST_VIEW_OPS = 1_000  # the same for a trace without steps
FIRST_VIEW_STEPS = 4  # the first view shows a few steps, where CPU phases are wide enough to see
MIN_DRAWN_WIDTH = 1 / 800  # of the first view: shorter CPU phases are widened to about a pixel, or they vanish
DRAW_RESOLUTION = 4_000  # segments per lane width worth keeping apart (about a wide screen's pixels)
NAMED_SEGMENTS = 3_000  # above this many segments in a lane, hover shows lane and time only (file size)


@dataclass(frozen=True, slots=True)
class Slice:
    """The drawn part of the trace, in trace µs, and a sentence saying which part it is."""

    start_us: float
    end_us: float
    label: str
    view_end_us: float | None = None


def choose_slice(steps: pd.DataFrame, op_starts_us: np.ndarray) -> Slice:
    """The first profiled steps holding at most MAX_SLICE_OPS GPU ops (at least one step), or, without
    steps, the first MAX_SLICE_OPS ops of the kernel window. Times in trace µs."""
    op_starts_us = np.sort(op_starts_us)
    if len(steps):
        steps = steps.sort_values("start_us")
        first = float(steps["start_us"].iloc[0])
        ends = steps["end_us"].to_numpy(float)
        ops_before_end = np.searchsorted(op_starts_us, ends, side="right") - np.searchsorted(op_starts_us, first)
        fits = int(np.searchsorted(ops_before_end, MAX_SLICE_OPS, side="right"))
        count = max(1, min(fits, MAX_SLICE_STEPS))
        last = steps.iloc[count - 1]
        label = f"steps {int(steps['step'].iloc[0])}–{int(last['step'])} of {len(steps)} profiled"
        view_end = None
        if count > FIRST_VIEW_STEPS:
            view_end = float(steps["end_us"].iloc[FIRST_VIEW_STEPS - 1])
            label += f", first {FIRST_VIEW_STEPS} shown (double-click: all)"
        return Slice(first, float(last["end_us"]), label, view_end)
    if not len(op_starts_us):
        return Slice(0.0, 0.0, "no GPU ops")
    stop = min(len(op_starts_us), MAX_SLICE_OPS) - 1
    end = op_starts_us[stop] if stop + 1 < len(op_starts_us) else op_starts_us[-1]
    label = f"first {stop + 1:,} of {len(op_starts_us):,} GPU ops"
    view_end = None
    if stop + 1 > FIRST_VIEW_OPS:
        view_end = float(op_starts_us[FIRST_VIEW_OPS])
        label += f", first {FIRST_VIEW_OPS:,} shown (double-click: all)"
    return Slice(float(op_starts_us[0]), float(end), label, view_end)


def cpu_slice(cpu_phases: pd.DataFrame) -> Slice:
    """Without GPU ops (a CPU run) the analysis has no steps: the first MAX_CPU_SEGMENTS phase segments."""
    phases = cpu_phases.sort_values("start_us")
    count = min(len(phases), MAX_CPU_SEGMENTS)
    end = float(phases["end_us"].iloc[:count].max())
    return Slice(float(phases["start_us"].iloc[0]), end, f"first {count:,} of {len(phases):,} CPU phase segments")


def merge_for_drawing(starts: np.ndarray, ends: np.ndarray, min_gap: float) -> tuple[np.ndarray, np.ndarray]:
    """Merge intervals that overlap or sit closer than ``min_gap`` (same unit as the inputs), for drawing
    only: the merged segments are what a screen could show, not what the numbers use."""
    if not len(starts):
        return starts, ends
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], np.maximum.accumulate(ends[order])
    breaks = starts[1:] > ends[:-1] + min_gap
    first = np.concatenate([[True], breaks])
    last = np.concatenate([breaks, [True]])
    return starts[first], ends[last]


def _segments(starts: np.ndarray, ends: np.ndarray, lane: float) -> tuple[np.ndarray, np.ndarray]:
    """Interleave (start, end, NaN) so one line trace draws many separate segments."""
    x = np.empty(len(starts) * 3)
    x[0::3], x[1::3], x[2::3] = starts, ends, np.nan
    y = np.full(len(x), lane, dtype=float)
    y[2::3] = np.nan
    return x, y


def _lane_trace(name: str, starts, ends, lane: float, color: str, origin_us: float, span_us: float,
                names: np.ndarray | None = None, min_width_us: float = 0.0) -> go.Scatter:
    raw = len(starts)
    starts, ends = np.asarray(starts, float), np.asarray(ends, float)
    if names is None or raw > NAMED_SEGMENTS:
        starts, ends = merge_for_drawing(starts, ends, span_us / DRAW_RESOLUTION)
        names = None
    # only CPU phases get a minimum width: widened GPU ops or gaps would paint busy or idle time that is not there
    ends = np.maximum(ends, starts + min_width_us)
    x, y = _segments((starts - origin_us) / 1e3, (ends - origin_us) / 1e3, lane)
    trace = go.Scatter(x=x, y=y, mode="lines", name=name, line={"color": color, "width": 12},
                         legendgroup=name, showlegend=False, hovertemplate=f"{name}<br>%{{x:.3f}} ms<extra></extra>")
    if names is not None:
        text = np.repeat(np.asarray([str(n)[:60] for n in names], dtype=object), 3)
        trace.update(text=text, hovertemplate=f"{name}<br>%{{text}}<br>%{{x:.3f}} ms<extra></extra>")
    return trace


def _clip(frame: pd.DataFrame, sl: Slice) -> pd.DataFrame:
    if not len(frame):
        return frame
    return frame[(frame["end_us"] > sl.start_us) & (frame["start_us"] < sl.end_us)]


def timeline_figure(analysis, origin_us: float, origin_label: str = "the first GPU op") -> go.Figure | None:
    """Timeline of a slice of steps for the analysis' headline device; x in ms since ``origin_us``
    (the first GPU op of the trace), one lane per CPU phase, per GPU stream, merged busy, and idle.
    A trace without GPU ops gets the CPU lanes only; None when no lane has anything of non-zero length."""
    device = str(analysis.device)
    ops = analysis.gpu_ops[analysis.gpu_ops["device"].astype(str) == device]
    gaps = analysis.gaps[analysis.gaps["device"].astype(str) == device]
    if len(ops) or not len(analysis.cpu_phases):
        sl = choose_slice(analysis.steps, ops["start_us"].to_numpy(float))
    else:
        sl = cpu_slice(analysis.cpu_phases)
    span = max(sl.end_us - sl.start_us, 1e-3)
    view_end = sl.view_end_us if sl.view_end_us is not None else sl.end_us
    min_width = (view_end - sl.start_us) * MIN_DRAWN_WIDTH
    ops, gaps, phases = _clip(ops, sl), _clip(gaps, sl), _clip(analysis.cpu_phases, sl)
    traces, ticks = [], []

    def lane(label: str) -> float:
        ticks.append(label)
        return float(-len(ticks))

    names_in_order = sorted(phases["phase"].unique(), key=lambda p: (PHASE_ORDER.get(_short(p), 99), str(p)))
    for phase in names_in_order:
        rows = phases[phases["phase"] == phase]
        traces.append(_lane_trace(f"CPU {_short(phase)}", rows["start_us"], rows["end_us"], lane(f"CPU {_short(phase)}"),
                                  phase_color(_short(phase)), origin_us, span, min_width_us=min_width))
    for stream in sorted(ops["stream"].unique(), key=str):
        rows = ops[ops["stream"] == stream]
        traces.append(_lane_trace(f"GPU stream {stream}", rows["start_us"], rows["end_us"],
                                  lane(f"GPU stream {stream}"), "#2ca02c", origin_us, span, rows["name"].to_numpy()))
    if len(ops):
        traces += _gpu_summary_lanes(ops, gaps, lane, origin_us, span)
    if not ticks:  # every op and phase has zero length (equal timestamps): nothing to draw
        return None
    fig = go.Figure(traces)
    height = 130 + 30 * len(ticks)
    fig.update_layout(base_layout(f"Timeline: {sl.label}; drag to zoom", height=height))
    # the legend sits a fixed number of pixels under the axis title, whatever the number of lanes
    fig.update_layout(margin={"b": 90}, legend={"yanchor": "top", "y": -62 / (height - 40 - 90)})
    fig.update_yaxes(tickvals=[-(i + 1) for i in range(len(ticks))], ticktext=ticks, range=[-len(ticks) - 0.7, -0.3],
                     fixedrange=True, showgrid=False)
    fig.update_xaxes(title_text=f"ms since {origin_label}", range=[(sl.start_us - origin_us) / 1e3,
                                                                  (view_end - origin_us) / 1e3])
    return fig


def _gpu_summary_lanes(ops, gaps, lane, origin_us: float, span: float) -> list[go.Scatter]:
    """The merged busy lane and the idle lane coloured by cause."""
    busy_s, busy_e = merge_for_drawing(ops["start_us"].to_numpy(float), ops["end_us"].to_numpy(float), 0.0)
    traces = [_lane_trace("GPU busy (merged)", busy_s, busy_e, lane("GPU busy (merged)"), "#1b5e20", origin_us, span)]
    idle_lane = lane("GPU idle (by cause)")
    for gap_class, color in GAP_COLORS.items():
        rows = gaps[gaps["gap_class"] == gap_class]
        trace = _lane_trace(GAP_LABELS[gap_class], rows["start_us"], rows["end_us"], idle_lane, color, origin_us, span)
        trace.update(showlegend=True)
        traces.append(trace)
    return traces


def _short(phase: str) -> str:
    return str(phase).removeprefix("abprof.")
