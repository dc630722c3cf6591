"""Exact numbers on synthetic traces built here: every expected value is worked out by hand in comments."""

from __future__ import annotations

import pytest

from asyncbatch_prof.analysis import analyze
from asyncbatch_prof.analysis.contract import lookup


def _three_gaps(tb):
    """One stream: k1 [10,20), k2 [25,30), k3 [100,110), k4 [200,210) (µs, relative).

    gap 20-25 (5 µs): k2 launched at 8 < 20 and 5 < 30 → launch_latency
    gap 30-100 (70 µs): k3 launched at 60 > 30 → host_bound
    gap 110-200 (90 µs): k4 launched at 40 < 110 and 90 ≥ 30 → dependency
    kernel window [10, 210) = 200 µs, busy 35, idle 165.
    """
    tb.launch(5, 2, [(10, 10)])
    tb.launch(8, 2, [(25, 5)])
    tb.launch(40, 3, [(200, 10)])
    tb.launch(60, 4, [(100, 10)])
    # the launching thread during the host-bound gap 30-100: fwd [32,70) holds aten::mm [35,62)
    tb.cpu("fwd", 32, 38, cat="user_annotation")
    tb.cpu("aten::mm", 35, 27)
    return tb


def test_gap_classes_and_idle(tmp_path, trace_builder):
    ta = analyze(_three_gaps(trace_builder()).write(tmp_path / "t.json.gz"))
    assert ta.window == "kernel" and ta.device == 0
    assert ta.doc["metrics"]["window_us"] == {"kernel": 200.0}
    assert ta.doc["metrics"]["gpu_busy_us"] == {"kernel": 35.0}
    assert ta.gpu_idle_pct == pytest.approx(100 * 165 / 200, abs=1e-12)
    assert ta.host_bound_pct == pytest.approx(35.0, abs=1e-12)
    assert ta.launch_latency_pct == pytest.approx(2.5, abs=1e-12)
    assert ta.dependency_pct == pytest.approx(45.0, abs=1e-12)
    gaps = ta.gaps[ta.gaps["window"] == "kernel"]
    assert gaps["duration_us"].tolist() == [5.0, 70.0, 90.0]
    assert gaps["gap_class"].tolist() == ["launch_latency", "host_bound", "dependency"]
    assert gaps["start_us"].tolist() == [20.0, 30.0, 110.0]  # relative trace: µs since ts 0


def test_threshold_option_moves_gaps_between_classes(tmp_path, trace_builder):
    path = _three_gaps(trace_builder()).write(tmp_path / "t.json.gz")
    ta = analyze(path, launch_latency_threshold_us=100.0)  # the 90 µs gap becomes launch latency
    assert ta.launch_latency_pct == pytest.approx(47.5, abs=1e-12)
    assert "dependency_pct" in ta.doc["metrics"] and ta.dependency_pct == 0.0
    ta = analyze(path, launch_latency_threshold_us=0.0)
    assert ta.dependency_pct == pytest.approx(47.5, abs=1e-12)


def test_host_bound_time_goes_to_innermost_phase(tmp_path, trace_builder):
    ta = analyze(_three_gaps(trace_builder()).write(tmp_path / "t.json.gz"))
    # gap 30-100: aten::mm 35-62 = 27; fwd 32-35 and 62-70 = 11; unannotated 30-32 and 70-100 = 32
    got = dict(zip(ta.phases["phase"], ta.phases["host_bound_us"]))
    assert got == pytest.approx({"aten::mm": 27.0, "fwd": 11.0, "unannotated host": 32.0})
    assert ta.phases["host_bound_pct"].sum() == pytest.approx(ta.host_bound_pct)
    gap = ta.gaps[ta.gaps["gap_class"] == "host_bound"].iloc[0]
    assert gap["cpu_phase"] == "unannotated host"  # the largest share of that gap


