"""`abprof run --tp N` on the CPU (gloo, tiny model): one folder with a trace per rank, per-rank and merged
metrics, and the same tokens as TP=1 and as a plain run (run.json's tokens_sha256); bad --tp options."""

from __future__ import annotations

import json

import pytest

from asyncbatch_prof import runfolder as rf

SMALL = ("--requests", "3", "--prompt-len", "uniform:8:16", "--output-len", "fixed:6", "--engine-warmup-steps", "1",
         "--max-batch-tokens", "64", "--warmup-runs", "0", "--warmup-steps", "1", "--profile-steps", "1:4",
         "--no-nvml")


def _run(*args: str):
    from typer.testing import CliRunner

    from asyncbatch_prof.cli import app

    return CliRunner().invoke(app, ["run", *args, *SMALL])


@pytest.fixture(scope="module")
def tp_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("tp")
    results = {"tp2": _run("--tp", "2", "--mode", "both", "--out", str(base / "tp2")),
               "tp1": _run("--tp", "1", "--mode", "sync", "--out", str(base / "tp1")),
               "plain": _run("--mode", "sync", "--out", str(base / "plain"))}
    return base, results


def _run_json(path) -> dict:
    return json.loads((path / rf.RUN_JSON).read_text())


@pytest.mark.slow
def test_tp2_both_has_tp1s_and_plain_tokens(tp_runs):
    base, results = tp_runs
    for name, result in results.items():
        assert result.exit_code == 0, (name, result.output)
    digests = {name: _run_json(path)["tokens_sha256"] for name, path in
               [("tp2/sync", base / "tp2" / "sync"), ("tp2/async", base / "tp2" / "async"),
                ("tp1", base / "tp1"), ("plain", base / "plain")]}
    assert len(digests["plain"]) == 64 and len(set(digests.values())) == 1, digests
    assert "tokens: identical in all 2 runs" in results["tp2"].output


@pytest.mark.slow
def test_tp_run_folder_layout_and_merged_metrics(tp_runs):
    base, _ = tp_runs
    for mode in ("sync", "async"):
        run_dir = base / "tp2" / mode
        rf.check_complete(run_dir)
        run = _run_json(run_dir)
        assert run["tp"] == 2 and run["mode"] == mode and [r["rank"] for r in run["ranks"]] == [0, 1]
        assert all(r["describe"] for r in run["ranks"])
        for name in ("traces/rank0.json.gz", "traces/rank1.json.gz", "ranks/rank0.metrics.json",
                     "ranks/rank1.metrics.json", rf.REQUESTS_CSV, rf.REPORT_HTML):
            assert (run_dir / name).is_file(), name
        assert not (run_dir / rf.TRACE).exists()
        doc = rf.load_metrics(run_dir)
        assert doc["rank_set"]["ranks"] == 2 and set(doc["ranks"]) == {"0", "1"}
        assert doc["metrics"]["tokens_per_s"] > 0 and doc["serving"]["finished"] == 3
        assert "no GPU activity" in doc["absent"]["gpu_idle_pct_worst_rank"]  # the CPU has no device to merge
        for r in (0, 1):
            rank_doc = json.loads((run_dir / f"ranks/rank{r}.metrics.json").read_text())
            assert rank_doc["trace"]["path"].endswith(f"rank{r}.json.gz")
    assert _run_json(base / "tp1")["tp"] == 1 and (base / "tp1" / "traces" / "rank0.json.gz").is_file()


@pytest.mark.slow
def test_compare_json_carries_the_digest_verdict(tp_runs):
    from typer.testing import CliRunner

    from asyncbatch_prof.cli import app

    base, _ = tp_runs
    result = CliRunner().invoke(app, ["compare", str(base / "plain"), str(base / "tp2" / "sync"), "--json",
                                      "--out", str(base / "cmp.html")])
    assert result.exit_code == 0, result.output
    tokens = json.loads(result.stdout)["tokens"]
    assert tokens["tokens_identical"] is True and len(tokens["tokens_sha256"]) == 2


@pytest.mark.parametrize("args, message", [
    (("--tp", "2", "--engine", "transformers", "--mode", "sync"), "--tp is an option of the reference engine"),
    (("--tp", "0",), "--tp must be >= 1"),
    (("--tp-overlap",), "--tp-overlap needs --tp N"),
    (("--tp", "2", "--measure-overhead"), "not supported with --tp"),
])
def test_bad_tp_options_one_line_exit_2(tmp_path, args, message):
    result = _run(*args, "--out", str(tmp_path / "x"))
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x").exists()


def test_tokens_comparison_says_differ_and_missing(tmp_path):
    from types import SimpleNamespace

    from asyncbatch_prof.report.compare import tokens_comparison

    def view(name, digest):
        return SimpleNamespace(run_dir=tmp_path / name, run={"tokens_sha256": digest} if digest else {})

    differ = tokens_comparison([view("a", "1" * 64), view("b", "2" * 64)])
    assert differ["tokens_identical"] is False and differ["line"].startswith("tokens: differ")
    missing = tokens_comparison([view("a", "1" * 64), view("b", None)])
    assert missing["tokens_identical"] is None and "b has no tokens_sha256" in missing["line"]


def test_tp_overlap_refused_in_one_line_when_the_engine_lacks_it(tmp_path):
    from asyncbatch_prof.engines import engine_has_option

    if engine_has_option("tp_overlap"):
        pytest.skip("this engine has EngineConfig.tp_overlap")
    result = _run("--tp", "2", "--tp-overlap", "--out", str(tmp_path / "x"))
    assert result.exit_code == 2 and "no communication overlap" in result.output


def test_tp_folder_of_gpu_ranks_merges_as_abprof_analyze_does(tmp_path):
    """The merged path of a TP run (GPU traces: HTA's public two-rank set placed as traces/rank{r}.json.gz):
    each trace parsed once, rank figures equal to analyze_rank_set on the same folder."""
    import shutil
    from pathlib import Path

    from asyncbatch_prof.analysis.rankset import analyze_rank_set
    from asyncbatch_prof.pipeline.rankset import write_rank_set
    from asyncbatch_prof.pipeline.tp import _analyze_ranks

    data = Path(__file__).resolve().parents[1] / "data" / "traces" / "hta_ranks"
    (tmp_path / "traces").mkdir()
    for r in (0, 1):
        shutil.copy(data / f"sampled_rank-{r}.json.gz", tmp_path / "traces" / f"rank{r}.json.gz")
    (tmp_path / rf.RUN_JSON).write_text(json.dumps({"tp": 2}))
    analyses, rs, reason = _analyze_ranks(tmp_path, 2, {"tp": 2})
    assert reason is None and analyses[0].device is not None and set(rs.ranks) == {0, 1}
    alone = analyze_rank_set(tmp_path, jobs=1)
    for r in ("0", "1"):
        assert rs.doc["ranks"][r]["gpu_idle_pct"] == alone.doc["ranks"][r]["gpu_idle_pct"] is not None
    base = {"metrics": {"tokens_per_s": 1.0}, "absent": {}}
    write_rank_set(rs, tmp_path, base)
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["metrics"]["gpu_idle_pct_worst_rank"] == alone.doc["metrics"]["gpu_idle_pct_worst_rank"]
    assert doc["metrics"]["tokens_per_s"] == 1.0 and (tmp_path / "ranks" / "rank1.metrics.json").is_file()
