"""`abprof gate` end to end: every exit code, threshold kind, direction, aggregation and the statistics."""

from __future__ import annotations

import json

import pytest


def checks_of(result):
    """The checks of the JSON written to stdout by ``--json -``, by name."""
    doc = json.loads(result.stdout)
    return doc, {c["name"]: c for c in doc["checks"]}


# --- exit codes ----------------------------------------------------------------------------------

def test_exit_0_pass_with_budgets(gate_cli, run_dir):
    head = run_dir(idle=4.0, overlap=95.0)
    r = gate_cli(head, "--max", "gpu_idle_pct=5", "--min", "overlap_pct=90", "--min", "tokens_per_s=900")
    assert r.exit_code == 0, r.output
    assert "pass (exit 0)" in r.output


def test_exit_0_with_warnings(gate_cli, run_dir):
    head = run_dir(idle=6.0)
    r = gate_cli(head, "--warn-max", "gpu_idle_pct=5", "--max", "gpu_idle_pct=10", "--json", "-")
    assert r.exit_code == 0, r.output
    doc, checks = checks_of(r)
    assert checks["gpu_idle_pct max 5"]["status"] == "warn"
    assert checks["gpu_idle_pct max 10"]["status"] == "pass"
    assert doc["counts"]["warn"] == 1 and doc["verdict"] == "pass"


def test_exit_1_regression_over_budget(gate_cli, run_dir):
    r = gate_cli(run_dir(idle=24.0), "--max", "gpu_idle_pct=5")
    assert r.exit_code == 1, r.output
    assert "FAIL" in r.output and "regression (exit 1)" in r.output


@pytest.mark.parametrize("args", [
    ["--max", "gpu_idle=5"],                              # unknown metric
    ["--min", "overlap_pct=lots"],                        # not a number
    ["--max-increase-pp", "tokens_per_s=2"],              # pp on a non-% metric
    ["--aggregate", "pessimistic", "--max", "gpu_idle_pct=5"],
    ["--alpha", "0", "--max", "gpu_idle_pct=5"],
    ["--min-samples", "1", "--max", "gpu_idle_pct=5"],
    [],                                                   # nothing to check and no baseline
    ["--config", "missing.toml"],
    ["--bogus-option"],
])
def test_exit_2_usage_and_config_errors(gate_cli, run_dir, args):
    r = gate_cli(run_dir(), *args)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output


def test_exit_2_head_missing(gate_cli, tmp_path):
    r = gate_cli(tmp_path / "nope", "--max", "gpu_idle_pct=5")
    assert r.exit_code == 2 and "run not found" in r.output


def test_exit_2_mode_both_folder_names_its_runs(gate_cli, run_dir, tmp_path):
    both = tmp_path / "both"
    both.mkdir()
    run_dir("both/sync"), run_dir("both/async")
    r = gate_cli(both, "--max", "gpu_idle_pct=5")
    assert r.exit_code == 2 and "async, sync" in r.output
    assert gate_cli(both / "async", "--max", "gpu_idle_pct=5").exit_code == 0


def test_exit_2_unknown_metric_in_toml(gate_cli, run_dir, tmp_path):
    (tmp_path / "abprof.toml").write_text("[gate.metrics.gpu_idle_percent]\nmax = 5\n")
    r = gate_cli(run_dir())
    assert r.exit_code == 2 and "unknown metric 'gpu_idle_percent'" in r.output


def test_exit_3_baseline_required(gate_cli, run_dir):
    r = gate_cli(run_dir(), "--max", "gpu_idle_pct=50", "--require-baseline")
    assert r.exit_code == 3, r.output


def test_exit_3_required_by_toml(gate_cli, run_dir, tmp_path):
    (tmp_path / "abprof.toml").write_text("[gate]\nrequire_baseline = true\n[gate.metrics.gpu_idle_pct]\nmax = 50\n")
    assert gate_cli(run_dir()).exit_code == 3