def test_overlapping_streams_count_once(tmp_path, trace_builder):
    tb = trace_builder()
    tb.launch(0, 1, [(10, 10)], stream=7)  # [10,20)
    tb.launch(1, 1, [(15, 15)], stream=8)  # [15,30): overlaps 5 µs
    tb.launch(2, 1, [(40, 10)], stream=9)  # [40,50) after a 10 µs gap (launched early → launch latency)
    ta = analyze(tb.write(tmp_path / "t.json.gz"))
    assert ta.doc["metrics"]["gpu_busy_us"]["kernel"] == 30.0  # 20 + 10, not 35
    assert ta.gpu_idle_pct == pytest.approx(25.0)
    assert ta.stream_concurrency_pct == pytest.approx(100 * 5 / 40)
    pair = ta.doc["devices"]["0"]["kernel"]["busiest_stream_pair"]
    assert pair["streams"] == [8, 7] and pair["concurrency_pct"] == pytest.approx(12.5)


def test_graph_and_driver_launches_join_on_correlation(tmp_path, trace_builder):
    tb = trace_builder()
    tb.launch(0, 2, [(5, 5), (10, 5), (16, 4)], name="cudaGraphLaunch")  # one launch, three kernels
    tb.launch(30, 2, [(40, 5)], name="cuLaunchKernel", cat="cuda_driver")  # host-bound gap 20-40
    tb.launch(31, 2, [(46, 4)], name="cuLaunchKernelEx", cat="cuda_driver")  # 1 µs launch-latency gap 45-46
    ta = analyze(tb.write(tmp_path / "t.json.gz"))
    assert ta.host_bound_pct == pytest.approx(100 * 20 / 45)
    assert ta.launch_latency_pct == pytest.approx(100 * 2 / 45)  # 15-16 and 45-46
    launches = ta.launches.set_index("name")
    assert launches.loc["cudaGraphLaunch", "ops"] == 3
    assert launches.loc["cudaGraphLaunch", "launch_delay_us"] == 3.0  # first kernel 5 − call end 2
    assert launches.loc["cuLaunchKernel", "launch_delay_us"] == 8.0
    assert launches.loc["cuLaunchKernelEx", "queue_depth"] == 1  # the cuLaunchKernel op had not started yet
    assert len(ta.launches) == 3


def _annotated(tb):
    """Three abprof.step ranges on the engine thread; the first one is excluded from the step window.

    step 0 [0,100), step 1 [100,200), step 2 [200,300); inside steps 1 and 2: schedule, forward (launches),
    sync_wait with a cudaStreamSynchronize. Ops: step 1 launches k [130,170), step 2 launches k [240,250)
    and a memcpy HtoD [250,260) of 64 bytes; the step window is [100, 260).
    """
    for start in (0, 100, 200):
        tb.cpu("abprof.step", start, 100, cat="user_annotation")
        tb.cpu("abprof.schedule", start, 20, cat="user_annotation")
        tb.cpu("abprof.forward", start + 20, 30, cat="user_annotation")
        tb.cpu("abprof.sync_wait", start + 60, 30, cat="user_annotation")
        tb.cpu("cudaStreamSynchronize", start + 61, 28, cat="cuda_runtime")
    tb.launch(25, 2, [(30, 30)])
    tb.launch(125, 2, [(130, 40)])
    tb.launch(225, 2, [(240, 10)])
    tb.launch(230, 2, [(250, 10)], name="cudaMemcpyAsync", op_cat="gpu_memcpy", op_name="Memcpy HtoD (Pinned -> Device)",
              nbytes=64)
    return tb


