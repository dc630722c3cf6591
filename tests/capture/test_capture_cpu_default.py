"""Issue 19 item 3 and issue 20: the CPU default (compute threads that leave the loops a core, llama-1b
refused in one line) and a terminal free of Kineto's start/stop lines and torch's cycle warning."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from asyncbatch_prof import runfolder as rf
from asyncbatch_prof.capture.profiler import PROFILER_LOG, ProfileWindow, StepProfiler
from asyncbatch_prof.errors import AbprofError
from asyncbatch_prof.pipeline.plan import RunOptions, plan_runs

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("cores, threads", [(1, 1), (2, 1), (8, 7)])
def test_cpu_threads_leave_a_core_to_the_loops(monkeypatch, keep_threads, cores, threads):
    from reference_engine import EngineConfig, LLMEngine

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    described = []
    for mode in ("sync", "async"):
        # in this process (the default device process computes on one thread, below)
        engine = LLMEngine(EngineConfig(model="tiny", mode=mode, device="cpu", cpu_worker_process=False))
        assert torch.get_num_threads() == threads
        described.append((engine.describe()["cpu_threads"], engine.describe()["usable_cores"]))
        assert f"{threads} torch compute thread(s) of {cores} usable core(s)" in engine.notes[0]
        engine.close()
        engine = LLMEngine(EngineConfig(model="tiny", mode=mode, device="cpu"))
        assert engine.describe()["cpu_worker_process"] and engine.describe()["cpu_threads"] == 1
        engine.close()
    assert described == [(threads, cores), (threads, cores)]  # the same in both modes


def test_device_process_does_not_hang_after_the_process_used_threads():
    """GNU OpenMP cannot run a parallel region in a process forked from one that has used its threads: the
    device process would hang on its first matrix product. It computes on one thread, so an engine built in a
    process that has already used several (a notebook, a test suite) still runs; cpu_threads > 1 keeps the
    device work in the process, and asking for both is refused."""
    code = """
import os
import torch
from reference_engine import EngineConfig, LLMEngine, WorkloadConfig, make_workload
os.sched_getaffinity = lambda pid: set(range(8))  # a laptop's cores: in-process, 7 compute threads
torch.set_num_threads(2)
a = torch.randn(800, 800)
(a @ a).sum()
for kw in ({}, {"cpu_threads": 2}):
    engine = LLMEngine(EngineConfig(mode="async", device="cpu", **kw))
    reqs = make_workload(WorkloadConfig(num_requests=4, prompt_len="uniform:16:64", output_len="fixed:4"),
                         engine.vocab_size)
    result = engine.generate(reqs)
    print(engine.describe()["cpu_worker_process"], engine.describe()["cpu_threads"], result.output_tokens)
    engine.close()
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:2] == ["True 1 16", "False 2 16"]
    with pytest.raises(ValueError, match="cpu_worker_process computes on one thread"):
        from reference_engine import EngineConfig

        EngineConfig(cpu_worker_process=True, cpu_threads=2)


def test_cpu_threads_asked_for_and_refused(keep_threads):
    from reference_engine import EngineConfig, LLMEngine

    engine = LLMEngine(EngineConfig(model="tiny", device="cpu", cpu_threads=2))
    assert torch.get_num_threads() == 2 and engine.describe()["cpu_threads"] == 2
    with pytest.raises(ValueError, match="cpu_threads must be None or a positive integer"):
        EngineConfig(cpu_threads=0)


def test_llama_1b_on_the_cpu_is_refused_in_one_line(tmp_path, cli):
    with pytest.raises(AbprofError, match="use --model tiny on the CPU"):
        plan_runs(RunOptions(out=tmp_path / "o", cuda=False, model="llama-1b"))
    assert plan_runs(RunOptions(out=tmp_path / "g", cuda=True, model="llama-1b")).runs
    result = cli("run", "--model", "llama-1b", "--out", tmp_path / "c")
    if not torch.cuda.is_available():
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
        assert "--model tiny" in result.output and not (tmp_path / "c").exists()


def test_split_prefill_decode_on_the_cpu_says_it_falls_back(tmp_path):
    notes = plan_runs(RunOptions(out=tmp_path / "o", cuda=False, split_prefill_decode=True)).notes
    assert [n for n in notes if n.startswith("--split-prefill-decode falls back on the CPU")]
    assert len("abprof: " + notes[-1]) <= 80  # one line in an 80-column terminal
    gpu = plan_runs(RunOptions(out=tmp_path / "g", cuda=True, split_prefill_decode=True)).notes
    assert not any("falls back" in n for n in gpu)


def test_profiler_start_and_stop_stay_off_the_terminal(tmp_path, capfd):
    import torch.profiler.profiler as torch_profiler

    torch_profiler._WARNINGS_SHOWN.clear()  # torch warns once per process
    profiler = StepProfiler(tmp_path / rf.TRACE, ProfileWindow(wait=1, warmup=1, active=2), cuda=False)
    with profiler:
        for i in range(6):
            torch.ones(4).sum()
            profiler.step(i)
    err = capfd.readouterr().err
    assert "profiler_start" not in err and "Profiler clears events" not in err, err
    assert profiler.trace_written
    log = tmp_path / PROFILER_LOG
    if log.exists():  # Kineto's lines are kept in the run folder
        assert "Profiler clears events" not in log.read_text()


def test_cli_run_stderr_has_no_kineto_lines(tmp_path):
    """A real run in a child process: fd 2 as a user's terminal would see it."""
    out = tmp_path / "r"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "asyncbatch_prof", "run", "--mode", "sync", "--requests", "2",
                           "--output-len", "fixed:8", "--prompt-len", "fixed:8", "--out", str(out), "--no-nvml"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "SyncActivityProfilerHandler" not in proc.stderr and "profiler_start" not in proc.stderr, proc.stderr
    assert "Profiler clears events" not in proc.stderr, proc.stderr
    log = out / PROFILER_LOG
    assert log.exists() and "profiler_start" in log.read_text()  # kept in the run folder, not lost


def _omp_max_threads() -> int | None:
    import ctypes

    with open("/proc/self/maps") as f:
        libs = sorted({part for line in f for part in line.split() if "libgomp" in part})
    return ctypes.CDLL(libs[0]).omp_get_max_threads() if libs else None


def test_async_worker_thread_uses_the_same_compute_threads(monkeypatch, keep_threads):
    """OpenMP's thread count is per thread: the async loop's worker must set it for itself."""
    from reference_engine import EngineConfig, LLMEngine

    if _omp_max_threads() is None:
        pytest.skip("torch is not built with GNU OpenMP here")
    engine = LLMEngine(EngineConfig(model="tiny", mode="async", device="cpu", cpu_threads=1, cpu_worker_process=False))
    seen = engine.runner.device_side._worker.submit(_omp_max_threads).result()
    engine.close()
    assert seen == 1 == _omp_max_threads()
