"""`abprof run` end to end on the CPU with the tiny model: complete folders, NVML absent or faked,
failures that leave INCOMPLETE folders, and bad options (exit 2, one line)."""

from __future__ import annotations

import gzip
import json
from html.parser import HTMLParser

import pytest

from asyncbatch_prof import runfolder as rf

SMALL = ("--requests", "4", "--prompt-len", "uniform:8:24", "--output-len", "fixed:6", "--engine-warmup-steps", "1",
         "--max-batch-tokens", "64", "--warmup-runs", "0")


def _html_ok(path) -> None:
    parser = HTMLParser()
    text = path.read_text()
    parser.feed(text)
    parser.close()
    assert text.lstrip().lower().startswith("<!doctype html") and "</html>" in text.lower()


def _complete(run_dir, mode: str) -> dict:
    rf.check_complete(run_dir)
    for name in (rf.RUN_JSON, rf.TRACE, rf.NVML_CSV, rf.REQUESTS_CSV, rf.METRICS_JSON, rf.REPORT_HTML):
        assert (run_dir / name).is_file(), name
    assert not list(run_dir.glob(".*")), "temporary files left behind"
    run = json.loads((run_dir / rf.RUN_JSON).read_text())
    assert run["status"] == "complete" and run["mode"] == mode and run["engine"] == "reference"
    assert run["environment"]["torch"] and run["command"][:2] == ["abprof", "run"]
    doc = rf.load_metrics(run_dir)
    for name in ("tokens_per_s", "requests_per_s", "ttft_ms_p50", "itl_ms_p99", "e2e_ms_p90"):
        assert doc["metrics"][name] > 0, name
    assert doc["metrics"]["preemptions"] == 0
    assert doc["serving"]["finished"] == 4 and doc["serving"]["output_tokens"] == 24
    assert not set(doc["metrics"]) & set(doc["absent"])
    _html_ok(run_dir / rf.REPORT_HTML)
    return doc


@pytest.fixture(scope="module")
def both_run(tmp_path_factory):
    from typer.testing import CliRunner

    from asyncbatch_prof.cli import app

    out = tmp_path_factory.mktemp("both") / "out"
    result = CliRunner().invoke(app, ["run", "--mode", "both", "--no-nvml", "--out", str(out), *SMALL])
    return out, result


def test_capture_cli_both_writes_two_runs_and_comparison(both_run):
    out, result = both_run
    assert result.exit_code == 0, result.output
    docs = [_complete(out / m, m) for m in ("sync", "async")]
    _html_ok(out / "compare.html")
    assert "abprof run summary" in result.output and "no CUDA device" in result.output
    runs = [json.loads((out / m / rf.RUN_JSON).read_text()) for m in ("sync", "async")]
    assert runs[0]["workload"] == runs[1]["workload"] and runs[0]["seed"] == runs[1]["seed"]
    # same greedy workload and weights: both loops produce the same tokens
    assert (out / "sync" / rf.REQUESTS_CSV).read_text().count("\n") == 5
    assert docs[0]["serving"]["output_tokens"] == docs[1]["serving"]["output_tokens"]
    # the CPU device as a GPU: the sync loop's device waits for the host between steps (how much the async
    # loop's overlaps is a matter of this tiny workload's timing: reports/cpu-default.md has the default's)
    assert docs[0]["metrics"]["host_bound_pct"]["step"] > 0
    for doc, run in zip(docs, runs):  # CPU run: the device process's steps are the device ops
        assert 0 <= doc["metrics"]["gpu_idle_pct"]["step"] < 100 and doc["run"]["device"] == "cpu"
        assert any("cpu_device_op rows" in note for note in run["notes"])
        assert doc["absent"]["nvml_util_pct"] == "NVML sampling turned off"
        # the analyzer read the trace: the engine thread by its annotations, and every profiled step but the
        # first (which the metric contract leaves out)
        assert doc["trace"]["engine_thread"]["chosen_by"] == "annotations"
        first, last = run["profiled_steps"]
        assert doc["trace"]["profiled_steps"] == last - first and run["report"]["fallback_reason"] is None


def test_capture_cli_profiles_the_window(tmp_path, cli, no_nvml):
    out = tmp_path / "sync"
    result = cli("run", "--mode", "sync", "--out", out, "--profile-steps", "2:4", "--warmup-steps", "1",
                 "--measure-overhead", *SMALL)
    assert result.exit_code == 0, result.output
    doc = _complete(out, "sync")
    run = json.loads((out / rf.RUN_JSON).read_text())
    assert run["profiled_steps"] == [2, 4] and run["nvml"]["available"] is False
    assert "pynvml" in doc["absent"]["nvml_util_pct"] and "pynvml" in run["nvml"]["reason"]
    # a CPU run measures its device process: the summary names it so
    assert "gpu_idle_pct" in doc["metrics"] and "device idle (trace)" in result.output
    with gzip.open(out / rf.TRACE, "rt") as f:
        events = json.load(f)["traceEvents"]
    steps = [e for e in events if e.get("name") == "abprof.step" and e.get("ph") == "X"]
    assert len(steps) == 3  # engine steps 2, 3 and 4, no more
    overhead = doc["profiler_overhead"]
    assert overhead["unprofiled_tokens_per_s"] > 0 and overhead["profiled_tokens_per_s"] == doc["metrics"][
        "tokens_per_s"]
    assert "profiler overhead %" in result.output
    # the window's three steps against the same steps of the unprofiled pass, which scheduled alike
    assert overhead["window_steps_compared"] == 3 and isinstance(overhead["window_step_overhead_pct"], float)
    assert "per window step %" in result.output


