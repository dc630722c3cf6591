"""`abprof run --repeats N` on the CPU: the folder layout, the alternation of modes, medians of the repeats,
the spread in the summary and in compare (with the noise verdict), and the gate reading the repeats."""

from __future__ import annotations

import html
import json
import statistics

import pytest

from asyncbatch_prof import runfolder as rf
from asyncbatch_prof.analysis.repeats import median_interval, merge_repeats, representative, spread_warnings

SMALL = ("--requests", "3", "--prompt-len", "uniform:8:16", "--output-len", "fixed:4", "--engine-warmup-steps", "1",
         "--max-batch-tokens", "64", "--warmup-runs", "0", "--profile-steps", "all", "--warmup-steps", "1")


def _invoke(*args: str):
    from typer.testing import CliRunner

    from asyncbatch_prof.cli import app

    return CliRunner().invoke(app, list(args), terminal_width=200)


@pytest.fixture(scope="module")
def repeated(tmp_path_factory):
    out = tmp_path_factory.mktemp("repeats") / "out"
    result = _invoke("run", "--mode", "both", "--repeats", "3", "--no-nvml", "--out", str(out), *SMALL)
    assert result.exit_code == 0, result.output
    return out, result


def test_layout_each_mode_folder_and_each_repeat_is_a_complete_run(repeated):
    out, _ = repeated
    for mode in ("sync", "async"):
        rf.check_complete(out / mode)
        for name in (rf.RUN_JSON, rf.TRACE, rf.NVML_CSV, rf.REQUESTS_CSV, rf.METRICS_JSON, rf.REPORT_HTML):
            assert (out / mode / name).is_file(), (mode, name)
        for k in (1, 2, 3):
            rf.check_complete(out / mode / f"r{k}")
            run = json.loads((out / mode / f"r{k}" / rf.RUN_JSON).read_text())
            assert run["command"][run["command"].index("--repeats") + 1] == "1"
        assert not (out / mode / "r4").exists()
    assert (out / "compare.html").is_file()


def test_modes_alternate_in_recorded_order_and_start_times(repeated):
    out, _ = repeated
    runs = {m: json.loads((out / m / rf.RUN_JSON).read_text()) for m in ("sync", "async")}
    assert runs["sync"]["repeats"]["order"] == [1, 3, 5] and runs["async"]["repeats"]["order"] == [2, 4, 6]
    starts = {m: runs[m]["repeats"]["generate_start_epoch_ns"] for m in runs}
    merged = sorted([(t, m) for m in starts for t in starts[m]])
    assert [m for _, m in merged] == ["sync", "async"] * 3
    assert "once" in runs["sync"]["repeats"]["engine_reuse"]
    cmd = runs["async"]["command"]
    assert cmd[cmd.index("--repeats") + 1] == "3" and cmd[-1] == str(out / "async")


def test_metrics_are_medians_of_the_repeats(repeated):
    out, _ = repeated
    for mode in ("sync", "async"):
        doc = rf.load_metrics(out / mode)
        repeats = [rf.load_metrics(out / mode / f"r{k}") for k in (1, 2, 3)]
        section = doc["repeats"]
        assert section["n"] == 3
        checked = 0
        for name in ("tokens_per_s", "requests_per_s", "ttft_ms_p50", "itl_ms_p50", "e2e_ms_p99"):
            values = [r["metrics"][name] for r in repeats]
            assert section["metrics"][name]["values"] == values
            assert doc["metrics"][name] == statistics.median(values)
            assert section["metrics"][name]["min"] == min(values) and section["metrics"][name]["max"] == max(values)
            checked += 1
        assert checked == 5
        rep = section["representative"]
        assert (out / mode / rf.REQUESTS_CSV).read_text() == (out / mode / f"r{rep}" / rf.REQUESTS_CSV).read_text()


def test_summary_shows_median_and_spread(repeated):
    out, result = repeated
    doc = rf.load_metrics(out / "sync")
    assert "n=3)" in result.output
    assert f"(n=3" not in result.output  # the range comes first: "(lo-hi, n=3)"
    stats = doc["repeats"]["metrics"]["tokens_per_s"]
    assert stats["min"] <= doc["metrics"]["tokens_per_s"] <= stats["max"]


def test_report_html_shows_spread(repeated):
    out, _ = repeated
    page = (out / "sync" / rf.REPORT_HTML).read_text()
    assert "median of 3 repeats" in page and 'data-n="3"' in page


def test_compare_prints_spread_and_noise_verdict(repeated, tmp_path):
    out, _ = repeated
    result = _invoke("compare", str(out / "sync"), str(out / "async"), "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "n=3)" in result.output and "Mann-Whitney" in result.output
    assert "output tokens/s, async against sync: " in result.output
    verdict = result.output.split("output tokens/s, async against sync: ")[1].split(" (")[0]
    assert verdict in ("within noise", "cannot tell", "beyond noise")
    as_json = _invoke("compare", str(out / "sync"), str(out / "async"), "--out", str(tmp_path), "--json")
    rows = {r["metric"]: r for r in json.loads(as_json.stdout.split("\ncomparison:")[0])["deltas"]}
    assert rows["tokens_per_s"]["noise"]["n"] == [3, 3]
    page = (tmp_path / "compare.html").read_text()  # the page says it too, beside the deltas and below them
    assert f"output tokens/s, async against sync: {verdict}" in page and "Mann-Whitney" in page
    if rows["tokens_per_s"]["direction"] not in (None, "same"):
        reason = html.escape(rows["tokens_per_s"]["noise"]["reason"])
        assert f'<span class="noise" title="{reason}">{verdict}</span>' in page


