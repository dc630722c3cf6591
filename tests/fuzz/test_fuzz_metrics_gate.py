"""Mutated metrics.json documents (a real H100 run's) and run folders through `abprof gate`.

Properties: the gate exits with a documented code (0-4), never a traceback, and never 0 when the
evidence is absent, invalid or incomplete. What counts as valid is decided here by an oracle written
independently of the gate's own checks (``_valid``), so a check dropped from the gate fails this test.
"""

from __future__ import annotations

import copy
import json
import math

from fuzzing import DATA, EXIT_CODES, assert_no_traceback, examples, invoke, scratch
from hypothesis import given, settings
from hypothesis import strategies as st

REAL = json.loads((DATA / "gate" / "h100-async" / "metrics.json").read_text())
RUN_JSON = (DATA / "gate" / "h100-async" / "run.json").read_text()
CHECKED = ("gpu_idle_pct", "tokens_per_s")
WINDOWED = ("gpu_idle_pct", "overlap_pct")  # the gate's default budget with a baseline
NUMBER_METRICS = ("gpu_idle_pct", "tokens_per_s", "overlap_pct", "ttft_ms_p50", "preemptions", "sm_clock_mhz_mean",
                  "power_capped_pct")

JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5), st.sampled_from(["true", "false", "NaN", "[/bold]", "5"]), st.lists(st.booleans(), max_size=2),
    st.dictionaries(st.sampled_from(["step", "kernel", "x"]), st.one_of(st.none(), st.floats(), st.text(max_size=2)),
                    max_size=2),
)
EDIT = st.one_of(
    st.tuples(st.just("metric"), st.sampled_from(NUMBER_METRICS + ("clock_throttled",)), JUNK),
    st.tuples(st.just("drop_metric"), st.sampled_from(NUMBER_METRICS + ("clock_throttled",)), st.none()),
    st.tuples(st.just("top"), st.sampled_from(["schema_version", "metrics", "absent"]), JUNK),
    st.tuples(st.just("drop_top"), st.sampled_from(["schema_version", "metrics", "absent"]), st.none()),
    st.tuples(st.just("absent_reason"), st.sampled_from(CHECKED), JUNK),
)
FOLDER = st.sampled_from(["file", "complete", "incomplete_marker", "status_running", "status_missing"])


def _apply(doc: dict, edits) -> dict:
    doc = copy.deepcopy(doc)
    for kind, key, value in edits:
        if kind == "metric" and isinstance(doc.get("metrics"), dict):
            doc["metrics"][key] = copy.deepcopy(value)
        elif kind == "drop_metric" and isinstance(doc.get("metrics"), dict):
            doc["metrics"].pop(key, None)
        elif kind == "top":
            doc[key] = copy.deepcopy(value)
        elif kind == "drop_top":
            doc.pop(key, None)
        elif kind == "absent_reason" and isinstance(doc.get("absent"), dict):
            doc["absent"][key] = copy.deepcopy(value)
    return doc


def _number(x) -> bool:
    return type(x) in (int, float) and math.isfinite(x)


def _windowed_ok(value) -> bool:
    if type(value) is not dict:
        return _number(value)
    return bool(value) and all(k in ("step", "kernel") and (v is None or _number(v)) for k, v in value.items())


def _valid(doc: dict, folder: str) -> bool:
    """May the gate pass on this document? (The oracle: the contract's rules, restated.)"""
    if folder in ("incomplete_marker", "status_running", "status_missing"):
        return False
    if type(doc.get("schema_version")) is not int or doc["schema_version"] != 1:
        return False
    metrics, absent = doc.get("metrics"), doc.get("absent", {})
    if type(metrics) is not dict or type(absent) is not dict or not all(type(v) is str for v in absent.values()):
        return False
    for name in WINDOWED:
        if name in metrics and not _windowed_ok(metrics[name]):
            return False
    for name in set(NUMBER_METRICS) - set(WINDOWED):
        if name in metrics and not _number(metrics[name]):
            return False
    idle = metrics.get("gpu_idle_pct")
    if idle is None or (type(idle) is dict and all(v is None for v in idle.values())):
        return False  # a checked metric absent
    if "tokens_per_s" not in metrics:
        return False
    throttled = metrics.get("clock_throttled", False)
    return type(throttled) is bool and not throttled


def _write_run(tmp, name: str, doc: dict, folder: str):
    if folder == "file":
        path = tmp / f"{name}.json"
        path.write_text(json.dumps(doc))
        return path
    run = tmp / name
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps(doc))
    status = {"complete": "complete", "incomplete_marker": "complete", "status_running": "running"}.get(folder)
    run_doc = json.loads(RUN_JSON)
    if status is None:
        run_doc.pop("status", None)
    else:
        run_doc["status"] = status
    (run / "run.json").write_text(json.dumps(run_doc))
    if folder == "incomplete_marker":
        (run / "INCOMPLETE").write_text("killed while measuring")
    return run / "metrics.json" if folder != "complete" and name == "head" else run


@settings(max_examples=examples(120))
@given(st.lists(EDIT, max_size=4), FOLDER, st.lists(EDIT, max_size=2), FOLDER)
def test_gate_never_passes_invalid_or_incomplete_evidence(head_edits, head_folder, base_edits, base_folder):
    head, base = _apply(REAL, head_edits), _apply(REAL, base_edits)
    with scratch() as tmp:
        h = _write_run(tmp, "head", head, head_folder)
        b = _write_run(tmp, "base", base, base_folder)
        (tmp / "empty").mkdir()
        result = invoke("gate", h, "-b", b, "--no-config", "--max-increase-pp", "gpu_idle_pct=1000",
                        "--max-decrease-pct", "tokens_per_s=100")
    assert_no_traceback(result, EXIT_CODES - {3})
    if result.exit_code == 0:
        assert _valid(head, head_folder) and _valid(base, base_folder), (head_edits, head_folder, base_edits,
                                                                         base_folder, result.output[-1500:])


@settings(max_examples=examples(30))
@given(st.binary(max_size=64), st.sampled_from(["metrics.json", "run.json"]))
def test_gate_on_garbage_files(garbage, which):
    with scratch() as tmp:
        run = tmp / "run"
        run.mkdir()
        (run / "metrics.json").write_text(json.dumps(REAL))
        (run / "run.json").write_text(RUN_JSON)
        (run / which).write_bytes(garbage)
        result = invoke("gate", run, "--no-config", "--max", "gpu_idle_pct=100")
    assert_no_traceback(result, {2, 4})


@settings(max_examples=examples(30))
@given(st.binary(max_size=200) | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_gate_config_garbage_never_means_no_budget(config):
    """Whatever abprof.toml holds, the gate either reads budgets from it or refuses it: an unreadable
    config never falls back to "no budgets" (with no budget and no baseline the gate exits 2 anyway)."""
    with scratch() as tmp:
        (tmp / "m.json").write_text(json.dumps(REAL))
        (tmp / "abprof.toml").write_bytes(config)
        import os

        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            result = invoke("gate", tmp / "m.json", "--config", tmp / "abprof.toml")
        finally:
            os.chdir(cwd)
    assert_no_traceback(result, {0, 1, 2, 4})
    if result.exit_code != 2:  # it was read: it must have held a [gate] table with budgets
        assert b"gate" in config