def test_window_step_overhead_compares_the_same_steps():
    from asyncbatch_prof.capture.recorder import window_step_overhead

    plain = [(0.0, 1.0), (1.0, 3.0), (3.0, 4.0), (4.0, 8.0)]
    profiled = [(0.0, 1.5), (1.5, 3.7), (3.7, 4.8), (4.8, 9.0)]
    got = window_step_overhead(profiled, plain, [1, 3])
    # step 1: 2.2 / 2 = 1.1, step 2: 1.1 / 1 = 1.1, step 3: 4.2 / 4 = 1.05 → median 1.1
    assert got == {"window_step_overhead_pct": 10.0, "window_steps_compared": 3}
    assert "scheduled differently (4 steps unprofiled, 3 profiled)" in \
        window_step_overhead(profiled[:3], plain, [1, 2])["window_step_overhead_reason"]
    assert "step times" in window_step_overhead([], plain, [1, 2])["window_step_overhead_reason"]
    assert window_step_overhead(profiled, plain, None) == {"window_step_overhead_reason": "no profiled window"}


def test_capture_cli_async_with_nvml(tmp_path, cli, fake_nvml):
    out = tmp_path / "async"
    result = cli("run", "--mode", "async", "--out", out, *SMALL)
    assert result.exit_code == 0, result.output
    doc = _complete(out, "async")
    assert doc["metrics"]["joules_per_token"] > 0 and doc["metrics"]["clock_throttled"] is False
    assert doc["nvml"]["available"] is True and doc["nvml"]["gpu"] == "Fake H100"
    series = {line.split(",")[1] for line in (out / rf.NVML_CSV).read_text().splitlines()[1:]}
    assert {"power_w", "energy_mj", "sm_clock_mhz", "clock_event_reasons"} <= series


@pytest.mark.parametrize("error, reason, code", [
    (RuntimeError("boom in step 3"), "RuntimeError: boom in step 3", 1),
    (KeyboardInterrupt(), "interrupted (Ctrl-C)", 130),
])
def test_capture_cli_failure_leaves_incomplete(tmp_path, cli, no_nvml, monkeypatch, error, reason, code):
    from reference_engine import LLMEngine

    real = LLMEngine.generate
    calls = {"n": 0}

    def failing(self, requests, sampling=None, on_step=None):
        calls["n"] += 1
        if calls["n"] == 1:  # the engine's own warm-up
            return real(self, requests, sampling, on_step)

        def step(i):
            on_step(i)
            if i == 3:
                raise error

        return real(self, requests, sampling, step)

    monkeypatch.setattr(LLMEngine, "generate", failing)
    out = tmp_path / "broken"
    result = cli("run", "--mode", "sync", "--out", out, *SMALL)
    assert result.exit_code == code, result.output
    assert "INCOMPLETE" in result.output and "Traceback" not in result.output
    assert reason in (out / rf.INCOMPLETE).read_text()
    run = json.loads((out / rf.RUN_JSON).read_text())
    assert run["status"] == "incomplete" and reason in run["reason"]
    assert not (out / rf.METRICS_JSON).exists() and not (out / rf.REPORT_HTML).exists()
    with pytest.raises(Exception, match="incomplete"):
        rf.check_complete(out)


@pytest.mark.parametrize("args, message", [
    (("--mode", "fast"), "--mode must be sync, async or both"),
    (("--engine", "vllm"), "--engine must be reference or transformers"),
    (("--prompt-len", "uniform:9"), "bad length distribution"),
    (("--requests", "0"), "--requests must be >= 1"),
    (("--profile-steps", "5:2"), "--profile-steps must be"),
    (("--profile-steps", "0:3"), "profiler warm-up steps must come before it"),
    (("--warmup-steps", "0"), "--warmup-steps must be >= 1"),
    (("--warmup-runs", "-1"), "--warmup-runs must be >= 0"),
    (("--cuda-graphs",), "--cuda-graphs needs a CUDA device"),
    (("--model", "no/such/folder"), "neither a preset"),
    (("--max-seqs", "0"), "max_seqs must be a positive integer"),
    (("--workload-jsonl", "missing.jsonl"), "file not found"),
])
def test_capture_cli_bad_options(tmp_path, cli, args, message):
    result = cli("run", "--out", tmp_path / "x", *args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("abprof: error:") and message in lines[0], result.output
    assert not (tmp_path / "x").exists()


def test_capture_cli_refuses_a_used_folder(tmp_path, cli):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("x")
    result = cli("run", "--out", tmp_path / "used")
    assert result.exit_code == 2 and "already exists and is not empty" in result.output
    assert sorted(p.name for p in (tmp_path / "used").iterdir()) == ["keep.txt"]
