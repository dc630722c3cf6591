"""The rank-set page: a timeline row per rank (GPU busy, communication) and the communication picture.

Numbers come from the merged rank-set document (analysis/rankset.py); nothing is computed here
beyond placing intervals on the common clock for drawing.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go

from asyncbatch_prof.report.page import FigureSlot, Page
from asyncbatch_prof.report.style import base_layout
from asyncbatch_prof.report.timeline import merge_for_drawing

_COLORS = {"compute": "#1f77b4", "comm overlapped": "#2ca02c", "comm exposed": "#d62728", "wait": "#ff7f0e",
           "transfer": "#9467bd"}


def _lane(name: str, s: np.ndarray, e: np.ndarray, y: float, color: str, show: bool) -> go.Scatter:
    """One lane of horizontal segments (ms) drawn as a single line trace with gaps (small pages)."""
    s, e = merge_for_drawing(s, e, 0.0005 * float(e.max() - s.min())) if s.size else (s, e)
    xs = np.column_stack((s, e, np.full(s.size, np.nan))).ravel() / 1e3
    ys = np.column_stack((np.full(s.size, y), np.full(s.size, y), np.full(s.size, np.nan))).ravel()
    return go.Scatter(x=xs, y=ys, mode="lines", line={"color": color, "width": 10}, name=name, legendgroup=name,
                      showlegend=show, hoverinfo="skip")


def rank_timeline_figure(rs) -> go.Figure | None:
    """A row per rank on the common clock: GPU busy and communication (exposed vs overlapped), ms."""
    if not rs.ranks:
        return None
    t0 = min(p.lo_us + rs.shift_us[r] for r, p in rs.ranks.items())
    traces = []
    for i, (rank, p) in enumerate(rs.ranks.items()):
        shift = rs.shift_us[rank] - t0
        y = -float(i)
        traces.append(_lane("GPU busy", p.busy[0] + shift, p.busy[1] + shift, y + 0.15, _COLORS["compute"], i == 0))
        traces.append(_lane("comm exposed", p.comm[0] + shift, p.comm[1] + shift, y - 0.15, _COLORS["comm exposed"],
                            i == 0))
        traces.append(_lane("comm overlapped", p.comm_hidden[0] + shift, p.comm_hidden[1] + shift, y - 0.15,
                            _COLORS["comm overlapped"], i == 0))
    fig = go.Figure(traces, layout=base_layout("Timeline per rank (common clock)", 120 + 50 * len(rs.ranks)))
    fig.update_yaxes(tickvals=[-float(i) for i in range(len(rs.ranks))], ticktext=[f"rank {r}" for r in rs.ranks])
    fig.update_xaxes(title="ms from the first rank's window start")
    return fig


def comm_bars_figure(doc: dict[str, Any]) -> go.Figure | None:
    """Per-rank bars: compute-only time, communication overlapped and exposed, and collective wait vs
    transfer (ms)."""
    rows = doc.get("ranks", {})
    if not rows:
        return None
    labels = [f"rank {r}" for r in rows]

    def col(key: str) -> list[float | None]:
        return [None if row.get(key) is None else row[key] / 1e3 for row in rows.values()]

    compute = [None if w is None or c is None else max(w * (1 - i / 100) - c, 0.0) for w, i, c in
               zip(col("window_us"), [row["gpu_idle_pct"] or 0.0 for row in rows.values()], col("comm_us"))]
    bars = [go.Bar(name="compute (busy, not comm)", x=labels, y=compute, marker_color=_COLORS["compute"],
                   offsetgroup="time"),
            go.Bar(name="comm overlapped", x=labels, y=col("comm_overlapped_us"),
                   marker_color=_COLORS["comm overlapped"], offsetgroup="time"),
            go.Bar(name="comm exposed", x=labels, y=col("comm_exposed_us"), marker_color=_COLORS["comm exposed"],
                   offsetgroup="time")]
    if any(row.get("collective_wait_us") is not None for row in rows.values()):
        bars += [go.Bar(name="collective wait", x=labels, y=col("collective_wait_us"), marker_color=_COLORS["wait"],
                        offsetgroup="coll"),
                 go.Bar(name="collective transfer", x=labels, y=col("collective_transfer_us"),
                        marker_color=_COLORS["transfer"], offsetgroup="coll")]
    fig = go.Figure(bars, layout=base_layout("Communication per rank (ms)"))
    fig.update_layout(barmode="stack")
    return fig


def render_rank_set(rs, plotly_src: str | None = None) -> str:
    """The rank-set page as one HTML document."""
    doc = rs.doc
    page = Page(f"abprof rank set: {rs.source.path}", plotly_src)
    info = doc["rank_set"]
    page.add(f"<h1>Rank set: {html.escape(str(rs.source.path))}</h1><div class='sub'>{info['ranks']} ranks "
             f"({html.escape(info['source'])}); clock: {html.escape(str(info['clock']))}</div>")
    st = doc.get("straggler") or {}
    if st.get("rank") is not None:
        page.add(f"<p>Straggler: rank {st['rank']} started last in {st['started_last'].get(str(st['rank']), 0)} of "
                 f"{st['instances']} collectives; its engine thread was mostly in "
                 f"<code>{html.escape(str(st.get('top_phase')))}</code> while late.</p>")
    page.add("<h2>Timeline</h2>")
    page.add(page.figure(FigureSlot("rank_timeline", "Timeline per rank", rank_timeline_figure(rs), "no ranks")))
    page.add("<h2>Communication</h2>")
    page.add(page.figure(FigureSlot("comm_bars", "Communication per rank", comm_bars_figure(doc), "no ranks")))
    return page.render()


def write_rank_report(rs, path: Path, plotly_src: str | None = None) -> Path:
    """Write the rank-set page to ``path`` (atomically); return the path."""
    from asyncbatch_prof.runfolder import atomic_write_text

    atomic_write_text(Path(path), render_rank_set(rs, plotly_src))
    return Path(path)
