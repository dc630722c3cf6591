"""`abprof run` under faults (issue 15): a killed run never looks complete, files are 0644, an unusable
--out or a workload that cannot measure anything is refused before running (exit 2, one line), and a run
that measured nothing fails (exit 1, INCOMPLETE) instead of ending complete with 0 tokens/s."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asyncbatch_prof import runfolder as rf

ROOT = Path(__file__).resolve().parents[2]
SMALL = ("--requests", "4", "--prompt-len", "uniform:8:24", "--output-len", "fixed:6", "--engine-warmup-steps", "1",
         "--max-batch-tokens", "64", "--warmup-runs", "0")


def _one_line_error(result, code: int, message: str) -> None:
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[-1].startswith("abprof: error:") and message in lines[-1], result.output


def _refused_by_readers(run_dir: Path, cli) -> None:
    """gate, report and compare all refuse the folder (non-zero exit, no traceback)."""
    for args in (("gate", run_dir, "--no-config", "--max", "gpu_idle_pct=100"), ("report", run_dir),
                 ("compare", run_dir, run_dir)):
        result = cli(*args)
        assert result.exit_code != 0 and "Traceback" not in result.output, (args, result.output)


@pytest.mark.parametrize("wait_for, sig", [(rf.METRICS_JSON, signal.SIGKILL), (rf.REPORT_HTML, signal.SIGTERM),
                                           (rf.TRACE, signal.SIGKILL)])
def test_killed_run_never_looks_complete(tmp_path, cli, wait_for, sig):
    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "asyncbatch_prof", "run", "--mode", "sync", "--no-nvml",
                             "--out", str(out), *SMALL], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (out / wait_for).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    try:
        rf.check_complete(out)
    except Exception:
        _refused_by_readers(out, cli)  # killed before the end: nobody takes it as evidence
    else:  # the run had finished before the signal landed: then it is whole
        for name in (rf.RUN_JSON, rf.TRACE, rf.NVML_CSV, rf.REQUESTS_CSV, rf.METRICS_JSON, rf.REPORT_HTML):
            assert (out / name).is_file(), name
        assert rf.load_metrics(out)["metrics"]["tokens_per_s"] > 0
    assert not list(tmp_path.glob(".abprof-stage-*")), "no staging copy next to the run"


def test_run_folder_files_are_0644_under_umask_022(tmp_path, cli, no_nvml):
    old = os.umask(0o022)
    try:
        result = cli("run", "--mode", "sync", "--out", tmp_path / "r", *SMALL)
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "r").iterdir()}
    assert set(modes.values()) == {0o644}, modes


@pytest.mark.parametrize("make_out, message", [
    (lambda d: (d / "file.txt").write_text("x") and d / "file.txt", "already exists and is a file"),
    (lambda d: (d / "file.txt").write_text("x") and d / "file.txt" / "run", "is a file, not a folder"),
    (lambda d: d / ("x" * 300), "longer than this filesystem allows"),
])
def test_unusable_out_fails_before_the_run(tmp_path, cli, make_out, message):
    out = make_out(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    _one_line_error(cli("run", "--out", out, *SMALL), 2, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_out_fails_before_the_run(tmp_path, cli):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    _one_line_error(cli("run", "--out", locked / "run", *SMALL), 2, "no permission to write")


def test_profile_steps_past_the_workload(tmp_path, cli):
    result = cli("run", "--out", tmp_path / "x", "--profile-steps", "500:510", *SMALL)
    _one_line_error(result, 2, "--profile-steps: the profiled window starts at engine step 500")
    assert "--profile-start" not in result.output and not (tmp_path / "x").exists()


def test_run_that_never_reaches_the_window_fails(tmp_path, cli, no_nvml, monkeypatch):
    monkeypatch.setattr("asyncbatch_prof.pipeline.plan.check_window", lambda window, total: None)
    out = tmp_path / "late"
    result = cli("run", "--mode", "sync", "--out", out, "--profile-steps", "500:510", *SMALL)
    assert result.exit_code == 1 and "no trace" in result.output and "INCOMPLETE" in result.output, result.output
    assert "--profile-start" not in result.output
    _refused_by_readers(out, cli)


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_workload_jsonl_with_more_requests_than_it_holds(tmp_path, cli):
    jsonl = _jsonl(tmp_path / "w.jsonl", [{"prompt_len": 8, "output_len": 4}] * 3)
    _one_line_error(cli("run", "--out", tmp_path / "x", "--workload-jsonl", jsonl, "--requests", "50"), 2,
                    "holds 3 requests")
    from asyncbatch_prof.pipeline.plan import RunOptions, plan_runs

    plan = plan_runs(RunOptions(out=tmp_path / "p", workload_jsonl=jsonl, cuda=False))
    assert plan.runs[0][1].workload["num_requests"] == 3  # run.json records what runs


@pytest.mark.parametrize("rows, message", [
    ([], "the workload has no requests"),
    ([{"prompt_len": -5, "output_len": 4}], "must be >= 1"),
    ([{"prompt_len": 8, "output_len": -1}], "must be >= 1"),
])
def test_workload_that_cannot_produce_tokens_is_refused(tmp_path, cli, rows, message):
    jsonl = _jsonl(tmp_path / "w.jsonl", rows)
    _one_line_error(cli("run", "--out", tmp_path / "x", "--workload-jsonl", jsonl), 2, message)
    assert not (tmp_path / "x").exists()


def test_run_whose_requests_are_all_rejected_fails(tmp_path, cli, no_nvml):
    out = tmp_path / "rejected"
    result = cli("run", "--mode", "sync", "--out", out, "--requests", "2", "--prompt-len", "fixed:5000",
                 "--output-len", "fixed:4", "--engine-warmup-steps", "1", "--warmup-runs", "0",
                 "--profile-steps", "all", "--warmup-steps", "1")
    assert result.exit_code in (1, 2), result.output
    assert "rejected" in result.output and "Traceback" not in result.output, result.output
    if out.exists():
        _refused_by_readers(out, cli)
