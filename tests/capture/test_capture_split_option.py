"""`abprof run --split-prefill-decode`: reaches the reference engine's config, run.json and the repeat
command; refused for the transformers engine."""

from __future__ import annotations

import gzip
import json

from asyncbatch_prof import runfolder as rf


def test_split_flag_reaches_the_engine_and_the_trace(tmp_path, cli, no_nvml):
    out = tmp_path / "split"
    result = cli("run", "--mode", "sync", "--out", out, "--split-prefill-decode", "--requests", "4",
                 "--prompt-len", "fixed:40", "--output-len", "fixed:6", "--max-batch-tokens", "24",
                 "--engine-warmup-steps", "0", "--warmup-runs", "0", "--profile-steps", "all", "--warmup-steps", "1")
    assert result.exit_code == 0, result.output
    # issue 20: the CPU fallback is said in one line, not only noted in run.json
    said = [line for line in result.output.splitlines() if "--split-prefill-decode falls back on the CPU" in line]
    assert len(said) == 1 and said[0].startswith("abprof: ")
    rf.check_complete(out)
    run = json.loads((out / rf.RUN_JSON).read_text())
    assert run["config"]["split_prefill_decode"] is True
    assert "--split-prefill-decode" in run["command"]
    assert run["model"]["split_prefill_decode"] is True
    with gzip.open(out / rf.TRACE, "rt") as f:
        names = {e.get("name") for e in json.load(f)["traceEvents"]}
    # the two batches' own ranges are the device process's (tests/engine/test_engine_split.py checks them in
    # one process); the host's hand-over is here
    assert "abprof.forward" in names and run["model"]["cpu_worker_process"] is True


def test_split_flag_refused_for_transformers(tmp_path, cli):
    result = cli("run", "--engine", "transformers", "--mode", "sync", "--split-prefill-decode",
                 "--out", tmp_path / "t")
    assert result.exit_code == 2
    assert "--split-prefill-decode is an option of the reference engine" in result.output
