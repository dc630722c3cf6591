"""The report of one run: headline cards, configuration and the figures, in one HTML file."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from asyncbatch_prof import runfolder
from asyncbatch_prof.analysis.explain import hardware, hardware_line
from asyncbatch_prof.analysis.step_time import one_line
from asyncbatch_prof.report import cards
from asyncbatch_prof.report.figures import (gap_histogram_figure, idle_by_cause_figure, latency_figure, nvml_figure,
                                            step_series_figure)
from asyncbatch_prof.report.page import FigureSlot, Page
from asyncbatch_prof.report.run_view import RunView, inter_token_ms, load_run
from asyncbatch_prof.report.timeline import merge_for_drawing, timeline_figure
from asyncbatch_prof.report.waterfall import step_split_figure

FIGURES = [
    ("timeline", "Timeline"),
    ("idle_by_cause", "Idle time by cause"),
    ("gap_histogram", "Idle gaps by length"),
    ("steps", "Per-step time"),
    ("nvml", "NVML samples"),
    ("latency", "Request latency"),
]


def _device_ops(analysis: Any):
    ops = analysis.gpu_ops
    return ops[ops["device"].astype(str) == str(analysis.device)]


def _threshold_us(doc: dict) -> float | None:
    value = doc.get("launch_latency_threshold_us", (doc.get("trace") or {}).get("launch_latency_threshold_us"))
    return float(value) if value is not None else None


def _slot(kind: str, build, reason_if_none: str) -> FigureSlot:
    title = dict(FIGURES)[kind]
    figure = build()
    return FigureSlot(kind, title, figure, None if figure is not None else reason_if_none)


def build_figures(view: RunView) -> list[FigureSlot]:
    """Every figure of a run's report in page order, each drawn or absent with the reason."""
    a = view.analysis
    ttft = view.requests["ttft_ms"].to_numpy(float) if "ttft_ms" in view.requests.columns else np.empty(0)
    latency = _slot("latency", lambda: latency_figure(ttft, inter_token_ms(view.requests)),
                    "no per-request timings (requests.csv missing or empty)")
    nvml_reason = (view.run.get("nvml") or {}).get("reason") or "no NVML samples (nvml.csv missing or empty)"
    if a is None or a.device is None or not len(a.gpu_ops):
        reason = view.analysis_absent or "the trace has no GPU ops"
        slots = [FigureSlot(kind, title, None, reason) for kind, title in FIGURES[:4]]
        if a is not None and len(a.cpu_phases):  # a CPU run still shows what its engine thread did
            origin = float(a.cpu_phases["start_us"].min())
            slots[0] = _slot("timeline", lambda: timeline_figure(a, origin, "the first CPU phase"), reason)
        nvml = _slot("nvml", lambda: nvml_figure(view.nvml, None, None, 0.0), nvml_reason)
        return slots + [nvml, latency]
    ops = _device_ops(a)
    origin = float(ops["start_us"].min())
    busy = merge_for_drawing(ops["start_us"].to_numpy(float), ops["end_us"].to_numpy(float), 0.0)
    return [
        _slot("timeline", lambda: timeline_figure(a, origin), "nothing of non-zero length to draw"),
        _slot("idle_by_cause", lambda: idle_by_cause_figure(view.doc, a.phases),
              view.doc.get("absent", {}).get("host_bound_pct", "idle classes absent")),
        _slot("gap_histogram", lambda: gap_histogram_figure(a.gaps, a.device, _threshold_us(view.doc)),
              "no idle gaps on the device"),
        _slot("steps", lambda: step_series_figure(a.steps), "no abprof.step annotations in the trace"),
        _slot("nvml", lambda: nvml_figure(view.nvml, view.base_time_ns, busy, origin), nvml_reason),
        latency,
    ]


def header_html(view: RunView) -> str:
    """Title line: which run, which mode and engine, which device the numbers are for."""
    run = view.run
    device = getattr(view.analysis, "device", None)
    bits = [f"mode {run.get('mode', '?')}", f"engine {run.get('engine', '?')}"]
    if device is not None:
        bits.append(f"headline device {device}")
    gpu = (run.get("environment") or {}).get("gpu")
    if gpu:
        bits.append(str(gpu))
    return (f"<h1>abprof report · {html.escape(view.run_dir.name)}</h1>"
            f'<p class="sub">{html.escape(" · ".join(bits))}</p>')


def cards_html(doc: dict) -> str:
    """Headline cards, idle causes and NVML beside trace busy."""
    return (
        cards.integrity_banner(doc)
        + cards.throttle_banner(doc)
        + cards.spread_banner(doc)
        + '<div class="cards headline">' + "".join(cards.card_html(doc, c) for c in cards.HEADLINE) + "</div>"
        + "<h2>Why the GPU was idle</h2>"
        + '<div class="cards causes">' + "".join(cards.card_html(doc, c) for c in cards.IDLE_CAUSES) + "</div>"
        + "<h2>NVML beside the trace</h2>"
        + '<div class="cards nvml">' + cards.busy_beside_nvml_html(doc) + "</div>"
    )


def _step_split_html(page: Page, view: RunView) -> str:
    """Where a step's time goes, in one line and one chart (from the fresh analysis when there is one)."""
    fresh = getattr(view.analysis, "doc", None) or {}
    doc = fresh if "step_time" in fresh else view.doc
    line = one_line(doc)
    if line is None:
        return ""
    slot = FigureSlot("step_split", "Where a step's time goes", step_split_figure(doc.get("step_time")), "absent")
    hw = hardware_line(hardware(view.doc))
    beside = f'<p class="sub">{html.escape(hw)} (sampled over the whole run)</p>' if hw else ""
    return f'<p class="verdict">{html.escape(line)}</p>' + beside + page.figure(slot)


def render_report(view: RunView, plotly_src: str | None = None) -> str:
    """The report of one run as an HTML string (plotly.js embedded unless ``plotly_src`` names a copy to load)."""
    page = Page(f"abprof report · {view.run_dir.name}", plotly_src)
    page.add(header_html(view) + _step_split_html(page, view) + cards_html(view.doc))
    for slot in build_figures(view):
        page.add(f"<h2>{html.escape(slot.title)}</h2>" + page.figure(slot))
    page.add("<h2>Configuration and environment</h2>" + cards.config_html(view.run))
    return page.render()


def write_report(run_dir: Path, analysis: Any | None = None, out: Path | None = None,
                 plotly_src: str | None = None) -> Path:
    """Render ``run_dir/report.html`` (or ``out``) atomically and return its path.

    ``analysis`` is the TraceAnalysis of the run's trace; None re-analyzes ``trace.json.gz``."""
    view = load_run(Path(run_dir), analysis)
    path = Path(out) if out is not None else Path(run_dir) / runfolder.REPORT_HTML
    runfolder.atomic_write_text(path, render_report(view, plotly_src))
    return path
