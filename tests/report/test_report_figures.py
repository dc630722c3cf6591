"""Figures draw what the analysis says: exact busy shares, thinning that only merges what a screen cannot
separate, a bounded slice of a large trace, and absent figures that say why."""

from __future__ import annotations

import numpy as np
import pandas as pd
from report_synthetic import plan, synthetic_analysis

from asyncbatch_prof.report.figures import busy_share_in_bins, nvml_figure
from asyncbatch_prof.report.timeline import MAX_SLICE_OPS, choose_slice, merge_for_drawing, timeline_figure


def test_report_busy_share_in_bins_is_exact():
    starts, ends = np.array([0.0, 10.0, 25.0]), np.array([5.0, 20.0, 26.0])
    edges = np.array([0.0, 10.0, 20.0, 30.0, 40.0])
    np.testing.assert_allclose(busy_share_in_bins(starts, ends, edges), [50.0, 100.0, 10.0, 0.0])
    rng = np.random.default_rng(0)
    s = np.sort(rng.uniform(0, 1000, 50))
    s, e = merge_for_drawing(s, s + rng.uniform(0, 30, 50), 0.0)
    grid = np.arange(0, 1100, 0.5)
    covered = ((grid[:, None] >= s) & (grid[:, None] < e)).any(axis=1)
    brute = covered.reshape(-1, 200).mean(axis=1) * 100  # bins of 100 µs sampled every 0.5 µs
    np.testing.assert_allclose(busy_share_in_bins(s, e, np.arange(0, 1101, 100.0)), brute, atol=1.0)


def test_report_merge_for_drawing_only_merges_close_segments():
    s, e = merge_for_drawing(np.array([0.0, 3.0, 1.0, 10.0]), np.array([2.0, 4.0, 2.5, 11.0]), 0.6)
    np.testing.assert_array_equal(s, [0.0, 10.0])
    np.testing.assert_array_equal(e, [4.0, 11.0])
    s, e = merge_for_drawing(np.array([0.0, 3.0]), np.array([2.0, 4.0]), 0.0)
    assert len(s) == 2  # a 1 µs gap stays a gap at zero tolerance


def test_report_timeline_slice_is_bounded_on_a_large_trace():
    frames = plan(num_steps=60, kernels_per_step=1000)
    analysis = synthetic_analysis(frames, {"metrics": {}, "absent": {}})
    sl = choose_slice(analysis.steps, analysis.gpu_ops["start_us"].to_numpy())
    assert sl.label == "steps 0–19 of 60 profiled, first 4 shown (double-click: all)"
    assert sl.start_us < sl.view_end_us == analysis.steps["end_us"].iloc[3] < sl.end_us
    inside = analysis.gpu_ops[(analysis.gpu_ops.start_us >= sl.start_us) & (analysis.gpu_ops.start_us < sl.end_us)]
    assert len(inside) <= MAX_SLICE_OPS
    fig = timeline_figure(analysis, float(analysis.gpu_ops.start_us.min()))
    points = sum(len(t.x) for t in fig.data)
    assert points < 3 * 4000 * len(fig.data)  # thinned to about a screen's width per lane
    stream = next(t for t in fig.data if t.name == "GPU stream 7")
    assert stream.text is None  # too many segments to name each one


def test_report_timeline_lanes_cpu_above_gpu():
    frames = plan(num_steps=3, kernels_per_step=5)
    analysis = synthetic_analysis(frames, {"metrics": {}, "absent": {}})
    fig = timeline_figure(analysis, 0.0)
    ticks = list(fig.layout.yaxis.ticktext)
    assert ticks[:3] == ["CPU step", "CPU schedule", "CPU prepare"]
    assert ticks[-3:] == ["GPU stream 7", "GPU busy (merged)", "GPU idle (by cause)"]
    stream = next(t for t in fig.data if t.name == "GPU stream 7")
    assert len(stream.x) == 3 * 15 and stream.text[0].startswith("gemm_kernel_")


def test_report_nvml_without_samples_or_alignment():
    assert nvml_figure(pd.DataFrame(columns=["epoch_us", "series", "value"]), 0, None, 0.0) is None
    nvml = pd.DataFrame({"epoch_us": [1e6, 2e6, 3e6], "series": "util_pct", "value": [0.0, 100.0, 50.0]})
    fig = nvml_figure(nvml, None, (np.array([0.0]), np.array([1.0])), 0.0)
    assert [t.name for t in fig.data] == ["NVML util (any kernel running in the sample; not SM utilization)"]
    assert "not aligned" in fig.layout.xaxis3.title.text
    fig = nvml_figure(nvml, 0, (np.array([1e6]), np.array([1.5e6])), 0.0)
    busy = next(t for t in fig.data if t.name == "trace busy share, same periods")
    np.testing.assert_allclose(busy.y, [50.0, 0.0])


def test_report_idle_by_cause_lumps_small_phases_and_keeps_the_sum():
    from asyncbatch_prof.report.figures import idle_by_cause_figure

    phases = pd.DataFrame({"phase": [f"aten::op{i}" for i in range(10)], "host_bound_pct": np.arange(10, 0, -1.0)})
    doc = {"metrics": {"host_bound_pct": {"step": 55.0}, "launch_latency_pct": {"step": 1.0}}, "absent": {}}
    fig = idle_by_cause_figure(doc, phases)
    names = [t.name for t in fig.data]
    assert names[:5] == [f"host-bound: aten::op{i}" for i in range(5)]
    assert names[5:] == ["host-bound: 5 other phases", "idle: launch latency"]
    assert sum(t.x[0] for t in fig.data[:6]) == 55.0
    assert idle_by_cause_figure({"metrics": {}, "absent": {"host_bound_pct": "no GPU"}}, phases) is None


def test_report_of_100k_kernels_stays_under_10_mb(tmp_path):
    from report_synthetic import write_run

    from asyncbatch_prof.report.page import plotly_js
    from asyncbatch_prof.report.run_report import render_report
    from asyncbatch_prof.report.run_view import load_run

    run_dir, small = write_run(tmp_path / "run", num_steps=2, kernels_per_step=2)
    big = synthetic_analysis(plan(num_steps=500, kernels_per_step=200), small.doc)
    assert len(big.gpu_ops) == 100_000 and len(big.gaps) > 50_000
    html = render_report(load_run(run_dir, analysis=big))
    assert len(html.encode()) < 10 * 1024 * 1024
    assert html.count(plotly_js()) == 1
    assert len(html) - len(plotly_js()) < 1.5e6  # all but plotly.js: the timeline thinned, histograms binned