def test_exit_3_baseline_path_missing(gate_cli, run_dir, tmp_path):
    r = gate_cli(run_dir(), "--baseline", tmp_path / "baselines" / "main")
    assert r.exit_code == 3 and "baseline not found" in r.output


def test_no_baseline_skips_relative_checks_when_not_required(gate_cli, run_dir):
    r = gate_cli(run_dir(), "--max-increase-pp", "gpu_idle_pct=2", "--json", "-")
    assert r.exit_code == 0, r.output
    _, checks = checks_of(r)
    assert checks["gpu_idle_pct max_increase_pp 2"]["status"] == "skip"


def test_exit_4_metric_absent(gate_cli, run_dir):
    head = run_dir(absent={"overlap_pct": "no host activity recorded for the engine thread"})
    r = gate_cli(head, "--min", "overlap_pct=90", "--json", "-")
    assert r.exit_code == 4, r.output
    _, checks = checks_of(r)
    assert checks["overlap_pct min 90"]["status"] == "invalid"
    assert "no host activity" in checks["overlap_pct min 90"]["note"]


def test_exit_4_metric_absent_in_baseline(gate_cli, run_dir):
    base = run_dir(absent={"tokens_per_s": "no requests finished"})
    assert gate_cli(run_dir(), "-b", base).exit_code == 4


def test_exit_4_throttled_even_when_numbers_pass(gate_cli, run_dir):
    head = run_dir(idle=1.0, throttled=True)
    r = gate_cli(head, "--max", "gpu_idle_pct=5")
    assert r.exit_code == 4, r.output
    assert "throttled" in r.output


def test_absolute_budget_does_not_need_the_baselines_value(gate_cli, run_dir):
    base = run_dir(absent={"overlap_pct": "no annotations"})
    r = gate_cli(run_dir(), "-b", base, "--min", "overlap_pct=90", "--json", "-")
    assert r.exit_code == 0, r.output
    check = checks_of(r)[1]["overlap_pct min 90"]
    assert check["baseline"] is None and "baseline lacks it" in check["note"]


def test_throttled_baseline_is_invalid_too(gate_cli, run_dir):
    r = gate_cli(run_dir(), "-b", run_dir(throttled=True), "--json", "-")
    assert r.exit_code == 4, r.output
    check = checks_of(r)[1]["clock_throttled not_throttled"]
    assert check["head_values"] == [0.0] and check["baseline_values"] == [1.0]


def test_allow_throttled_turns_it_into_a_warning(gate_cli, run_dir):
    r = gate_cli(run_dir(throttled=True), "--max", "gpu_idle_pct=5", "--allow-throttled", "--json", "-")
    assert r.exit_code == 0, r.output
    _, checks = checks_of(r)
    assert checks["clock_throttled not_throttled"]["status"] == "warn"


def test_no_nvml_means_clock_state_unknown_not_invalid(gate_cli, run_dir):
    r = gate_cli(run_dir(throttled=None), "--max", "gpu_idle_pct=5", "--json", "-")
    assert r.exit_code == 0, r.output
    _, checks = checks_of(r)
    assert checks["clock_throttled not_throttled"]["status"] == "skip"


@pytest.mark.parametrize("bad", [float("nan"), "n/a"])
def test_exit_4_value_that_is_not_a_number(gate_cli, run_dir, bad):
    # json writes NaN as a bare token: a comparison with it is always False, so it must not pass
    r = gate_cli(run_dir(tokens_per_s=bad), "--min", "tokens_per_s=10")
    assert r.exit_code == 4, r.output


def test_exit_4_incomplete_run_folder(gate_cli, run_dir):
    r = gate_cli(run_dir(complete=False), "--max", "gpu_idle_pct=50")
    assert r.exit_code == 4, r.output
    assert "incomplete" in r.output


