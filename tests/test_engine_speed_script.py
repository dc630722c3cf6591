"""benchmarks/engine_speed.py on the CPU: the --dry-run end to end (each part in its own process, from a
folder where the package need not be importable), and the report assembly for parts that failed or timed out."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "engine_speed.py"


def load_script():
    spec = importlib.util.spec_from_file_location("engine_speed", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("engine-speed")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--skip-transformers", "--out", str(out)],
                          capture_output=True, text=True, timeout=240, cwd=out, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, json.loads((out / "engine-speed.json").read_text())


def test_decode_rows_count_the_bytes_the_step_reads(dry_run):
    _, doc = dry_run
    # tiny preset (hidden 64, 2 layers, 4 heads / 2 KV heads of 16, intermediate 128, vocab 512), fp32 on the CPU:
    # per layer qkv 64*128 + o 64*64 + gate_up 64*256 + down 128*64 + 2 norms of 64; final norm; LM head 512*64
    weights = (2 * (64 * 128 + 64 * 64 + 64 * 256 + 128 * 64 + 2 * 64) + 64 + 512 * 64) * 4
    assert [(r["batch"], r["ctx"]) for r in doc["decode"]] == [(8, 48), (4, 48)]
    assert all(r["unfused_step_ms"] > 0 for r in doc["decode"])  # the REFERENCE_ENGINE_FUSED=0 part ran too
    assert doc["runs"]["decode-unfused"]["status"] == "ok"
    bw = doc["bandwidth"]["tb_s"]
    for r in doc["decode"]:
        assert r["weight_bytes"] == weights
        assert r["kv_bytes"] == 2 * 2 * 2 * 16 * r["ctx"] * r["batch"] * 4
        assert r["step_ms"] > 0 and r["logits_finite"]
        assert r["roofline_ms"] == pytest.approx((weights + r["kv_bytes"]) / (bw * 1e12) * 1e3)
        assert r["fraction"] == pytest.approx(r["roofline_ms"] / r["step_ms"])
    assert doc["bandwidth"]["datasheet_tb_s"] is None  # the CPU has no HBM datasheet
    assert all(r["roofline_datasheet_ms"] is None for r in doc["decode"])


def test_datasheet_by_device_name():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from gpu_datasheet import lookup
    assert lookup("NVIDIA H200").hbm_tb_s == 4.8
    assert lookup("NVIDIA H100 80GB HBM3").hbm_tb_s == 3.35
    assert lookup("NVIDIA H100 PCIe").hbm_tb_s == 2.0
    assert lookup("NVIDIA GH200 480GB").name == "GH200"  # not the H200 its name contains
    assert lookup("NVIDIA H20").name == "H20"
    assert lookup("NVIDIA A100-SXM4-40GB").hbm_tb_s == 1.555
    assert lookup("NVIDIA GeForce RTX 4090") is None


def test_workload_and_host_split(dry_run):
    out, doc = dry_run
    wl = doc["workload"]
    assert wl["reference_async_tok_s"] > 0 and wl["reference_sync_tok_s"] > 0
    assert wl["tokens_identical"] is True and wl["identical_requests"] == wl["requests"] == 8
    assert wl["reference_sync"]["output_tokens"] == 8 * 8
    assert "transformers_best_tok_s" not in wl
    assert doc["issue_checks"]["tokens_identical_sync_async"] is True
    assert doc["issue_checks"]["decode_256x704_at_least_half_roofline"] is None  # no such row in the dry run
    assert doc["absent"]["workload.transformers_best_tok_s"] == "no transformers run finished"
    assert doc["runs"]["transformers-sync"]["status"] == "skipped"
    rows = {(h["mode"], h["running_seqs"]): h for h in doc["host_gpu"]}
    assert set(rows) == {(m, n) for m in ("sync", "async") for n in (2, 4, 8)}
    for h in rows.values():
        assert h["steps"] >= 5 and h["host_ms"] > 0 and h["gpu_ms"] is None  # no CUDA events on the CPU
        assert h["host_ms"] == pytest.approx(h["schedule_ms"] + h["prepare_ms"] + h["update_ms"], rel=0.5)
    md = (out / "engine-speed.md").read_text()
    assert "DRY RUN" in md and "| reference | async | ok |" in md and "--skip-transformers" in md


def test_failed_and_timed_out_parts_are_absent_with_reasons(tmp_path):
    mod = load_script()
    parts = tmp_path / "engine-speed-parts"
    parts.mkdir()
    (parts / "tokens-reference-sync.json").write_text(json.dumps([[1, 2], [3, 4]]))
    (parts / "tokens-transformers-sync.json").write_text(json.dumps([[1, 2], [3, 5]]))
    ok = {"status": "ok", "seconds": 1.0, "result": {"output_tok_s": 100.0, "wall_s": 1.0, "num_steps": 3}}
    runs = {"decode": {"status": "timeout", "reason": "timed out after 150 s", "seconds": 150.0},
            "reference-sync": ok,
            "reference-async": {"status": "failed", "reason": "exit code 1: boom", "seconds": 2.0},
            "transformers-sync": {**ok, "result": {**ok["result"], "output_tok_s": 10.0}},
            "transformers-async": {"status": "timeout", "reason": "timed out after 160 s", "seconds": 160.0}}
    env = {"dry_run": True, "gpu": "x", "driver": None, "torch": "t", "transformers": "tf", "triton": None,
           "python": "3", "date_utc": "now"}
    doc = mod.assemble(runs, tmp_path, env, "cmd")
    assert doc["absent"]["decode"] == "timed out after 150 s"
    assert doc["absent"]["workload.reference_async_tok_s"] == "exit code 1: boom"
    assert doc["absent"]["workload.tokens_identical"] == "a reference run did not finish"
    assert doc["workload"]["transformers_best_tok_s"] == 10.0
    assert doc["workload"]["transformers_sync_requests_identical_to_reference_sync"] == 1
    assert "tokens_identical" not in doc["workload"] and "decode" not in doc
    md = mod.markdown(doc)
    assert "| transformers | async | timeout: timed out after 160 s |" in md


def test_part_with_no_budget_left_is_skipped(tmp_path):
    mod = load_script()
    args = mod.argparse.Namespace(dry_run=True)
    res = mod.spawn(args, "decode", tmp_path, 3.0)
    assert res["status"] == "skipped" and "budget" in res["reason"]


def test_issue_checks_follow_the_numbers():
    mod = load_script()
    doc = {"decode": [{"batch": 256, "ctx": 704, "fraction": 0.62}, {"batch": 64, "ctx": 704, "fraction": 0.41}],
           "workload": {"reference_async_over_transformers_best": 12.0, "tokens_identical": False}}
    assert mod.issue_checks(doc) == {"decode_256x704_at_least_half_roofline": True,
                                     "decode_64x704_at_least_half_roofline": False,
                                     "reference_async_at_least_10x_transformers_best": True,
                                     "tokens_identical_sync_async": False}
    assert set(mod.issue_checks({"workload": {}}).values()) == {None}
