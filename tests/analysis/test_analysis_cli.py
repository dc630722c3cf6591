"""`abprof analyze`: the summary, metrics.json, and one line + exit 2 for every kind of bad input."""

from __future__ import annotations

import gzip
import json
import random

import pytest

from asyncbatch_prof.analysis.contract import SCHEMA_VERSION, lookup

from test_analysis_synthetic import _annotated, _three_gaps


def test_analyze_writes_metrics_beside_the_trace(cli, tmp_path, trace_builder):
    path = _annotated(trace_builder()).write(tmp_path / "trace.json.gz")
    result = cli("analyze", path)
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["schema_version"] == SCHEMA_VERSION and doc["tool"]["name"] == "abprof"
    assert lookup(doc, "gpu_idle_pct") == (62.5, None)  # the step window by default
    assert "62.5%" in result.output and "abprof.schedule" in result.output


def test_out_threshold_and_json(cli, tmp_path, trace_builder):
    path = _three_gaps(trace_builder()).write(tmp_path / "t.json")
    out = tmp_path / "out"
    result = cli("analyze", path, "--out", out, "--threshold-us", "100", "--json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed == json.loads((out / "metrics.json").read_text())
    assert printed["launch_latency_threshold_us"] == 100.0
    assert printed["metrics"]["launch_latency_pct"]["kernel"] == pytest.approx(47.5)


def _bad_inputs(tmp_path, trace_builder):
    good = json.dumps(_three_gaps(trace_builder()).doc(), indent=2).encode()
    cases = {
        "missing": tmp_path / "nope.json.gz",
        "truncated_gzip": gzip.compress(good)[:200],
        "invalid_json": good[: len(good) // 2],
        "not_a_trace": b'{"hello": [1, 2, 3]}',
        "events_not_events": b'{"traceEvents": [1, 2, 3]}',
        "a_number": b"42",
        "empty_file": b"",
        "binary": bytes(range(256)),
        "directory": tmp_path,
    }
    out = {}
    for name, content in cases.items():
        if isinstance(content, bytes):
            path = tmp_path / f"{name}.json"
            path.write_bytes(content)
            out[name] = path
        else:
            out[name] = content
    return out


def test_bad_input_is_one_line_and_exit_2(cli, tmp_path, trace_builder):
    for name, path in _bad_inputs(tmp_path, trace_builder).items():
        result = cli("analyze", path, "--out", tmp_path / "out")
        assert result.exit_code == 2, (name, result.output)
        assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), name
        err_lines = [line for line in result.output.splitlines() if line.startswith("abprof: error:")]
        assert len(err_lines) == 1, (name, result.output)
        assert "Traceback" not in result.output


def test_trace_without_gpu_activity_exits_0_with_gpu_metrics_absent(cli, tmp_path, trace_builder):
    """Issue 15 item 5 / issue 20: the CPU-side numbers are useful, so they are written and the exit is 0;
    the GPU metrics are absent with the reason (never 0), and a note says so. Never "write, then exit 2"."""
    cpu_only = trace_builder()
    cpu_only.cpu("aten::mm", 0, 10)
    path = tmp_path / "cpu.json"
    path.write_text(json.dumps(cpu_only.doc()))
    result = cli("analyze", path, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "no GPU activity" in result.output and "abprof: error" not in result.output
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert "gpu_idle_pct" not in doc["metrics"] and doc["absent"]["gpu_idle_pct"] == "no GPU activity in trace"


def test_negative_threshold_is_refused(cli, tmp_path, trace_builder):
    path = _three_gaps(trace_builder()).write(tmp_path / "t.json.gz")
    result = cli("analyze", path, "--threshold-us", "-1")
    assert result.exit_code == 2 and "threshold" in result.output


def _mutate(doc: dict, rng: random.Random) -> dict:
    """Break a few events in the ways real and damaged traces do."""
    events = doc["traceEvents"]
    def junk():  # fresh containers each time, so no value ends up nested in itself
        return rng.choice([None, "x", -5, 1e300, 2**70, [], {}, True, float("nan")])

    for _ in range(rng.randint(1, 8)):
        e = rng.choice(events)
        op = rng.randrange(5)
        key = rng.choice(["ts", "dur", "pid", "tid", "name", "cat", "ph", "args"])
        if op == 0:
            e.pop(key, None)
        elif op == 1:
            e[key] = junk()
        elif op == 2 and isinstance(e.get("args"), dict):
            e["args"][rng.choice(["correlation", "bytes", "stream"])] = junk()
        elif op == 3:
            events.append(dict(e, ts=rng.uniform(-1e3, 1e3), dur=rng.uniform(-5, 50)))
        else:
            events.remove(e)
            if not events:
                events.append({"ph": "X"})
    return doc


def test_fuzzed_traces_never_traceback(cli, tmp_path, trace_builder):
    rng = random.Random(1234)
    for i in range(60):
        tb = _annotated(trace_builder()) if i % 2 else _three_gaps(trace_builder())
        doc = _mutate(tb.doc(), rng)
        text = json.dumps(doc, indent=2).encode()  # NaN is written as NaN: the stdlib fallback reads it
        if i % 5 == 0:
            cut = rng.randrange(len(text))
            text = text[:cut]
        if i % 7 == 0:
            pos = rng.randrange(len(text))
            text = text[:pos] + bytes([rng.randrange(256)]) + text[pos + 1:]
        path = tmp_path / f"fuzz{i}.json.gz"
        path.write_bytes(gzip.compress(text))
        result = cli("analyze", path, "--out", tmp_path / "out")
        assert result.exit_code in (0, 2), (i, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), (i, repr(result.exception))
        if result.exit_code == 2:
            assert result.output.count("abprof: error:") == 1, (i, result.output)


def test_no_gpu_trace_prints_cpu_side_numbers(cli, tmp_path, trace_builder):
    tb = trace_builder()
    for start in (0, 100, 200):
        tb.cpu("abprof.step", start, 80, cat="user_annotation")
        tb.cpu("aten::item", start + 50, 20)
    result = cli("analyze", tb.write(tmp_path / "t.json.gz"))
    assert result.exit_code == 0, result.output  # CPU-side numbers written: a result, not a usage error
    assert "2 profiled steps, CPU length p50 0.080 ms" in result.output
    host = json.loads((tmp_path / "metrics.json").read_text())["host"]
    # span: step 1 start 100 to step 2 end 280; host work 2 × (80 − 20); blocked 2 × 20
    assert (host["span_us"], host["host_work_us"], host["sync_wait_us"]) == (180.0, 120.0, 40.0)
    assert "no GPU activity in" in result.output.splitlines()[-1]
