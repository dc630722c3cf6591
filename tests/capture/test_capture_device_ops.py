"""A CPU run's device work in the trace: the engine times each step on its CPU device side
(``GenerateResult.device_spans_ns``) and ``capture.device_ops`` writes the steps of the recorded window into the
trace as device ops with their hand-overs as launches, so the analysis measures that device's idle time."""

from __future__ import annotations

import gzip
import json

import pytest

from asyncbatch_prof.analysis import analyze
from asyncbatch_prof.analysis.run_metrics import CPU_RUN, build_metrics_doc
from asyncbatch_prof.capture.device_ops import CORRELATION_BASE, DEVICE_LAUNCH, DEVICE_OP, add_device_ops
from reference_engine import EngineConfig, LLMEngine, WorkloadConfig, make_workload


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("process", [True, False])
def test_the_engine_reports_when_each_device_step_ran(mode, process):
    engine = LLMEngine(EngineConfig(model="tiny", mode=mode, cpu_worker_process=process))
    try:
        reqs = make_workload(WorkloadConfig(num_requests=6, prompt_len="uniform:8:16", output_len="fixed:6", seed=1),
                             vocab_size=engine.vocab_size)
        engine.generate(reqs)  # a first pass's spans do not carry over
        result = engine.generate(reqs)
        kept = engine.runner.device_side.spans  # (inline too: kept per generate, never growing across them)
        assert len(kept) == len(result.device_spans_ns) or (not result.device_spans_ns
                                                             and len(kept) <= result.num_steps)
    finally:
        engine.close()
    spans = result.device_spans_ns
    if mode == "sync" and not process:  # inline: the engine thread does the device work, as host work
        assert spans == []
        return
    assert 6 <= len(spans) <= result.num_steps  # one per step with device work (the async loop's last has none)
    end_ns = result.start_epoch_ns + int(result.wall_s * 1e9) + 10**7
    for handed, handed_end, start, end in spans:
        assert result.start_epoch_ns <= handed <= handed_end and handed <= start <= end <= end_ns
    # one device: a step's work starts after the one before it ended
    assert all(b[2] >= a[3] for a, b in zip(spans, spans[1:]))
    if mode == "sync":  # the host hands a step over only once it has the last one's tokens
        assert all(b[0] >= a[3] for a, b in zip(spans, spans[1:]))


def _trace(tmp_path, steps_us, base_ns=1_700_000_000 * 10**9):
    """A CPU trace of the engine thread's recorded steps (``abprof.step`` ranges, µs after ``base_ns``)."""
    events = [{"ph": "X", "cat": "user_annotation", "name": "abprof.step", "pid": 7, "tid": 7, "ts": s,
               "dur": e - s} for s, e in steps_us]
    events += [{"ph": "X", "cat": "user_annotation", "name": "abprof.schedule", "pid": 7, "tid": 7, "ts": s,
                "dur": 100.0} for s, _ in steps_us]
    path = tmp_path / "trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"baseTimeNanoseconds": base_ns, "traceEvents": events}, f)
    return path, base_ns


def test_device_steps_join_their_hand_overs_and_have_idle_gaps(tmp_path):
    path, base = _trace(tmp_path, [(0.0, 1000.0), (1000.0, 2000.0), (2000.0, 3000.0)])

    def ns(us):
        return base + int(us * 1e3)

    spans = [(ns(-500), ns(-490), ns(-480), ns(-10)),  # handed over before the recorded steps: left out
             (ns(200), ns(210), ns(220), ns(900)), (ns(1300), ns(1310), ns(1320), ns(1900)),
             (ns(2300), ns(2310), ns(2320), ns(2950))]
    assert add_device_ops(path, spans) == 3
    with gzip.open(path, "rt") as f:
        events = json.load(f)["traceEvents"]
    ops = [e for e in events if e.get("cat") == DEVICE_OP]
    launches = [e for e in events if e.get("cat") == DEVICE_LAUNCH]
    assert [e["args"]["correlation"] for e in ops] == [e["args"]["correlation"] for e in launches] == \
        [CORRELATION_BASE + i for i in (1, 2, 3)]
    assert all(e["pid"] == 7 and e["tid"] == 7 for e in launches) and all(e["pid"] == 0 for e in ops)
    assert ops[0]["ts"] == pytest.approx(220.0) and ops[0]["dur"] == pytest.approx(680.0)
    doc = analyze(path).doc
    # the device waited for the host between steps: each gap begins before its step's hand-over
    idle = doc["metrics"]["gpu_idle_pct"]["step"]
    assert idle == pytest.approx(doc["metrics"]["host_bound_pct"]["step"]) and idle > 0
    # the step window: from the first profiled step after the first (the contract leaves that one out) to the end
    # of the last device step launched in the last: idle = 1 − busy / window
    busy = (1900 - 1320) + (2950 - 2320)
    assert idle == pytest.approx(100 * (1 - busy / (2950 - 1000)), abs=0.01)


def test_no_recorded_steps_or_no_spans_leave_the_trace_alone(tmp_path):
    path, base = _trace(tmp_path, [(0.0, 1000.0)])
    before = path.read_bytes()
    assert add_device_ops(path, []) == 0
    assert add_device_ops(path, [(base - 10**9, base - 10**9, base - 10**9, base - 10**8)]) == 0
    assert path.read_bytes() == before


def test_a_cpu_run_without_device_steps_says_why_its_shares_are_absent():
    class Result:
        records, wall_s, output_tokens = [], 1.0, 0

    trace_doc = {"metrics": {}, "absent": {"gpu_idle_pct": "no GPU activity in trace"}}
    run = {"mode": "sync", "engine": "transformers", "profiled_steps": None, "workload": {},
           "model": {"device": "cpu"}}
    doc = build_metrics_doc(trace_doc, Result(), ({}, {}, {}), run, None)
    assert doc["absent"]["gpu_idle_pct"] == CPU_RUN and doc["run"]["device"] == "cpu"
    gpu = build_metrics_doc(trace_doc, Result(), ({}, {}, {}), {**run, "model": {"device": "cuda"}}, None)
    assert gpu["absent"]["gpu_idle_pct"] == "no GPU activity in trace"
