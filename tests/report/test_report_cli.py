"""`abprof report` and `abprof compare` at the command line: files written, deltas with direction, refusals."""

from __future__ import annotations

import json

from asyncbatch_prof.report.compare import delta, summary_line


def test_report_cli_writes_report_html(cli, runs, tmp_path):
    result = cli("report", runs["sync"])
    assert result.exit_code == 0, result.output
    html = (runs["sync"] / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "Plotly.newPlot" in html
    assert 'data-figure="timeline"' in html
    out = tmp_path / "elsewhere" / "r.html"
    result = cli("report", runs["sync"], "--out", out)
    assert result.exit_code == 0, result.output
    assert out.read_text() == html


def test_report_cli_refuses_incomplete_run_in_one_line(cli, runs):
    (runs["sync"] / "INCOMPLETE").write_text("killed during capture")
    result = cli("report", runs["sync"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"abprof: error: run folder {runs['sync']} is incomplete: killed during capture"]
    assert not (runs["sync"] / "report.html").exists()


def test_report_cli_bad_folder(cli, tmp_path):
    result = cli("report", tmp_path / "nope")
    assert result.exit_code == 2 and "not a run folder" in result.output
    assert "Traceback" not in result.output


def test_compare_cli_table_has_deltas_with_direction(cli, runs):
    result = cli("compare", runs["sync"], runs["async"])
    assert result.exit_code == 0, result.output
    out = result.output
    row = next(line for line in out.splitlines() if line.lstrip("│ ").startswith("GPU idle (step window)"))
    assert "24.1%" in row and "1.8%" in row and "-22.3 points (better)" in row
    tokens = next(line for line in out.splitlines() if "output tokens/s" in line)
    assert "+31% (better)" in tokens
    overlap = next(line for line in out.splitlines() if "CPU/GPU overlap" in line)
    assert "+93.2 points (better)" in overlap
    joules = next(line for line in out.splitlines() if "energy per token" in line)
    assert joules.count("absent") == 2
    page = runs["sync"].parent / "compare.html"
    assert f"comparison: {page}" in out
    html = page.read_text()
    assert html.count('data-figure="timeline"') == 2
    assert '<span class="better">-22.3 points</span>' in html


def test_compare_cli_refuses_different_workloads_unless_forced(cli, runs, tmp_path):
    result = cli("compare", runs["sync"], runs["other"], "--out", tmp_path / "cmp")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "abprof: error: runs have different workloads, so their numbers do not compare: workload 'num_requests' is 8 "
        f"in {runs['sync']} but 16 in {runs['other']} (--force to compare anyway)"]
    assert not (tmp_path / "cmp").exists()
    result = cli("compare", runs["sync"], runs["other"], "--out", tmp_path / "cmp", "--force")
    assert result.exit_code == 0, result.output
    assert "workloads differ (--force): workload 'num_requests'" in result.output
    assert "Compared with --force although the workloads differ" in (tmp_path / "cmp" / "compare.html").read_text()


def test_compare_cli_needs_two_runs(cli, runs):
    result = cli("compare", runs["sync"])
    assert result.exit_code == 2 and "at least two run folders" in result.output


def test_compare_delta_directions():
    assert delta("gpu_idle_pct", "idle", 24.1, 1.8).direction == "better"
    assert delta("tokens_per_s", "tok/s", 1000.0, 900.0).change == "-10%"
    assert delta("tokens_per_s", "tok/s", 1000.0, 900.0).direction == "worse"
    assert delta("ttft_ms_p99", "ttft", 10.0, 12.0).direction == "worse"
    assert delta("overlap_pct", "overlap", 50.0, 50.01).direction == "same"
    assert delta("overlap_pct", "overlap", None, 50.0).direction is None
    d = delta("gpu_idle_pct.step", "GPU idle", 24.1, 1.8)
    assert summary_line(d) == "GPU idle 24.1% → 1.8%, -22.3 points (better)"


def test_compare_workload_missing_is_refused(cli, runs):
    run_json = runs["async"] / "run.json"
    run = json.loads(run_json.read_text())
    del run["workload"]
    run_json.write_text(json.dumps(run))
    result = cli("compare", runs["sync"], runs["async"])
    assert result.exit_code == 2 and "has no workload in run.json" in result.output
