"""Rank sets: per-rank figures equal each rank analyzed alone, collective wait/transfer, devices of one file."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from asyncbatch_prof.analysis import TraceError, analyze
from asyncbatch_prof.analysis.rankset import analyze_rank_set
from asyncbatch_prof.cli import app

HTA = Path(__file__).resolve().parents[1] / "data" / "traces" / "hta_ranks"
FILES = [HTA / "sampled_rank-0.json.gz", HTA / "sampled_rank-1.json.gz"]
NCCL = "ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevComm*, unsigned long, ncclWork*)"


def _approx_metrics(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        assert value == pytest.approx(b[name], rel=1e-9, abs=1e-6), name


def test_hta_rank_folder_each_rank_equals_the_rank_alone(tmp_path):
    # names that sort against the rank order: the rank must come from distributedInfo
    folder = tmp_path / "set"
    folder.mkdir()
    shutil.copy(FILES[0], folder / "b.json.gz")
    shutil.copy(FILES[1], folder / "a.json.gz")
    rs = analyze_rank_set(folder, jobs=2)
    assert sorted(rs.ranks) == [0, 1]
    assert Path(rs.ranks[0].path).name == "b.json.gz"
    for rank, path in enumerate(FILES):
        alone = analyze(path)
        assert rs.ranks[rank].doc["metrics"] == alone.doc["metrics"]
        assert rs.doc["ranks"][str(rank)]["gpu_idle_pct"] == alone.gpu_idle_pct
    idle = [analyze(p).gpu_idle_pct for p in FILES]
    assert rs.doc["metrics"]["gpu_idle_pct_worst_rank"] == max(idle)
    assert 0 < rs.doc["metrics"]["comm_pct"]["kernel"] < 100
    # the real set has only point-to-point SendRecv kernels: no matched collective, said so, not 0
    assert rs.doc["collectives"]["p2p_kernels"] == 20
    assert "collective_wait_pct" not in rs.doc["metrics"]
    assert "Send/Recv" in rs.doc["absent"]["collective_wait_pct"]
    inline = analyze_rank_set(folder, jobs=1)
    assert inline.doc["metrics"] == rs.doc["metrics"]


def test_colliding_ranks_are_refused_in_one_line(tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    shutil.copy(FILES[0], folder / "x.json.gz")
    shutil.copy(FILES[0], folder / "y.json.gz")
    with pytest.raises(TraceError, match="ranks collide"):
        analyze_rank_set(folder, jobs=1)
    result = CliRunner().invoke(app, ["analyze", str(folder), "--jobs", "1"])
    assert result.exit_code == 2, result.output
    assert "ranks collide" in result.output and "Traceback" not in result.output


def _two_devices(tmp_path) -> Path:
    """One file holding both HTA ranks (rank 1's correlation ids moved past rank 0's)."""
    docs = [json.loads(gzip.decompress(p.read_bytes())) for p in FILES]
    for e in docs[1]["traceEvents"]:
        args = e.get("args")
        if isinstance(args, dict) and "correlation" in args:
            args["correlation"] += 10**9
    docs[0]["traceEvents"] += docs[1]["traceEvents"]
    del docs[0]["distributedInfo"]
    path = tmp_path / "two_devices.json.gz"
    path.write_bytes(gzip.compress(json.dumps(docs[0]).encode()))
    return path


def test_one_file_two_devices_each_with_its_own_engine_thread(tmp_path):
    path = _two_devices(tmp_path)
    ta = analyze(path)
    threads = ta.doc["trace"]["device_engine_threads"]
    assert threads["0"]["pid"] == 4037 and threads["1"]["pid"] == 4045
    rs = analyze_rank_set(path)
    assert rs.source.kind == "file" and sorted(rs.ranks) == [0, 1]
    for dev, alone_path in enumerate(FILES):
        alone = analyze(alone_path).doc["metrics"]
        mine = rs.ranks[dev].doc["metrics"]
        for name in ("gpu_idle_pct", "host_bound_pct", "overlap_pct", "comm_pct", "comm_overlap_pct"):
            _approx_metrics(mine[name], alone[name])
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["analyze", str(path), "-o", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "device 0: engine thread 4037" in result.output
    assert "device 1: engine thread 4045" in result.output
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["device"] == ta.device and sorted(doc["ranks"]) == ["0", "1"] and "gpu_idle_pct" in doc["metrics"]
    assert (out / "ranks" / "rank1.metrics.json").is_file()


def test_one_file_two_devices_is_parsed_once_by_analyze(tmp_path, monkeypatch):
    """abprof analyze merges a multi-device file as a rank set from the parse it analyzed, not a second one."""
    from asyncbatch_prof.analysis import loader, rankset, result

    path, loads = _two_devices(tmp_path), []

    def counting(*args, **kwargs):
        loads.append(args[0])
        return loader.load_trace(*args, **kwargs)

    monkeypatch.setattr(result, "load_trace", counting)
    monkeypatch.setattr(rankset, "load_trace", counting)
    out = tmp_path / "out"
    cli_result = CliRunner().invoke(app, ["analyze", str(path), "-o", str(out)])
    assert cli_result.exit_code == 0, cli_result.output
    assert loads == [path] and sorted(json.loads((out / "metrics.json").read_text())["ranks"]) == ["0", "1"]


def _rank_trace(builder, path: Path, coll_start: float, launch_at: float, compute: bool, late_phase: bool) -> Path:
    b = builder(absolute=True)
    if compute:
        b.launch(40, 5, [(50, 100)], stream=7, op_name="gemm")
    if late_phase:
        b.cpu("slow_sampling", 80, 50)
    b.launch(launch_at, 5, [(coll_start, 200 - coll_start)], stream=20, op_name=NCCL)
    b.launch(launch_at + 200, 5, [(400, 20)], stream=20, op_name=NCCL)  # started together: nobody waited
    return b.write(path, gz=path.name.endswith(".gz"))


def test_synthetic_two_ranks_known_wait_transfer_overlap(tmp_path, trace_builder):
    folder = tmp_path / "set"
    folder.mkdir()
    _rank_trace(trace_builder, folder / "job_rank0.json.gz", 100, 60, compute=True, late_phase=False)
    _rank_trace(trace_builder, folder / "job_rank1.json.gz", 140, 130, compute=False, late_phase=True)
    rs = analyze_rank_set(folder, jobs=1)
    r0, r1 = rs.doc["ranks"]["0"], rs.doc["ranks"]["1"]
    # rank 0: AllReduce [100, 200) + [400, 420) under a GEMM [50, 150) on another stream: 50 of 120 µs hidden
    assert r0["comm_us"] == pytest.approx(120) and r0["comm_overlapped_us"] == pytest.approx(50)
    assert r0["comm_overlap_pct"] == pytest.approx(100 * 50 / 120)
    # the first AllReduce: rank 1 starts last at 140, so rank 0 waits 40 µs then transfers 60 µs
    assert r0["collective_wait_us"] == pytest.approx(40) and r0["collective_transfer_us"] == pytest.approx(60 + 20)
    assert r1["collective_wait_us"] == pytest.approx(0) and r1["collective_transfer_us"] == pytest.approx(60 + 20)
    assert rs.doc["metrics"]["collective_wait_pct"] == pytest.approx(100 * 40 / (120 + 80))
    assert rs.doc["metrics"]["comm_overlap_pct"]["kernel"] == pytest.approx(100 * 50 / 200)
    st = rs.doc["straggler"]
    assert st["rank"] == 1 and st["started_last"] == {"1": 1}
    # rank 1 was 40 µs late; in the 40 µs before its launch (at 130) its thread ran slow_sampling
    assert st["top_phase"] == "slow_sampling" and st["late_host_us"] == pytest.approx(40)
    assert st["top_phase_pct"] == pytest.approx(100)
    result = CliRunner().invoke(app, ["analyze", str(folder), "-j", "2"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "straggler: rank 1" in result.output and "slow_sampling" in result.output
    assert json.loads((folder / "metrics.json").read_text())["metrics"] == rs.doc["metrics"]


def test_tp_run_folder_and_gate_on_merged_metrics(tmp_path, trace_builder):
    run = tmp_path / "run"
    (run / "traces").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"status": "complete", "tp": 2}))
    _rank_trace(trace_builder, run / "traces" / "rank0.json.gz", 100, 60, compute=True, late_phase=False)
    result = CliRunner().invoke(app, ["analyze", str(run)])
    assert result.exit_code == 2 and "rank1.json.gz" in result.output, result.output
    (run / "INCOMPLETE").write_text("killed")
    result = CliRunner().invoke(app, ["analyze", str(run)])
    assert result.exit_code == 2 and "incomplete: killed" in result.output, result.output
    (run / "INCOMPLETE").unlink()
    _rank_trace(trace_builder, run / "traces" / "rank1.json.gz", 140, 130, compute=False, late_phase=True)
    result = CliRunner().invoke(app, ["analyze", str(run)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "tp run" in result.output and not (run / "metrics.json").exists()  # a run's files are never written
    result = CliRunner().invoke(app, ["analyze", str(run), "--out", str(tmp_path / "a")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    merged = tmp_path / "a" / "metrics.json"
    gate = CliRunner().invoke(app, ["gate", str(merged), "--no-config", "--max", "collective_wait_pct=10"])
    assert gate.exit_code != 0, gate.output
    assert "collective_wait_pct" in gate.output
    gate = CliRunner().invoke(app, ["gate", str(merged), "--no-config", "--max", "collective_wait_pct=30",
                                    "--max", "gpu_idle_pct_worst_rank=100", "--min", "comm_overlap_pct=1"])
    assert gate.exit_code == 0, gate.output


def test_compare_reads_the_merged_rank_metrics(tmp_path, trace_builder):
    runs = []
    for name, late_start in (("a", 140), ("b", 110)):
        run = tmp_path / name
        (run / "traces").mkdir(parents=True)
        (run / "run.json").write_text(json.dumps({"status": "complete", "tp": 2, "workload": {"prompts": 1}}))
        _rank_trace(trace_builder, run / "traces" / "rank0.json.gz", 100, 60, compute=True, late_phase=False)
        _rank_trace(trace_builder, run / "traces" / "rank1.json.gz", late_start, 100, compute=False, late_phase=True)
        out = tmp_path / f"{name}-analysis"
        assert CliRunner().invoke(app, ["analyze", str(run), "-j", "1", "-o", str(out)]).exit_code == 0
        shutil.copy(out / "metrics.json", run / "metrics.json")  # as `abprof run --tp` writes it
        runs.append(str(run))
    result = CliRunner().invoke(app, ["compare", *runs, "-o", str(tmp_path / "c.html")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    # a: rank 0 waits 40 of 200 µs in collectives (20 %); b: 10 of 230 µs
    line = next(l for l in result.output.splitlines() if "collective wait" in l)
    assert "20.0%" in line and f"{100 * 10 / 230:.1f}%" in line and "(better)" in line, line


def test_plain_run_folder_and_file_order_ranks(tmp_path, trace_builder):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"status": "complete"}))
    trace = _rank_trace(trace_builder, run / "trace.json.gz", 100, 60, compute=True, late_phase=False)
    result = CliRunner().invoke(app, ["analyze", str(run), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["metrics"] == analyze(trace).doc["metrics"]
    folder = tmp_path / "set"
    folder.mkdir()
    _rank_trace(trace_builder, folder / "y.json.gz", 100, 60, compute=True, late_phase=False)
    _rank_trace(trace_builder, folder / "x.json", 140, 130, compute=False, late_phase=True)
    (folder / "metrics.json").write_text("{}")  # an earlier result in the folder is not a trace
    rs = analyze_rank_set(folder, jobs=1)
    assert [Path(p.path).name for p in rs.ranks.values()] == ["x.json", "y.json.gz"]
