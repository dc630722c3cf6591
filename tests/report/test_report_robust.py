"""Issue 15 item 5 on `abprof report` / `abprof compare`: one line and exit 2 for bad input, never a traceback,
never an overwritten run file; degenerate traces (one kernel, equal timestamps) render."""

from __future__ import annotations

import gzip
import json

import pytest
from report_synthetic import write_run


def _one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("abprof: error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_report_of_a_trace_with_one_kernel(cli, tmp_path):
    run, _ = write_run(tmp_path / "one", num_steps=1, kernels_per_step=1)
    result = cli("report", run)
    assert result.exit_code == 0, result.output
    assert (run / "report.html").stat().st_size > 0


def test_report_of_a_trace_with_equal_timestamps(cli, tmp_path):
    run, _ = write_run(tmp_path / "eq")
    doc = json.loads(gzip.decompress((run / "trace.json.gz").read_bytes()))
    for event in doc["traceEvents"]:
        event["ts"], event["dur"] = 1000.0, 0
    (run / "trace.json.gz").write_bytes(gzip.compress(json.dumps(doc).encode()))
    result = cli("report", run)
    assert result.exit_code == 0, result.output
    assert "nothing of non-zero length to draw" in (run / "report.html").read_text()


@pytest.mark.parametrize("csv, column, bad", [("requests.csv", "prompt_len", "abc"), ("requests.csv", "ttft_ms", "x1"),
                                              ("requests.csv", "token_times_s", "0.1 oops"),
                                              ("nvml.csv", "value", "zzz"), ("nvml.csv", "epoch_us", "then")])
def test_non_numeric_csv_cell_is_one_line(cli, tmp_path, csv, column, bad):
    import pandas as pd

    run, _ = write_run(tmp_path / "r")
    frame = pd.read_csv(run / csv, dtype=str, keep_default_na=False)
    frame.loc[1, column] = bad
    frame.to_csv(run / csv, index=False)
    result = cli("report", run)
    assert result.exit_code == 2, result.output
    line = _one_error_line(result)
    assert csv in line and column in line


@pytest.mark.parametrize("target", ["run.json", "metrics.json", "trace.json.gz", "requests.csv"])
def test_report_out_never_replaces_a_run_file(cli, tmp_path, target):
    run, _ = write_run(tmp_path / "r")
    before = (run / target).read_bytes()
    result = cli("report", run, "--out", run / target)
    assert result.exit_code == 2 and "not an HTML page" in _one_error_line(result)
    assert (run / target).read_bytes() == before


def test_report_out_may_replace_an_html_page_but_not_a_folder(cli, tmp_path):
    run, _ = write_run(tmp_path / "r")
    page = tmp_path / "page.html"
    page.write_text("old")
    assert cli("report", run, "--out", page).exit_code == 0 and page.read_text() != "old"
    result = cli("report", run, "--out", tmp_path)
    assert result.exit_code == 2 and "existing folder" in _one_error_line(result)


def test_compare_out_existing_file_and_long_name(cli, tmp_path):
    a, _ = write_run(tmp_path / "a")
    b, _ = write_run(tmp_path / "b", seed=1)
    before = (a / "run.json").read_bytes()
    result = cli("compare", a, b, "--out", a / "run.json")
    assert result.exit_code == 2 and "is a file" in _one_error_line(result)
    assert (a / "run.json").read_bytes() == before
    result = cli("compare", a, b, "--out", tmp_path / ("y" * 300))
    assert result.exit_code == 2 and "too long" in _one_error_line(result)


def test_run_names_with_markup_print_literally(cli, tmp_path):
    a, _ = write_run(tmp_path / "[" / "bold]a[param|x]")
    b, _ = write_run(tmp_path / "[link=https:" / "x]b\x1b]0;t\x07", seed=1)
    result = cli("compare", a, b, "--out", tmp_path / "c.html")
    assert result.exit_code == 0, result.output
    assert "bold]a[param|x]" in result.output and "x]b\\x1b]0;t\\x07" in result.output.replace("\n", "")
    assert "\x1b" not in result.output
    result = cli("report", a)
    assert result.exit_code == 0 and "[param|x]" in result.output