def test_compare_page_without_repeats_says_it_cannot_tell(repeated, tmp_path):
    out, _ = repeated
    result = _invoke("compare", str(out / "sync" / "r1"), str(out / "async" / "r1"), "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    page = (tmp_path / "compare.html").read_text()
    assert "cannot tell a difference from run-to-run noise" in page and 'class="noise"' not in page


def test_compare_without_repeats_says_it_cannot_tell(repeated, tmp_path):
    out, _ = repeated
    result = _invoke("compare", str(out / "sync" / "r1"), str(out / "async" / "r1"), "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "cannot tell a difference from run-to-run noise" in result.output


def test_gate_takes_the_repeat_folders_as_repeats(repeated):
    out, _ = repeated
    heads = [str(out / "async" / f"r{k}") for k in (1, 2, 3)]
    bases = [a for k in (1, 2, 3) for a in ("-b", str(out / "sync" / f"r{k}"))]
    result = _invoke("gate", *heads, *bases, "--max-decrease-pct", "tokens_per_s=100000", "--json", "-")
    assert result.exit_code == 0, result.output
    check = next(c for c in json.loads(result.stdout)["checks"] if c["metric"] == "tokens_per_s")
    assert len(check["head_values"]) == 3 and len(check["baseline_values"]) == 3
    merged = _invoke("gate", str(out / "async"), "--min", "tokens_per_s=0.001")
    assert merged.exit_code == 0, merged.output


def test_bad_repeats_is_one_line_exit_2(tmp_path):
    result = _invoke("run", "--repeats", "0", "--no-nvml", "--out", str(tmp_path / "x"), *SMALL)
    assert result.exit_code == 2 and "--repeats must be >= 1" in result.output
    assert "Traceback" not in result.output


# ---- the numbers, without running anything --------------------------------------------------------------

def test_interval_is_min_max_below_six_and_order_statistics_from_six():
    small = median_interval([5.0, 1.0, 3.0])
    assert small["ci95"] == [1.0, 5.0] and small["ci_coverage"] == 0.75 and "min-max" in small["ci_method"]
    six = median_interval([float(x) for x in range(6)])
    assert six["ci95"] == [0.0, 5.0] and six["ci_coverage"] == pytest.approx(1 - 2 / 64, abs=1e-4)
    twenty = median_interval([float(x) for x in range(20)])  # k = 6: P(B(20, 1/2) <= 5) = 0.0207
    assert twenty["ci95"] == [5.0, 14.0] and twenty["ci_coverage"] >= 0.95


def test_merge_takes_medians_worst_bool_and_lists_partial_metrics():
    docs = [{"schema_version": 1, "metrics": {"tokens_per_s": v, "gpu_idle_pct": {"step": s}, "clock_throttled": t,
                                              **({"itl_ms_p50": 1.0} if i else {})}, "absent": {}}
            for i, (v, s, t) in enumerate([(10.0, 5.0, False), (30.0, 9.0, True), (20.0, 7.0, False)])]
    assert representative(docs) == 2
    merged = merge_repeats(docs, 2, [1, 3, 5])
    assert merged["metrics"]["tokens_per_s"] == 20.0 and merged["metrics"]["gpu_idle_pct"]["step"] == 7.0
    assert merged["metrics"]["clock_throttled"] is True
    assert merged["repeats"]["not_in_every_repeat"] == ["itl_ms_p50"]
    assert merged["repeats"]["metrics"]["gpu_idle_pct.step"]["values"] == [5.0, 9.0, 7.0]
    warnings = spread_warnings(merged)
    assert any(w.startswith("tokens_per_s") for w in warnings) and any(w.startswith("gpu_idle_pct") for w in warnings)


def test_noise_verdict_uses_the_gate_test():
    from asyncbatch_prof.analysis.stats import noise_verdict

    assert noise_verdict([1, 2, 3], [4, 5, 6])["verdict"] == "cannot tell"  # 3 + 3: p >= 0.10 two-sided
    assert noise_verdict([1, 2, 5], [3, 4, 6])["verdict"] == "within noise"
    assert noise_verdict([1, 2, 3, 4], [5, 6, 7, 8])["verdict"] == "beyond noise"
    assert noise_verdict([1], [2, 3])["verdict"] == "cannot tell"


def test_a_failed_repeat_leaves_the_mode_folders_incomplete(tmp_path, monkeypatch):
    from asyncbatch_prof.pipeline import runner

    calls = {"n": 0}
    real = runner.record

    def failing_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated failure in the second measured pass")
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "record", failing_second)
    out = tmp_path / "out"
    result = _invoke("run", "--repeats", "2", "--mode", "sync", "--no-nvml", "--out", str(out), *SMALL)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    rf.check_complete(out / "r1")
    with pytest.raises(Exception, match="incomplete"):
        rf.check_complete(out)
    assert "r2" in (out / rf.INCOMPLETE).read_text()
    assert json.loads((out / rf.RUN_JSON).read_text())["status"] == "incomplete"