def test_step_window_overlap_and_sync_wait(tmp_path, trace_builder):
    ta = analyze(_annotated(trace_builder()).write(tmp_path / "t.json.gz"))
    assert ta.window == "step"
    assert lookup(ta.doc, "window_us.step") == (160.0, None)
    # busy in [100,260): 40 + 20 = 60 → idle 100/160
    assert ta.gpu_idle_pct == pytest.approx(62.5)
    # gaps: 100-130 (k launched at 125 > 100: host_bound), 170-240 (launched 225 > 170: host_bound)
    assert ta.host_bound_pct == pytest.approx(62.5)
    # host work: the abprof.* ranges [100,200) and [200,260) minus sync_wait [160,190) and [260,...) → 130 µs;
    # GPU busy during it: [130,160) + [240,260) = 50 µs
    assert ta.doc["devices"]["0"]["step"]["host_work_us"] == pytest.approx(130.0)
    assert ta.overlap_pct == pytest.approx(100 * 50 / 130)
    assert ta.sync_wait_pct == pytest.approx(100 * 30 / 160)
    phases = dict(zip(ta.phases["phase"], ta.phases["host_bound_us"]))
    # gap 100-130: schedule 100-120, forward 120-130; gap 170-240: sync_wait 170-190, bare step 190-200,
    # then step 2's schedule 200-220 and forward 220-240
    assert phases == pytest.approx({"abprof.schedule": 40.0, "abprof.forward": 30.0, "abprof.sync_wait": 20.0,
                                    "abprof.step": 10.0})


def test_steps_table(tmp_path, trace_builder):
    ta = analyze(_annotated(trace_builder()).write(tmp_path / "t.json.gz"))
    steps = ta.steps
    assert steps["step"].tolist() == [1, 2]
    assert steps["wall_us"].tolist() == [100.0, 60.0]
    assert steps["gpu_busy_us"].tolist() == [40.0, 20.0]
    assert steps["idle_us"].tolist() == [60.0, 40.0]
    assert steps["kernels"].tolist() == [1, 1]
    assert steps["launches"].tolist() == [1, 2]
    assert steps["h2d_bytes"].tolist() == [0, 64]
    assert steps["wall_us"].sum() == ta.doc["metrics"]["window_us"]["step"]
    assert ta.doc["steps"]["count"] == 2


def test_absolute_and_relative_timestamps_agree(tmp_path, trace_builder):
    rel = analyze(_three_gaps(trace_builder()).write(tmp_path / "rel.json.gz"))
    ab = analyze(_three_gaps(trace_builder(absolute=True)).write(tmp_path / "abs.json", gz=False))
    assert ab.doc["metrics"] == rel.doc["metrics"]
    assert ab.base_time_ns == 0 and rel.base_time_ns == 1_790_857_026_000_000_000
    assert ab.gaps["start_us"].iloc[0] == 1_712_195_495_000_020.0


def test_fractional_nanoseconds_are_kept(tmp_path, trace_builder):
    tb = trace_builder()
    tb.launch(0, 1, [(10.001, 1.063)])
    tb.launch(1, 1, [(11.065, 1.001)])  # 1 ns gap between 11.064 and 11.065
    ta = analyze(tb.write(tmp_path / "t.json.gz"))
    assert ta.doc["metrics"]["gpu_busy_us"]["kernel"] == pytest.approx(2.064, abs=1e-9)
    assert ta.gaps["duration_us"].tolist() == pytest.approx([0.001], abs=1e-9)


def test_tolerates_missing_fields_and_odd_rows(tmp_path, trace_builder):
    tb = _three_gaps(trace_builder())
    tb.events.append({"ph": "X", "cat": "kernel", "name": "no dur", "pid": 0, "tid": 7, "ts": 15.0,
                      "args": {"stream": 7}})  # missing dur and correlation: an instant inside k1
    tb.events.append({"ph": "X", "cat": "kernel", "name": "no ts", "pid": 0, "tid": 7, "dur": 5})
    tb.events.append({"ph": "X", "cat": "mystery", "name": "?", "pid": 1, "tid": 1, "ts": 1, "dur": 1})
    tb.events.append({"ph": "f", "id": 999, "pid": 1000, "tid": 1000, "ts": 3, "cat": "ac2g", "bp": "e"})
    tb.events.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1000, "tid": 1000,
                      "ts": 2, "dur": 1})  # no args at all
    ta = analyze(tb.write(tmp_path / "t.json.gz"))
    assert ta.gpu_idle_pct == pytest.approx(82.5)
    counts = ta.doc["trace"]["events"]
    assert counts["missing_dur"] == 1 and counts["missing_ts"] == 1 and counts["unknown_category"] == 2  # "mystery" and the Trace span
    assert ta.doc["trace"]["devices"] == [0]  # not the 16 GPU labels of the metadata rows


