"""Issue 15 items 4-5 on `abprof analyze`: never overwrite a run, refuse an incomplete one, one line for bad
options, absent (never 0) host-bound idle without launch records, names printed literally."""

from __future__ import annotations

import json

import pytest

from test_analysis_synthetic import _three_gaps


def _one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("abprof: error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def _run_folder(tmp_path, trace_builder, *, complete=True):
    run = tmp_path / "run"
    run.mkdir()
    _three_gaps(trace_builder()).write(run / "trace.json.gz")
    original = {"schema_version": 1, "metrics": {"tokens_per_s": 1234.5, "clock_throttled": True},
                "absent": {}, "serving": {"requests": 8}, "nvml": {"available": True}}
    (run / "metrics.json").write_text(json.dumps(original))
    (run / "run.json").write_text(json.dumps({"status": "complete" if complete else "running"}))
    if not complete:
        (run / "INCOMPLETE").write_text("SIGTERM while measuring")
    return run, json.dumps(original)


# --- item 4: a run's files are never overwritten -------------------------------------------------------

def test_analyze_in_run_folder_leaves_the_runs_metrics_alone(cli, tmp_path, trace_builder):
    run, before = _run_folder(tmp_path, trace_builder)
    result = cli("analyze", run / "trace.json.gz")
    assert result.exit_code == 0, result.output
    assert (run / "metrics.json").read_text() == before
    assert "is a run folder" in result.output and "wrote" not in result.output
    result = cli("analyze", run / "trace.json.gz", "--json")
    assert result.exit_code == 0 and (run / "metrics.json").read_text() == before
    out = tmp_path / "elsewhere"
    result = cli("analyze", run / "trace.json.gz", "--out", out)
    assert result.exit_code == 0 and (out / "metrics.json").exists()
    assert (run / "metrics.json").read_text() == before


def test_analyze_out_naming_a_run_folder_is_refused(cli, tmp_path, trace_builder):
    run, before = _run_folder(tmp_path, trace_builder)
    trace = _three_gaps(trace_builder()).write(tmp_path / "t.json.gz")
    result = cli("analyze", trace, "--out", run)
    assert result.exit_code == 2 and "run folder" in _one_error_line(result)
    assert (run / "metrics.json").read_text() == before


def test_analyze_refuses_a_trace_of_an_incomplete_run(cli, tmp_path, trace_builder):
    run, before = _run_folder(tmp_path, trace_builder, complete=False)
    for extra in ([], ["--out", tmp_path / "o"]):
        result = cli("analyze", run / "trace.json.gz", *extra)
        assert result.exit_code == 2 and "incomplete" in _one_error_line(result)
        assert not (tmp_path / "o").exists()
    assert (run / "metrics.json").read_text() == before


# --- item 5: bad options ------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "-1", "1e999"])
def test_threshold_must_be_finite(cli, tmp_path, trace_builder, value):
    path = _three_gaps(trace_builder()).write(tmp_path / "t.json.gz")
    result = cli("analyze", path, "--threshold-us", value, "--out", tmp_path / "o")
    assert result.exit_code == 2 and "threshold" in _one_error_line(result)
    assert not (tmp_path / "o").exists()


def test_out_naming_an_existing_file_is_refused(cli, tmp_path, trace_builder):
    path = _three_gaps(trace_builder()).write(tmp_path / "t.json.gz")
    result = cli("analyze", path, "--out", path)
    assert result.exit_code == 2 and "existing file" in _one_error_line(result)


def test_out_name_too_long_is_one_line(cli, tmp_path, trace_builder):
    path = _three_gaps(trace_builder()).write(tmp_path / "t.json.gz")
    result = cli("analyze", path, "--out", tmp_path / ("x" * 300))
    assert result.exit_code == 2 and "too long" in _one_error_line(result)


# --- item 4: host-bound idle without launch records is absent with the reason ----------------------------

def test_no_launch_records_make_gap_classes_absent(tmp_path, trace_builder):
    from asyncbatch_prof.analysis import analyze

    tb = _three_gaps(trace_builder())
    tb.events = [e for e in tb.events if e.get("cat") not in ("cuda_runtime", "ac2g")]
    ta = analyze(tb.write(tmp_path / "t.json.gz"))
    assert ta.gpu_idle_pct == pytest.approx(82.5)  # idle is still known: 165 of 200 µs
    for name in ("host_bound_pct", "launch_latency_pct", "dependency_pct"):
        assert name not in ta.doc["metrics"] and "no launch records" in ta.doc["absent"][name]
        assert getattr(ta, name) is None
    with_launches = analyze(_three_gaps(trace_builder()).write(tmp_path / "u.json.gz"))
    assert with_launches.host_bound_pct == pytest.approx(35.0)


# --- item 5: names holding markup or escape sequences print literally ----------------------------------------

NASTY = ["[/bold]", "[/y]", "[param|x]", "[link=https://evil.example]click[/link]", "\x1b]8;;https://e\x07x",
         "\x1b[2J\x1b[31mred", "bell\x07", "\x9b31m"]


@pytest.mark.parametrize("name", NASTY)
def test_phase_names_with_markup_or_escapes_print_literally(cli, tmp_path, trace_builder, name):
    tb = trace_builder()
    tb.launch(5, 2, [(10, 10)])
    tb.launch(60, 4, [(100, 10)])
    tb.cpu(name, 32, 38, cat="user_annotation")
    path = tb.write(tmp_path / "t.json.gz")
    result = cli("analyze", path, "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output and "\x9b" not in result.output
    from asyncbatch_prof.textsafe import printable

    assert printable(name) in result.output, result.output