def test_exit_4_percent_change_from_zero(gate_cli, run_dir):
    r = gate_cli(run_dir(tokens_per_s=10.0), "-b", run_dir(tokens_per_s=0.0), "--max-decrease-pct", "tokens_per_s=5")
    assert r.exit_code == 4, r.output


def test_invalid_outranks_regression(gate_cli, run_dir):
    head = run_dir(idle=50.0, absent={"overlap_pct": "no annotations"})
    assert gate_cli(head, "--max", "gpu_idle_pct=5", "--min", "overlap_pct=90").exit_code == 4


# --- threshold kinds and directions --------------------------------------------------------------

@pytest.mark.parametrize("option, metric, head, base, expected", [
    # idle share (lower is better), percentage points
    ("--max-increase-pp", "gpu_idle_pct=2", {"idle": 6.9}, {"idle": 5.0}, 0),
    ("--max-increase-pp", "gpu_idle_pct=2", {"idle": 7.1}, {"idle": 5.0}, 1),
    ("--max-increase-pp", "gpu_idle_pct=2", {"idle": 1.0}, {"idle": 5.0}, 0),    # an improvement
    # overlap (higher is better), percentage points
    ("--max-decrease-pp", "overlap_pct=5", {"overlap": 91.0}, {"overlap": 95.0}, 0),
    ("--max-decrease-pp", "overlap_pct=5", {"overlap": 89.0}, {"overlap": 95.0}, 1),
    # throughput (higher is better), percent
    ("--max-decrease-pct", "tokens_per_s=5", {"tokens_per_s": 960.0}, {"tokens_per_s": 1000.0}, 0),
    ("--max-decrease-pct", "tokens_per_s=5", {"tokens_per_s": 940.0}, {"tokens_per_s": 1000.0}, 1),
    ("--max-decrease-pct", "tokens_per_s=5", {"tokens_per_s": 2000.0}, {"tokens_per_s": 1000.0}, 0),
    # latency (lower is better), percent
    ("--max-increase-pct", "ttft_ms_p50=10", {"ttft_ms_p50": 43.0}, {"ttft_ms_p50": 40.0}, 0),
    ("--max-increase-pct", "ttft_ms_p50=10", {"ttft_ms_p50": 45.0}, {"ttft_ms_p50": 40.0}, 1),
    # a windowed metric named with its window
    ("--max-increase-pp", "gpu_idle_pct.kernel=1", {"idle": 7.0}, {"idle": 5.0}, 1),
])
def test_baseline_threshold_kinds(gate_cli, run_dir, option, metric, head, base, expected):
    r = gate_cli(run_dir(**head), "--baseline", run_dir(**base), option, metric)
    assert r.exit_code == expected, r.output


@pytest.mark.parametrize("option, value, expected", [
    ("--max", "tokens_per_s=1200", 0), ("--min", "tokens_per_s=1200", 1),
    ("--max", "ttft_ms_p50=30", 1), ("--min", "ttft_ms_p50=30", 0),
    ("--max", "preemptions=0", 0), ("--max", "host_bound_pct=3", 1), ("--max", "host_bound_pct.kernel=3", 0),
])
def test_absolute_budgets(gate_cli, run_dir, option, value, expected):
    r = gate_cli(run_dir(idle=4.0, tokens_per_s=1000.0), option, value)
    assert r.exit_code == expected, r.output


def test_delta_units_in_json(gate_cli, run_dir):
    r = gate_cli(run_dir(idle=8.0, tokens_per_s=900.0), "-b", run_dir(idle=5.0, tokens_per_s=1000.0),
                 "--max-increase-pp", "gpu_idle_pct=10", "--max-decrease-pct", "tokens_per_s=20", "--json", "-")
    assert r.exit_code == 0, r.output
    _, checks = checks_of(r)
    idle, tps = checks["gpu_idle_pct max_increase_pp 10"], checks["tokens_per_s max_decrease_pct 20"]
    assert idle["delta"] == pytest.approx(3.0) and idle["unit"] == "pp" and idle["better"] == "lower"
    assert tps["delta"] == pytest.approx(-10.0) and tps["unit"] == "%" and tps["better"] == "higher"


