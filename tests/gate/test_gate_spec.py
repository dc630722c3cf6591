"""Budgets from options and TOML: parsing, validation, discovery, merging (exit 2 on anything wrong)."""

from __future__ import annotations

import pytest

from asyncbatch_prof.gate.spec import GateConfigError, find_config, load_config, make_check, merge, parse_option


def test_parse_option_and_levels():
    c = parse_option("gpu_idle_pct=5", "max")
    assert (c.metric, c.kind, c.value, c.level) == ("gpu_idle_pct", "max", 5.0, "error")
    assert parse_option("overlap_pct=90:warn", "min").level == "warn"
    assert parse_option("gpu_idle_pct.kernel=3", "max").metric == "gpu_idle_pct.kernel"
    assert parse_option("tokens_per_s=5", "max_decrease_pct", "warn").level == "warn"


@pytest.mark.parametrize("text, kind", [
    ("gpu_idle=5", "max"),                       # unknown metric
    ("tokens_per_s.step=5", "min"),              # not a windowed metric
    ("gpu_idle_pct", "max"),                     # no value
    ("gpu_idle_pct=five", "max"),                # not a number
    ("gpu_idle_pct=5:fatal", "max"),             # unknown level
    ("gpu_idle_pct=inf", "max"),                 # not finite
    ("tokens_per_s=5", "max_decrease_pp"),       # percentage points on a non-% metric
    ("gpu_idle_pct=-1", "max_increase_pp"),      # a negative allowed change
])
def test_bad_options_are_config_errors(text, kind):
    with pytest.raises(GateConfigError) as info:
        parse_option(text, kind)
    assert info.value.exit_code == 2


def test_abprof_toml(tmp_path):
    path = tmp_path / "abprof.toml"
    path.write_text(
        """
[gate]
aggregate = "mean"
alpha = 0.1
min_samples = 4
require_baseline = true

[gate.metrics.gpu_idle_pct]
max = 25
max_increase_pp = 2

[[gate.metrics.overlap_pct]]
min = 90
level = "warn"

[[gate.metrics.overlap_pct]]
min = 50

[gate.metrics."gpu_idle_pct.kernel"]
max = 30
level = "warn"
"""
    )
    spec = load_config(path)
    assert (spec.aggregate, spec.alpha, spec.min_samples, spec.require_baseline) == ("mean", 0.1, 4, True)
    got = {(c.metric, c.kind, c.value, c.level) for c in spec.checks}
    assert got == {
        ("gpu_idle_pct", "max", 25.0, "error"),
        ("gpu_idle_pct", "max_increase_pp", 2.0, "error"),
        ("overlap_pct", "min", 90.0, "warn"),
        ("overlap_pct", "min", 50.0, "error"),
        ("gpu_idle_pct.kernel", "max", 30.0, "warn"),
    }
    assert find_config(tmp_path) == path


def test_pyproject_tool_table(tmp_path):
    path = tmp_path / "pyproject.toml"
    path.write_text('[project]\nname = "x"\n\n[tool.abprof.gate.metrics.tokens_per_s]\nmax_decrease_pct = 5\n')
    assert find_config(tmp_path) == path
    spec = load_config(path)
    assert [(c.metric, c.kind, c.value) for c in spec.checks] == [("tokens_per_s", "max_decrease_pct", 5.0)]


def test_pyproject_without_gate_table_is_not_a_config(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert find_config(tmp_path) is None


@pytest.mark.parametrize("body, words", [
    ("[gate.metrics.gpu_idle]\nmax = 5\n", "unknown metric 'gpu_idle'"),
    ("[gate.metrics.gpu_idle_pct]\nmaximum = 5\n", "unknown key"),
    ("[gate.metrics.gpu_idle_pct]\nlevel = 'warn'\n", "no threshold"),
    ("[gate]\naggregate = 'pessimistic'\n", "aggregate"),
    ("[gate]\nalpha = 2\n", "alpha"),
    ("[gate]\nmin_samples = 1\n", "min_samples"),
    ("[gate]\nrequire_baseline = 'yes'\n", "require_baseline"),
    ("[gate]\nbaseline_dir = 'x'\n", "unknown [gate] key"),
    ("[gate.metrics.gpu_idle_pct]\nmax = '5'\n", "finite number"),
    ("[gate.metrics.joules_per_token]\nmax_increase_pp = 5\n", "percentage points"),
    ("[gate\n", "not valid TOML"),
    ("[other]\nx = 1\n", "no [gate]"),
])
def test_bad_toml_is_a_config_error(tmp_path, body, words):
    path = tmp_path / "abprof.toml"
    path.write_text(body)
    with pytest.raises(GateConfigError) as info:
        load_config(path)
    assert words in str(info.value)
    assert info.value.exit_code == 2


def test_options_replace_config_checks_of_same_kind(tmp_path):
    path = tmp_path / "abprof.toml"
    path.write_text("[gate.metrics.gpu_idle_pct]\nmax = 25\nmax_increase_pp = 2\n")
    spec = merge(load_config(path), [make_check("gpu_idle_pct", "max", 5)])
    got = sorted((c.kind, c.value, c.source == "option") for c in spec.checks)
    assert got == [("max", 5.0, True), ("max_increase_pp", 2.0, False)]
