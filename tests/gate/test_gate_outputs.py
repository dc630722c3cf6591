"""The gate's outputs: JSON (stdout and file), JUnit XML against the schema, step summary, benchmark JSON."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

XSD = Path(__file__).resolve().parents[1] / "data" / "gate" / "junit-10.xsd"


@pytest.fixture
def mixed(gate_cli, run_dir):
    """A gate with one of each outcome: pass, fail, warn, invalid, skip (no NVML: clock state unknown)."""
    head = run_dir(idle=9.0, tokens_per_s=950.0, throttled=None, absent={"ttft_ms_p50": "no request finished"})
    base = run_dir(idle=5.0, tokens_per_s=1000.0, throttled=None)

    def invoke(*extra):
        return gate_cli(head, "-b", base, "--max-increase-pp", "gpu_idle_pct=2", "--max-decrease-pct",
                        "tokens_per_s=10", "--warn-min", "overlap_pct=99", "--max", "ttft_ms_p50=100", *extra)

    return invoke


def test_json_to_file_and_stdout(mixed, tmp_path):
    out = tmp_path / "gate.json"
    r = mixed("--json", out)
    assert r.exit_code == 4, r.output  # the absent ttft makes it invalid, over the idle regression
    doc = json.loads(out.read_text())
    assert doc["schema_version"] == 1 and doc["verdict"] == "invalid" and doc["exit_code"] == 4
    assert doc["counts"] == {"pass": 1, "fail": 1, "warn": 1, "invalid": 1, "skip": 1}
    by = {c["name"]: c for c in doc["checks"]}
    assert by["gpu_idle_pct max_increase_pp 2"]["status"] == "fail"
    assert by["gpu_idle_pct max_increase_pp 2"]["head_values"] == [9.0]
    assert by["overlap_pct min 99"]["status"] == "warn" and by["overlap_pct min 99"]["level"] == "warn"
    assert by["ttft_ms_p50 max 100"]["status"] == "invalid"
    assert by["clock_throttled not_throttled"]["status"] == "skip"
    r = mixed("--json", "-")
    assert json.loads(r.stdout) == doc  # the same document on stdout; the table went to stderr
    assert "Threshold" in r.stderr
    assert mixed("--json", "-", "--quiet").stderr == ""


def test_table_columns(mixed):
    r = mixed()
    for word in ("Metric", "Baseline", "Head", "Δ", "Threshold", "Verdict", "+4 pp", "-5%", "FAIL", "INVALID",
                 "warn", "skipped", "invalid (exit 4)"):
        assert word in r.output, word


def _junit(mixed, tmp_path) -> Path:
    path = tmp_path / "junit.xml"
    r = mixed("--junit", path)
    assert r.exit_code == 4, r.output
    return path


def test_junit_one_testcase_per_check(mixed, tmp_path):
    root = ET.parse(_junit(mixed, tmp_path)).getroot()
    assert root.tag == "testsuites"
    suite = root.find("testsuite")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert len(cases) == 5 == int(suite.get("tests"))
    assert suite.get("failures") == "1" and suite.get("errors") == "1" and suite.get("skipped") == "1"
    assert cases["gpu_idle_pct max_increase_pp 2"].find("failure") is not None
    assert cases["ttft_ms_p50 max 100"].find("error") is not None
    assert cases["clock_throttled not_throttled"].find("skipped") is not None
    assert "WARNING" in cases["overlap_pct min 99"].find("system-out").text
    passed = cases["tokens_per_s max_decrease_pct 10"]
    assert passed.find("failure") is None and passed.find("error") is None
    assert all(c.get("classname").startswith("abprof.gate.") for c in cases.values())


def test_junit_validates_against_schema(mixed, tmp_path):
    etree = pytest.importorskip("lxml.etree", reason="lxml not installed (it is in the test extra)")
    schema = etree.XMLSchema(etree.parse(str(XSD)))
    doc = etree.parse(str(_junit(mixed, tmp_path)))
    assert schema.validate(doc), schema.error_log
    # the schema does reject what CI systems reject: a testcase without a name
    doc.getroot().find("testsuite").find("testcase").attrib.pop("name")
    assert not schema.validate(doc)


def test_junit_of_a_passing_gate_validates(gate_cli, run_dir, tmp_path):
    etree = pytest.importorskip("lxml.etree", reason="lxml not installed (it is in the test extra)")
    path = tmp_path / "pass.xml"
    r = gate_cli(run_dir(idle=3.0), "--max", "gpu_idle_pct=5", "--junit", path)
    assert r.exit_code == 0, r.output
    assert etree.XMLSchema(etree.parse(str(XSD))).validate(etree.parse(str(path)))


def test_step_summary_appended(mixed, tmp_path, monkeypatch):
    summary = tmp_path / "summary.md"
    summary.write_text("# earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    mixed()
    mixed()
    text = summary.read_text()
    assert text.startswith("# earlier step\n")
    assert text.count("abprof gate: invalid (exit 4)") == 2
    assert "| Metric | Baseline | Head | Δ | Threshold | Verdict | Note |" in text
    assert "| gpu_idle_pct | 5% | 9% | +4 pp | +2 pp max | FAIL |" in text


def test_markdown_file_without_step_summary(mixed, tmp_path):
    path = tmp_path / "gate.md"
    mixed("--markdown", path)
    assert "| tokens_per_s | 1000 | 950 | -5% | -10% max | pass |" in path.read_text()


def test_markdown_is_truncated_under_githubs_limit(gate_cli, run_dir):
    from asyncbatch_prof.gate import outputs
    from asyncbatch_prof.gate.evaluate import run_gate
    from asyncbatch_prof.gate.spec import GateSpec, make_check

    result = run_gate([run_dir()], [], GateSpec(checks=[make_check("gpu_idle_pct", "max", 50)]))
    result.notes = ["x" * 1000] * 2000
    text = outputs.to_markdown(result)
    assert len(text.encode()) <= outputs.SUMMARY_LIMIT_BYTES and "truncated" in text


def test_benchmark_json_is_smaller_is_better(gate_cli, run_dir, tmp_path):
    heads = [run_dir(idle=v, tokens_per_s=t, overlap=o) for v, t, o in ((4.0, 1000.0, 90.0), (5.0, 800.0, 94.0),
                                                                        (6.0, 1250.0, 92.0))]
    path = tmp_path / "bench.json"
    r = gate_cli(*heads, "--max", "ttft_ms_p50=100", "--min", "tokens_per_s=10", "--min", "overlap_pct=50",
                 "--benchmark-json", path)
    assert r.exit_code == 0, r.output
    entries = json.loads(path.read_text())
    assert isinstance(entries, list)
    for e in entries:  # github-action-benchmark's schema: name, unit, value required; range, extra strings
        assert set(e) <= {"name", "unit", "value", "range", "extra"}
        assert isinstance(e["name"], str) and isinstance(e["unit"], str) and isinstance(e["value"], float)
        assert isinstance(e.get("range", ""), str) and isinstance(e.get("extra", ""), str)
    by = {e["name"]: e for e in entries}
    # gpu_idle_pct is always exported, lower is better as it is
    assert by["gpu_idle_pct"]["value"] == 5.0 and by["gpu_idle_pct"]["unit"] == "%"
    assert by["ttft_ms_p50"]["value"] == 40.0
    # higher-is-better metrics are exported as costs, so a worse run has a larger value
    assert by["tokens_per_s (as ms per output token)"]["value"] == pytest.approx(1.0)  # median of 1, 1.25, 0.8
    assert by["overlap_pct (as 100 - value)"]["value"] == pytest.approx(8.0)
    assert by["gpu_idle_pct"]["range"].startswith("± ")
    assert "clock_throttled" not in " ".join(by)