def test_default_budget_with_baseline(gate_cli, run_dir):
    base = run_dir(idle=2.0, tokens_per_s=1000.0)
    r = gate_cli(run_dir(idle=3.5, tokens_per_s=980.0), "-b", base, "--json", "-")
    assert r.exit_code == 0, r.output
    doc, checks = checks_of(r)
    assert set(checks) == {"clock_throttled not_throttled", "gpu_idle_pct max_increase_pp 2",
                           "tokens_per_s max_decrease_pct 5"}
    assert any("default" in n for n in doc["notes"])
    assert gate_cli(run_dir(idle=4.5), "-b", base).exit_code == 1


def test_warn_level_from_suffix_on_baseline_threshold(gate_cli, run_dir):
    r = gate_cli(run_dir(idle=9.0), "-b", run_dir(idle=5.0), "--max-increase-pp", "gpu_idle_pct=2:warn")
    assert r.exit_code == 0, r.output
    assert "warn" in r.output


def test_metrics_json_files_and_toml_budget(gate_cli, metrics_file, tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        "[tool.abprof.gate.metrics.gpu_idle_pct]\nmax_increase_pp = 2\n[tool.abprof.gate.metrics.overlap_pct]\n"
        "min = 90\nlevel = 'warn'\n")
    r = gate_cli(metrics_file(idle=9.0, overlap=80.0), "-b", metrics_file(idle=5.0))
    assert r.exit_code == 1, r.output
    r = gate_cli(metrics_file(idle=6.0, overlap=80.0), "-b", metrics_file(idle=5.0))
    assert r.exit_code == 0, r.output
    assert gate_cli(metrics_file(idle=9.0), "-b", metrics_file(idle=5.0), "--no-config").exit_code == 1
    # --config names a file explicitly; its budget applies instead of the discovered one
    other = tmp_path / "ci.toml"
    other.write_text("[gate.metrics.gpu_idle_pct]\nmax_increase_pp = 10\n")
    assert gate_cli(metrics_file(idle=9.0), "-b", metrics_file(idle=5.0), "--config", other).exit_code == 0


# --- repeats: aggregation and significance -------------------------------------------------------

@pytest.mark.parametrize("how, expected_head", [("median", 5.0), ("mean", 6.0), ("min", 3.0), ("max", 10.0)])
def test_aggregation(gate_cli, run_dir, how, expected_head):
    heads = [run_dir(idle=v) for v in (3.0, 5.0, 10.0)]
    r = gate_cli(*heads, "--aggregate", how, "--max", "gpu_idle_pct=5.5", "--json", "-")
    doc, checks = checks_of(r)
    check = checks["gpu_idle_pct max 5.5"]
    assert check["head"] == pytest.approx(expected_head)
    assert r.exit_code == (0 if expected_head <= 5.5 else 1), r.output
    assert doc["settings"]["aggregate"] == how


def test_aggregate_from_toml(gate_cli, run_dir, tmp_path):
    (tmp_path / "abprof.toml").write_text("[gate]\naggregate = 'max'\n[gate.metrics.gpu_idle_pct]\nmax = 5.5\n")
    heads = [run_dir(idle=v) for v in (3.0, 5.0, 10.0)]
    assert gate_cli(*heads).exit_code == 1
    assert gate_cli(*heads, "--aggregate", "median").exit_code == 0  # the option overrides the file


def test_significant_regression_fails(gate_cli, run_dir):
    heads = [run_dir(idle=v) for v in (9.0, 9.5, 10.0)]
    bases = [run_dir(idle=v) for v in (5.0, 5.5, 6.0)]
    r = gate_cli(*heads, *[a for b in bases for a in ("-b", b)], "--max-increase-pp", "gpu_idle_pct=2", "--json", "-")
    assert r.exit_code == 1, r.output
    _, checks = checks_of(r)
    check = checks["gpu_idle_pct max_increase_pp 2"]
    assert check["p_value"] == pytest.approx(0.05) and check["significant"] is True


