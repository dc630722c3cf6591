"""benchmarks/overhead.py on the CPU (the --dry-run end to end, each loop in its own process) and its block
layout; benchmarks/graph_cupti.py's page from the committed H200 results."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_blocks_alternate_off_warm_on_after_the_steady_start():
    ov = load("overhead")
    cfg = {"steady": (10, 40), "blocks": (3, 1, 2)}
    phases = [ov.phase_of(k, cfg) for k in range(8, 24)]
    assert phases == ["pre", "pre"] + ["off"] * 3 + ["warm"] + ["on"] * 2 + ["off"] * 3 + ["warm"] + ["on"] * 2 \
        + ["off"] * 2


def test_mean_ci95_is_a_t_interval():
    ov = load("overhead")
    mean, ci = ov.mean_ci95([1.0, 2.0, 3.0])
    assert mean == 2.0 and ci == pytest.approx([2.0 - 4.303 / 3 ** 0.5, 2.0 + 4.303 / 3 ** 0.5])
    assert ov.mean_ci95([5.0]) == (5.0, None)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("overhead")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "overhead.py"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=280, cwd=out, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, json.loads((out / "overhead.json").read_text())


def test_dry_run_reports_every_arm_of_both_loops(dry_run):
    out, doc = dry_run
    for mode in ("sync", "async"):
        summary = doc["summary"][mode]
        assert summary["overhead_pct"] == doc[mode]["arms"]["default"]["overhead_pct"]
        lo, hi = summary["ci95"]
        assert lo <= summary["overhead_pct"] <= hi
        part = doc[mode]
        assert set(part["arms"]) == {"nvml", "default", "main-thread", "cuda-only", "cpu-only"}
        blocks = [p for p in part["passes"] if p["arm"] != "nvml"]
        # tiny preset: steady steps 6-30 in blocks of 2 off / 1 warm / 2 on; the first off step after a stop
        # is left out, so one off step per block counts
        assert all(p["on_steps"] >= 8 and p["off_steps"] >= 4 for p in blocks)
        assert all(p["switch_ms_max"] is not None for p in blocks)
        assert len(part["lingering"]["passes_before_ms"]) == 3
    md = (out / "overhead.md").read_text()
    assert "DRY RUN" in md and "| sync | default |" in md and "| async | cpu-only |" in md


def test_dry_run_splits_the_extra_time_into_phases(dry_run):
    """Each profiler arm says where a recorded step's extra time goes: the step and its phases, us per step; the
    sync loop's host blocks in ``wait`` every step, so its wait phase is timed too (no GPU: no device time)."""
    out, doc = dry_run
    for mode in ("sync", "async"):
        for arm, a in doc[mode]["arms"].items():
            if arm == "nvml":
                assert "delta_us" not in a
                continue
            assert set(a["delta_us"]) == {"step", "prepare", "enqueue", "wait", "rest"}
            passes = [p for p in doc[mode]["passes"] if p["arm"] == arm]
            assert a["delta_us"]["step"] == pytest.approx(sum(p["delta_us"]["step"] for p in passes) / len(passes))
            # a step's phases account for its wall time: the on and off medians of each differ by less than a step
            assert all(abs(v) < 1e3 * max(p["on_ms_median"] for p in passes) for v in a["delta_us"].values())
    assert "| sync | default | " in (out / "overhead.md").read_text().split("Where a recorded step's extra time")[1]


