"""The report over the real analyzer: a synthetic torch-format trace goes through analyze(), and the
report draws its frames (no stand-in analysis here)."""

from __future__ import annotations

import pytest
from report_synthetic import write_run

from asyncbatch_prof.report import write_comparison, write_report
from asyncbatch_prof.report.run_view import load_run


def test_report_real_analysis_of_trace(tmp_path):
    run_dir, _ = write_run(tmp_path / "run", num_steps=6, kernels_per_step=10)
    view = load_run(run_dir)
    ops = view.analysis.gpu_ops
    assert len(ops) == 60 and str(view.analysis.device) == "0"
    assert len(view.analysis.gaps) > 0
    html = write_report(run_dir).read_text()
    for kind in ("timeline", "idle_by_cause", "gap_histogram", "steps", "nvml", "latency"):
        assert f'<div class="fig plot" id="fig-' in html and f'data-figure="{kind}"></div>' in html, kind


def test_report_real_analysis_comparison(tmp_path):
    a, _ = write_run(tmp_path / "sync", num_steps=4, kernels_per_step=5)
    b, _ = write_run(tmp_path / "async", num_steps=4, kernels_per_step=5, mode="async", seed=2)
    html = write_comparison([a, b], tmp_path / "compare.html").read_text()
    assert html.count('data-figure="timeline"></div>') == 2


def test_report_real_analysis_aligns_nvml_with_trace_busy(tmp_path):
    from asyncbatch_prof.report.run_report import build_figures

    run_dir, _ = write_run(tmp_path / "run", num_steps=6, kernels_per_step=10)
    view = load_run(run_dir)
    assert view.base_time_ns == 1_700_000_000_000_000_000  # the trace's baseTimeNanoseconds
    nvml = next(s for s in build_figures(view) if s.kind == "nvml").figure
    busy = next(t for t in nvml.data if t.name == "trace busy share, same periods")
    # independently: per NVML period, overlap of each (merged) kernel interval, summed
    util = view.nvml[view.nvml.series == "util_pct"].sort_values("epoch_us")["epoch_us"].to_numpy() - 1.7e15
    ops = view.analysis.gpu_ops.sort_values("start_us")
    assert (ops.start_us.to_numpy()[1:] >= ops.end_us.to_numpy()[:-1]).all()  # one stream, no overlap to merge
    expected = [100 * sum(max(0.0, min(e, b) - max(s, a)) for s, e in zip(ops.start_us, ops.end_us)) / (b - a)
                for a, b in zip(util[:-1], util[1:])]
    assert list(busy.y) == pytest.approx(expected, abs=1e-6)
    # the samples reach 500 µs past the kernels at each end, longer than one period: those periods are idle
    assert busy.y[0] == 0.0 and busy.y[-1] == 0.0 and min(busy.y[1:-1]) > 5.0


def test_report_real_analysis_cpu_run_shows_cpu_lanes_only(tmp_path):
    from asyncbatch_prof.report.run_report import build_figures

    run_dir, _ = write_run(tmp_path / "cpu", num_steps=5, kernels_per_step=0, nvml=False,
                           metrics={"tokens_per_s": 10.0}, absent={"gpu_idle_pct": "no GPU activity in trace"})
    slots = {s.kind: s for s in build_figures(load_run(run_dir))}
    ticks = list(slots["timeline"].figure.layout.yaxis.ticktext)
    assert ticks[:2] == ["CPU schedule", "CPU prepare"] and not any(t.startswith("GPU") for t in ticks)
    assert slots["timeline"].figure.layout.title.text.startswith("Timeline: first 25 of 25 CPU phase segments")
    assert slots["timeline"].figure.layout.xaxis.title.text == "ms since the first CPU phase"
    assert slots["gap_histogram"].figure is None and slots["gap_histogram"].absent == "the trace has no GPU ops"
    assert slots["nvml"].absent == "no NVML here"
    html = write_report(run_dir).read_text()
    assert 'data-metric="gpu_idle_pct.step" data-absent="no GPU activity in trace"' in html