def test_over_threshold_but_not_significant_passes_as_noise(gate_cli, run_dir):
    # medians 9 vs 5 (+4 pp) but the samples interleave: not evidence of a change
    heads = [run_dir(idle=v) for v in (2.0, 9.0, 12.0)]
    bases = [run_dir(idle=v) for v in (3.0, 5.0, 11.0)]
    r = gate_cli(*heads, *[a for b in bases for a in ("-b", b)], "--max-increase-pp", "gpu_idle_pct=2", "--json", "-")
    assert r.exit_code == 0, r.output
    _, checks = checks_of(r)
    check = checks["gpu_idle_pct max_increase_pp 2"]
    assert check["significant"] is False and check["status"] == "pass" and "noise" in check["note"]
    r = gate_cli(*heads, *[a for b in bases for a in ("-b", b)], "--max-increase-pp", "gpu_idle_pct=2")
    assert "n.s." in r.output


def test_significance_direction_follows_the_threshold(gate_cli, run_dir):
    # throughput fell in every head run: the one-sided test looks for "head lower than baseline"
    heads = [run_dir(tokens_per_s=v) for v in (800.0, 810.0, 820.0)]
    bases = [run_dir(tokens_per_s=v) for v in (1000.0, 1010.0, 1020.0)]
    r = gate_cli(*heads, *[a for b in bases for a in ("-b", b)], "--max-decrease-pct", "tokens_per_s=5", "--json", "-")
    assert r.exit_code == 1, r.output
    _, checks = checks_of(r)
    assert checks["tokens_per_s max_decrease_pct 5"]["significant"] is True


def test_too_few_samples_are_said_and_threshold_decides(gate_cli, run_dir):
    heads = [run_dir(idle=v) for v in (9.0, 9.5)]
    r = gate_cli(*heads, "-b", run_dir(idle=5.0), "--max-increase-pp", "gpu_idle_pct=2", "--json", "-")
    assert r.exit_code == 1, r.output
    _, checks = checks_of(r)
    check = checks["gpu_idle_pct max_increase_pp 2"]
    assert check["significant"] is None and "too few runs" in check["note"]


def test_min_samples_and_alpha_options(gate_cli, run_dir):
    heads = [run_dir(idle=v) for v in (9.0, 9.5, 10.0)]
    bases = [run_dir(idle=v) for v in (5.0, 5.5, 6.0)]
    base_args = [a for b in bases for a in ("-b", b)]
    # alpha below 1/C(6,3) = 0.05: 3+3 runs can never reach it, so the gate says so and the threshold decides
    r = gate_cli(*heads, *base_args, "--max-increase-pp", "gpu_idle_pct=2", "--alpha", "0.01", "--json", "-")
    assert r.exit_code == 1, r.output
    check = checks_of(r)[1]["gpu_idle_pct max_increase_pp 2"]
    assert check["significant"] is None and "at best" in check["note"]
    # with min_samples 4 the test is not run and the threshold alone decides
    r = gate_cli(*heads, *base_args, "--max-increase-pp", "gpu_idle_pct=2", "--min-samples", "4", "--json", "-")
    assert r.exit_code == 1, r.output
    assert "4 needed per side" in checks_of(r)[1]["gpu_idle_pct max_increase_pp 2"]["note"]
    # with 4+4 runs and alpha 0.05 the test runs
    heads.append(run_dir(idle=9.7))
    base_args += ["-b", run_dir(idle=5.7)]
    r = gate_cli(*heads, *base_args, "--max-increase-pp", "gpu_idle_pct=2", "--min-samples", "4", "--json", "-")
    assert r.exit_code == 1, r.output
    assert checks_of(r)[1]["gpu_idle_pct max_increase_pp 2"]["p_value"] == pytest.approx(1 / 70)