def test_pool_joins_the_repeats_of_several_runs(dry_run, tmp_path):
    """``--pool``: the repeats of several runs in one interval (more repeats, same mean when the runs agree),
    each run's own figures listed; runs from another GPU or torch are refused in one line."""
    out, doc = dry_run
    ov = load("overhead")
    first = tmp_path / "a.json"
    first.write_text(json.dumps(doc))
    assert ov.main(["--out", str(tmp_path / "pooled"), "--pool", str(first), str(out / "overhead.json")]) == 0
    pooled = json.loads((tmp_path / "pooled" / "overhead.json").read_text())
    for mode in ("sync", "async"):
        mine, both = doc[mode]["arms"]["default"], pooled[mode]["arms"]["default"]
        assert both["per_repeat_pct"] == mine["per_repeat_pct"] * 2
        assert both["overhead_pct"] == pytest.approx(mine["overhead_pct"])
        assert both["ci95"][1] - both["ci95"][0] < mine["ci95"][1] - mine["ci95"][0]
        assert pooled["summary"][mode]["ci95"] == both["ci95"]
        assert len({p["repeat"] for p in pooled[mode]["passes"]}) == 2 * len({p["repeat"] for p in doc[mode]["passes"]})
    md = (tmp_path / "pooled" / "overhead.md").read_text()
    assert md.count("- Pooled: ") == 2
    other = tmp_path / "b.json"
    other.write_text(json.dumps({**doc, "environment": {**doc["environment"], "torch": "0.0"}}))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "overhead.py"), "--out", str(tmp_path / "x"),
                           "--pool", str(first), str(other)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "torch 0.0 differs" in proc.stderr and "Traceback" not in proc.stderr


def test_graph_cupti_page_shows_the_lost_records_under_teardown(tmp_path):
    gc = load("graph_cupti")
    runs = [REPO / "reports" / "h200" / "graph-cupti.json", REPO / "reports" / "h200" / "graph-cupti-teardown.json"]
    assert gc.main(["--out", str(tmp_path), "--render", *map(str, runs)]) == 0
    md = (tmp_path / "graph-cupti.md").read_text()
    assert md == (REPO / "reports" / "h200" / "graph-cupti.md").read_text()
    torn = json.loads(runs[1].read_text())
    assert torn["teardown_cupti_env"] == "1"
    # with teardown, the CPU+CUDA sessions after the first recorded no GPU activity at all
    assert [torn[k]["cpu+cuda"]["gpu_events_in_trace"] for k in ("before", "after-init", "inside")] == [0, 0, 0]
    assert json.loads(runs[0].read_text())["before"]["cpu+cuda"]["gpu_events_in_trace"] > 0


def test_cupti_lingering_dry_run_times_each_phase(tmp_path):
    """benchmarks/cupti_lingering.py on the CPU: clean, recorded and after passes in a fresh process per loop,
    each step split into launch, wait and the rest."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cupti_lingering.py"), "--dry-run", "--out",
                           str(tmp_path), "--repeats", "1", "--variants", "pieces", "--clean-passes", "2"],
                          capture_output=True, text=True, timeout=280, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads((tmp_path / "cupti-lingering.json").read_text())
    assert set(doc["summary"]) == {"sync/pieces", "async/pieces"}
    for part in doc["parts"]:
        assert len(part["clean"]) == len(part["after"]) == 2 and len(part["recorded"]) == 1
        w = part["clean"][0]["window"]
        assert 0 < w["launch_ms"] < w["ms"] and 0 <= w["wait_ms"] < w["ms"] and w["rest_ms"] > 0  # medians of parts
        assert part["recorded"][0]["gpu_events"] == 0  # the CPU: no GPU records


def test_critical_path_breaks_down_the_steps_before_the_first_graph(capsys):
    cp = load("critical_path")
    with __import__("gzip").open(REPO / "tests" / "data" / "traces" / "reference-h200-async-pieces.json.gz", "rt") as f:
        out = cp.breakdown(json.load(f)["traceEvents"])
    assert out["graph_launches_per_step"] == 3 and out["steps"] == 64
    rows = out["rows"]
    assert {"graph launch 1 (host)", "graph launch 3 (host)", "step start to first kernel"} <= set(rows)
    assert rows["step start to first kernel"]["median_us"] < rows["step"]["median_us"]
    # 2 H2D copies, 2 staging copies and, in the async loop, the copy of the previous step's tokens into the ids
    assert rows["before the first graph: cpu_op aten::copy_"]["per_step"] == 5
    assert cp.main([str(REPO / "tests" / "data" / "traces" / "hta-simple_add.json.gz")]) == 2
    assert "no abprof.step annotations" in capsys.readouterr().err
