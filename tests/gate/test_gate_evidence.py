"""Issue 15 items 3-4 and issue 20 (gate): evidence that is invalid, incomplete or from other clocks never passes.

Each test names the item it covers. Exit codes: 0 pass, 1 regression, 2 usage/config, 3 no baseline, 4 invalid.
"""

from __future__ import annotations

import json

import pytest

from asyncbatch_prof.gate import GateSpec, run_gate
from asyncbatch_prof.gate.outputs import print_table


@pytest.fixture
def metrics_doc(metrics_file):
    """``metrics_doc(**kw)``: the gate conftest's metrics.json document, as a dict to damage."""
    return lambda **kw: json.loads(metrics_file(**kw).read_text())


def _write(path, doc):
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return path


def _one_error_line(r) -> str:
    lines = [line for line in r.output.splitlines() if line.startswith("abprof: error:")]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    return lines[0]


# --- item 4: values of the wrong type are invalid evidence, never skipped or coerced ----------------

BAD_VALUES = {
    "throttled_string": ("clock_throttled", "true"),
    "throttled_nan": ("clock_throttled", float("nan")),
    "throttled_list": ("clock_throttled", [True]),
    "throttled_number": ("clock_throttled", 1),
    "idle_bool": ("gpu_idle_pct", True),
    "idle_string": ("gpu_idle_pct", "5"),
    "idle_nan": ("gpu_idle_pct", float("nan")),
    "idle_inf": ("gpu_idle_pct", float("inf")),
    "idle_window_string": ("gpu_idle_pct", {"step": "5"}),
    "idle_window_empty": ("gpu_idle_pct", {}),
    "idle_window_unknown_key": ("gpu_idle_pct", {"stepp": 5.0}),
    "tokens_window": ("tokens_per_s", {"step": 5.0}),
    "tokens_null_list": ("tokens_per_s", [None]),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_wrongly_typed_metric_is_invalid_evidence(gate_cli, tmp_path, case, metrics_doc):
    name, value = BAD_VALUES[case]
    doc = metrics_doc()
    doc["metrics"][name] = value
    head = tmp_path / "head.json"
    head.write_text(json.dumps(doc))  # NaN/Infinity written as JSON's non-standard literals, as Python does
    r = gate_cli(head, "--max", "gpu_idle_pct=50", "--json", "-")
    assert r.exit_code == 4, (case, r.output)
    doc_out = json.loads(r.stdout)
    usable = {c["name"]: c for c in doc_out["checks"]}["runs usable"]
    assert usable["status"] == "invalid" and name in usable["note"]


@pytest.mark.parametrize("as_baseline", [False, True])
def test_bad_baseline_is_invalid_even_with_absolute_budgets_only(gate_cli, tmp_path, as_baseline, metrics_doc):
    bad = metrics_doc()
    bad["metrics"]["clock_throttled"] = "false"
    good, broken = _write(tmp_path / "good.json", metrics_doc()), _write(tmp_path / "bad.json", bad)
    head, base = (good, broken) if as_baseline else (broken, good)
    r = gate_cli(head, "-b", base, "--max", "gpu_idle_pct=50")
    assert r.exit_code == 4, r.output


@pytest.mark.parametrize("field, value", [("metrics", [1, 2]), ("metrics", "x"), ("absent", ["x"]),
                                          ("absent", {"gpu_idle_pct": 3})])
def test_metrics_or_absent_not_objects_is_invalid(gate_cli, tmp_path, field, value, metrics_doc):
    doc = metrics_doc()
    doc[field] = value
    r = gate_cli(_write(tmp_path / "m.json", doc), "--max", "gpu_idle_pct=50")
    assert r.exit_code == 4 and "must" in r.output, r.output


# --- item 4: schema_version ---------------------------------------------------------------------------

@pytest.mark.parametrize("version", [99, "abc", "1", True, None, 0, 1.5])
def test_unknown_schema_version_is_invalid(gate_cli, tmp_path, version, metrics_doc):
    doc = metrics_doc()
    doc["schema_version"] = version
    r = gate_cli(_write(tmp_path / "m.json", doc), "--max", "gpu_idle_pct=50")
    assert r.exit_code == 4 and "schema_version" in r.output, r.output


def test_head_and_baseline_of_different_schema_versions_are_invalid(gate_cli, tmp_path, metrics_doc):
    newer = metrics_doc()
    newer["schema_version"] = 2
    r = gate_cli(_write(tmp_path / "h.json", metrics_doc()), "-b", _write(tmp_path / "b.json", newer))
    assert r.exit_code == 4 and "schema_version 2" in r.output, r.output


# --- item 4: a metrics.json inside an incomplete run folder ------------------------------------------

@pytest.mark.parametrize("flag", [None, "-b"])
def test_metrics_json_of_incomplete_folder_is_invalid(gate_cli, run_dir, flag):
    broken = run_dir("killed", complete=False) / "metrics.json"
    good = run_dir("good")
    args = [good, "-b", broken] if flag else [broken, "-b", good]
    r = gate_cli(*args, "--max", "gpu_idle_pct=50")
    assert r.exit_code == 4 and "incomplete" in r.output, r.output


def test_metrics_json_of_folder_not_marked_complete_is_invalid(gate_cli, run_dir):
    folder = run_dir("half")
    (folder / "run.json").write_text(json.dumps({"status": "running"}))
    r = gate_cli(folder / "metrics.json", "--max", "gpu_idle_pct=50")
    assert r.exit_code == 4 and "not marked complete" in r.output, r.output


# --- item 4: a config that cannot be read never means "no budgets" -----------------------------------

CONFIGS = {
    "pyproject_syntax": ("pyproject.toml", b"[tool.abprof.gate\nmetrics = {gpu_idle_pct = {max = 1}}\n"),
    "pyproject_not_utf8": ("pyproject.toml", b"[tool.abprof.gate.metrics.gpu_idle_pct]\nmax = 1 # \xff\xfe\n"),
    "abprof_syntax": ("abprof.toml", b"[gate]\naggregate = \n"),
    "abprof_not_utf8": ("abprof.toml", b"\xc3\x28[gate]\n"),
    "abprof_nested_3000": ("abprof.toml", b"x = " + b"[" * 3000 + b"]" * 3000 + b"\n"),
}


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_unreadable_config_exits_2_in_one_line(gate_cli, tmp_path, run_dir, case):
    name, content = CONFIGS[case]
    (tmp_path / name).write_bytes(content)
    r = gate_cli(run_dir(idle=90.0), "-b", run_dir(idle=1.0))  # would fail on any budget, pass on none
    assert r.exit_code == 2, (case, r.output)
    assert name in _one_error_line(r)


def test_unreadable_config_given_with_config_option(gate_cli, tmp_path, run_dir):
    path = tmp_path / "cfg.toml"
    path.write_bytes(b"\xff")
    r = gate_cli(run_dir(), "--config", path)
    assert r.exit_code == 2 and "UTF-8" in _one_error_line(r)


# --- issue 20: require_baseline from TOML names the TOML key --------------------------------------------

def test_require_baseline_from_toml_names_the_key(gate_cli, tmp_path, run_dir):
    (tmp_path / "abprof.toml").write_text("[gate]\nrequire_baseline = true\n[gate.metrics.gpu_idle_pct]\nmax = 50\n")
    r = gate_cli(run_dir())
    assert r.exit_code == 3
    line = _one_error_line(r)
    assert "require_baseline = true in" in line and "abprof.toml" in line and "--require-baseline" not in line
    r = gate_cli(run_dir(), "--require-baseline", "--no-config", "--max", "gpu_idle_pct=50")
    assert r.exit_code == 3 and "(--require-baseline)" in _one_error_line(r)


# --- item 3: clocks ----------------------------------------------------------------------------------------

def test_power_capped_run_is_not_throttled_and_passes(gate_cli, run_dir):
    """sw_power_cap alone: clock_throttled false, power_capped_pct recorded; the gate passes."""
    head = run_dir(power_capped_pct=100.0, sm_clock_mhz_mean=1755.0)
    base = run_dir(power_capped_pct=98.0, sm_clock_mhz_mean=1760.0)
    r = gate_cli(head, "-b", base, "--json", "-")
    assert r.exit_code == 0, r.output
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["clock_throttled not_throttled"]["status"] == "pass"
    assert checks["sm_clock_mhz_mean clock_match 10"]["status"] == "pass"


@pytest.mark.parametrize("head_mhz, status, code", [(1980.0, "pass", 0), (1900.0, "warn", 0), (1940.0, "pass", 0),
                                                     (1700.0, "invalid", 4), (2200.0, "invalid", 4)])
def test_head_and_baseline_clocks_compared(gate_cli, run_dir, head_mhz, status, code):
    r = gate_cli(run_dir(sm_clock_mhz_mean=head_mhz), "-b", run_dir(sm_clock_mhz_mean=1980.0), "--json", "-")
    assert r.exit_code == code, r.output
    check = {c["name"]: c for c in json.loads(r.stdout)["checks"]}["sm_clock_mhz_mean clock_match 10"]
    assert check["status"] == status
    assert check["delta"] == pytest.approx(100 * (head_mhz - 1980.0) / 1980.0)


def test_clock_thresholds_are_configurable(gate_cli, tmp_path, run_dir):
    head, base = run_dir(sm_clock_mhz_mean=1900.0), run_dir(sm_clock_mhz_mean=1980.0)  # -4.04 %
    assert gate_cli(head, "-b", base, "--clock-invalid-pct", "4").exit_code == 4
    assert gate_cli(head, "-b", base, "--clock-warn-pct", "5").exit_code == 0
    (tmp_path / "abprof.toml").write_text("[gate]\nclock_warn_pct = 1\nclock_invalid_pct = 2\n")
    assert gate_cli(head, "-b", base).exit_code == 4
    (tmp_path / "abprof.toml").write_text("[gate]\nclock_warn_pct = 20\nclock_invalid_pct = 10\n")
    assert gate_cli(head, "-b", base).exit_code == 2
    (tmp_path / "abprof.toml").write_text("[gate]\nclock_invalid_pct = -1\n")
    assert gate_cli(head, "-b", base).exit_code == 2
    assert gate_cli(head, "-b", base, "--no-config", "--clock-invalid-pct", "inf").exit_code == 2


def test_clock_check_skipped_when_one_side_has_no_clock(gate_cli, run_dir):
    r = gate_cli(run_dir(sm_clock_mhz_mean=1980.0), "-b", run_dir(), "--json", "-")
    assert r.exit_code == 0
    check = {c["name"]: c for c in json.loads(r.stdout)["checks"]}["sm_clock_mhz_mean clock_match 10"]
    assert check["status"] == "skip" and "not recorded" in check["note"]


# --- issue 20: the table ---------------------------------------------------------------------------------

def test_unchanged_metric_is_a_plain_pass_not_noise(gate_cli, run_dir):
    heads = [run_dir(idle=v) for v in (5.0, 5.0, 5.0)]
    bases = [run_dir(idle=v) for v in (5.0, 5.0, 5.0)]
    args = [*heads, *[a for b in bases for a in ("-b", b)], "--max-increase-pp", "gpu_idle_pct=2"]
    r = gate_cli(*args, "--json", "-")
    check = {c["name"]: c for c in json.loads(r.stdout)["checks"]}["gpu_idle_pct max_increase_pp 2"]
    assert r.exit_code == 0 and check["delta"] == 0 and check["over_threshold"] is False
    assert "n.s." not in gate_cli(*args).output


def test_table_at_80_columns_keeps_names_whole(tmp_path, run_dir):
    from io import StringIO

    from rich.console import Console

    from asyncbatch_prof.gate import make_check

    spec = GateSpec(checks=[make_check(m, "max", 1e6) for m in ("stream_concurrency_pct", "launch_latency_pct",
                                                                  "joules_per_token")])
    head = run_dir(throttled=True, stream_concurrency_pct={"step": 3.0}, launch_latency_pct={"step": 1.0},
                   absent={"joules_per_token": "NVML total energy counter not supported on this GPU"})
    result = run_gate([head], [run_dir(stream_concurrency_pct={"step": 3.0})], spec)
    out = StringIO()
    print_table(result, Console(file=out, width=80, color_system=None, soft_wrap=False))
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    for name in ("clock_throttled", "stream_concurrency_pct", "launch_latency_pct", "joules_per_token"):
        assert name in text, (name, text)


def test_notes_and_paths_with_markup_print_literally(tmp_path, metrics_doc):
    from io import StringIO

    from rich.console import Console

    folder = tmp_path / "[" / "bold][link=http:" / "x]run[param|x]\x1b]0;t\x07"  # "/" is the path separator
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics_doc()))
    (folder / "run.json").write_text(json.dumps({"status": "complete"}))
    (folder / "INCOMPLETE").write_text("killed [/y]")
    result = run_gate([folder], [], _budget())
    out = StringIO()
    print_table(result, Console(file=out, width=300, color_system=None))
    text = out.getvalue()
    assert "[/bold][link=http:/x]run[param|x]" in text.replace("\n", "") and "killed [/y]" in text
    assert "\x1b" not in text and "\\x1b" in text


def _budget() -> GateSpec:
    from asyncbatch_prof.gate import make_check

    return GateSpec(checks=[make_check("gpu_idle_pct", "max", 50)])
