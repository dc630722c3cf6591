"""Run options of the reference engine's loops. `abprof run --one-graph`: reaches the reference engine's config (``piecewise_graphs=False``), run.json and the
repeat command; refused for the transformers engine. The pieces themselves run on CUDA only
(tests/engine/test_engine_cuda.py). On the CPU a run says in one line that a child process plays the GPU."""

from __future__ import annotations

import json

from asyncbatch_prof import runfolder as rf


def test_one_graph_flag_reaches_the_engine_config(tmp_path, cli, no_nvml):
    out = tmp_path / "one"
    result = cli("run", "--mode", "sync", "--out", out, "--one-graph", "--requests", "2", "--output-len", "fixed:4",
                 "--engine-warmup-steps", "0", "--warmup-runs", "0", "--profile-steps", "all", "--warmup-steps", "1")
    assert result.exit_code == 0, result.output
    run = json.loads((out / rf.RUN_JSON).read_text())
    assert run["config"]["piecewise_graphs"] is False
    assert "--one-graph" in run["command"]


def test_one_graph_flag_refused_for_transformers(tmp_path, cli):
    result = cli("run", "--engine", "transformers", "--mode", "sync", "--one-graph", "--out", tmp_path / "t")
    assert result.exit_code == 2
    assert "--one-graph is an option of the reference engine" in result.output


def test_the_cpu_run_says_a_child_process_plays_the_gpu(tmp_path, cli, no_nvml):
    """issue 19 item 3: on the CPU both loops hand their device work to a child process, and the run says in one
    line that this work is not in the trace."""
    for mode in ("async", "sync"):
        result = cli("run", "--mode", mode, "--out", tmp_path / mode, "--requests", "2", "--output-len", "fixed:4",
                     "--engine-warmup-steps", "0", "--warmup-runs", "0", "--profile-steps", "all", "--warmup-steps", "1")
        assert result.exit_code == 0, result.output
        note = [line for line in result.output.splitlines() if "a child process plays the GPU" in line]
        assert len(note) == 1 and len(note[0]) <= 80, result.output
        run = json.loads((tmp_path / mode / rf.RUN_JSON).read_text())
        assert run["model"]["cpu_worker_process"] is True