def test_no_gpu_ops_gives_absent_metrics(tmp_path, trace_builder):
    tb = trace_builder()
    tb.cpu("abprof.step", 0, 10, cat="user_annotation")
    ta = analyze(tb.write(tmp_path / "t.json.gz"))
    assert not ta.has_gpu and ta.gpu_idle_pct is None
    assert ta.absent["gpu_idle_pct"] == "no GPU activity in trace"
    assert ta.doc["metrics"] == {}


def test_gap_table_sums_to_idle_in_both_windows(tmp_path, trace_builder):
    ta = analyze(_annotated(trace_builder()).write(tmp_path / "t.json.gz"))
    m = ta.doc["metrics"]
    kernel = ta.gaps[ta.gaps["window"] == "kernel"]
    assert kernel["duration_us"].sum() == pytest.approx(m["window_us"]["kernel"] - m["gpu_busy_us"]["kernel"])
    in_step = ta.gaps[ta.gaps["in_step_window"]]
    assert in_step["duration_us"].sum() == pytest.approx(m["window_us"]["step"] - m["gpu_busy_us"]["step"])
    # the kernel-window gap 60-130 is cut at the step window's start (100): listed once more, clipped
    assert ta.gaps[ta.gaps["window"] == "step"][["start_us", "end_us"]].values.tolist() == [[100.0, 130.0]]


def test_profiler_step_ranges_do_not_change_the_numbers(tmp_path, trace_builder):
    plain = analyze(_annotated(trace_builder()).write(tmp_path / "plain.json.gz"))
    tb = _annotated(trace_builder())
    for i, start in enumerate((0, 100, 200)):  # what prof.step() adds when a schedule is used
        tb.cpu(f"ProfilerStep#{i + 3}", start, 100, cat="user_annotation")
    scheduled = analyze(tb.write(tmp_path / "scheduled.json.gz"))
    assert scheduled.doc["metrics"] == plain.doc["metrics"]
    assert scheduled.phases.equals(plain.phases)


def test_headline_device_is_the_busiest(tmp_path, trace_builder):
    tb = trace_builder()
    tb.launch(0, 1, [(10, 10)], device=0)  # device 0: busy 10 of its 10 µs window
    tb.launch(1, 1, [(10, 20), (40, 20)], device=1, name="cudaGraphLaunch")  # device 1: busy 40 of 50
    ta = analyze(tb.write(tmp_path / "t.json.gz"))
    assert ta.device == 1 and ta.gpu_idle_pct == pytest.approx(20.0)
    assert ta.doc["trace"]["devices"] == [0, 1]
    assert ta.doc["devices"]["0"]["kernel"]["metrics"]["gpu_idle_pct"] == 0.0
    assert set(ta.gpu_ops["device"]) == {0, 1}


def test_layouts_that_defeat_chunking_give_the_same_numbers(tmp_path, trace_builder):
    import json

    reference = analyze(_three_gaps(trace_builder()).write(tmp_path / "ref.json.gz")).doc["metrics"]
    compact = tmp_path / "compact.json"
    compact.write_text(json.dumps(_three_gaps(trace_builder()).doc(), separators=(",", ":")))
    assert analyze(compact).doc["metrics"] == reference
    tb = _three_gaps(trace_builder())
    tb.events[0]["args"]["nested"] = [{"a": 1}, {"b": 2}]  # a "},{" inside an event: the whole-file parse is used
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps(tb.doc(), indent=2))
    assert analyze(nested).doc["metrics"] == reference
    bare = tmp_path / "bare.json"  # the bare-array form of the Chrome trace format
    bare.write_text(json.dumps(_three_gaps(trace_builder()).doc()["traceEvents"]))
    assert analyze(bare).doc["metrics"] == reference
