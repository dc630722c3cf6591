"""Bounded reading and bad values: a capped decompressed size, and one line (exit 2) for values that are
no trace, never a traceback. Every input is made at test time."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from asyncbatch_prof.analysis import TraceError
from asyncbatch_prof.analysis.loader import load_trace
from asyncbatch_prof.analysis.reader import DEFAULT_MAX_TRACE_BYTES, max_trace_bytes, parse_size

from test_analysis_synthetic import _three_gaps

ROOT = Path(__file__).resolve().parents[2]


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("abprof: error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def test_symlink_to_dev_zero_fails_at_once(cli, tmp_path):
    link = tmp_path / "zero.json"
    link.symlink_to("/dev/zero")
    start = time.perf_counter()
    line = _one_error_line(cli("analyze", link, "--out", tmp_path))
    assert time.perf_counter() - start < 5 and "not a JSON trace" in line


def _gzip_bomb(path: Path, expanded: int) -> None:
    """A gzip member: the start of a trace, then ``expanded`` bytes of spaces (no event boundary to cut at)."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [z.compress(b'{"traceEvents": [{"ph": "X"')]
    block = b" " * (1 << 20)
    parts += [z.compress(block) for _ in range(expanded >> 20)]
    parts.append(z.compress(b"}]}") + z.flush())
    path.write_bytes(b"".join(parts))


def test_gzip_bomb_fails_under_the_cap_within_its_memory(tmp_path):
    bomb = tmp_path / "bomb.json.gz"
    _gzip_bomb(bomb, 1 << 30)
    assert bomb.stat().st_size < 2 << 20  # ~1 MB on disk, 1 GiB decompressed
    cap = 64 << 20
    code = ("import resource, sys\nfrom asyncbatch_prof.analysis.loader import load_trace\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "try:\n    load_trace(sys.argv[1])\nexcept Exception as exc:\n    print(type(exc).__name__, exc)\n"
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)\n")
    env = dict(os.environ, ABPROF_MAX_TRACE_BYTES=str(cap), PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code, str(bomb)], capture_output=True, text=True, env=env,
                         timeout=120)
    lines = out.stdout.splitlines()
    assert lines[0].startswith("TraceError") and "more than 67,108,864 bytes" in lines[0], out.stdout + out.stderr
    assert int(lines[1]) < cap + (32 << 20)  # the cap and a block or two of slack, never the gigabyte


def test_cap_option_env_and_default(cli, tmp_path, trace_builder, monkeypatch):
    path = _three_gaps(trace_builder()).write(tmp_path / "t.json.gz")
    size = len(gzip.decompress(path.read_bytes()))
    line = _one_error_line(cli("analyze", path, "--out", tmp_path, "--max-trace-bytes", "1K"))
    assert "more than 1,024 bytes" in line and "--max-trace-bytes" in line
    assert cli("analyze", path, "--out", tmp_path, "--max-trace-bytes", "10M").exit_code == 0
    assert "positive byte count" in _one_error_line(cli("analyze", path, "--max-trace-bytes", "lots"))
    monkeypatch.setenv("ABPROF_MAX_TRACE_BYTES", "2000")
    assert size > 2000 and "more than 2,000 bytes" in _one_error_line(cli("analyze", path, "--out", tmp_path))
    with pytest.raises(TraceError, match="more than 2,000 bytes"):
        load_trace(path)
    monkeypatch.delenv("ABPROF_MAX_TRACE_BYTES")
    assert max_trace_bytes() == DEFAULT_MAX_TRACE_BYTES == 8 << 30
    assert parse_size("512M") == 512 << 20 and parse_size("8GiB") == 8 << 30 and parse_size("123") == 123


def _doc_with(trace_builder, change) -> bytes:
    doc = _three_gaps(trace_builder()).doc()
    change(doc["traceEvents"])
    return json.dumps(doc, indent=2).encode()


def _first_kernel(events):
    return next(e for e in events if e.get("cat") == "kernel")


BAD_VALUES = {
    "ts_list": lambda ev: _first_kernel(ev).update(ts=[1]),
    "ts_1e308": lambda ev: _first_kernel(ev).update(ts=1e308),
    "ts_nan": lambda ev: _first_kernel(ev).update(ts=float("nan")),
    "ts_inf": lambda ev: _first_kernel(ev).update(ts=float("inf")),
    "dur_1e308": lambda ev: _first_kernel(ev).update(dur=1e308),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_implausible_times_are_one_line(cli, tmp_path, trace_builder, case):
    path = tmp_path / f"{case}.json"
    path.write_bytes(_doc_with(trace_builder, BAD_VALUES[case]))
    line = _one_error_line(cli("analyze", path, "--out", tmp_path))
    key = "dur" if case.startswith("dur") else "ts"
    assert f"have a '{key}' that is not a number of µs" in line


def test_deep_nesting_and_non_objects_are_one_line(cli, tmp_path, trace_builder):
    deep = tmp_path / "deep.json"
    deep.write_bytes(b'{"traceEvents": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}")
    _one_error_line(cli("analyze", deep, "--out", tmp_path))
    deep_arg = tmp_path / "deep_arg.json"
    nested = b'{"ph": "X", "cat": "kernel", "name": "k", "ts": 1, "dur": 1, "args": {"x": ' + b"[" * 100_000 + \
        b"]" * 100_000 + b"}}"
    deep_arg.write_bytes(b'{"traceEvents": [\n' + nested + b"\n]}")
    result = cli("analyze", deep_arg, "--out", tmp_path)  # a deep value in args the analysis never reads
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    items = tmp_path / "items.json"
    items.write_bytes(b'{"traceEvents": [1, "x", [], null, true]}')
    assert "not a Chrome trace" in _one_error_line(cli("analyze", items, "--out", tmp_path))


def test_lone_surrogate_in_a_name_is_read_and_written(cli, tmp_path, trace_builder):
    text = _doc_with(trace_builder, lambda ev: _first_kernel(ev).update(name="gemm\ud800x"))
    path = tmp_path / "surrogate.json"
    path.write_bytes(text)  # json.dumps escapes it as \ud800: valid JSON, not valid UTF-8 once decoded
    assert b"\\ud800" in path.read_bytes()
    assert "gemm\ufffdx" in load_trace(path).names
    result = cli("analyze", path, "--out", tmp_path)
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    json.loads((tmp_path / "metrics.json").read_text())


def test_shallow_cuts_only_below_the_depth_and_reads_strings_as_strings():
    from asyncbatch_prof.analysis.reader import shallow

    chunk = rb'[{"ph": "X", "args": {"x": [[1, 2], {"q": "]\"[{"}], "bytes": 4}}, {"name": "[[[\\"}]'
    assert json.loads(shallow(chunk)) == [{"ph": "X", "args": {"x": None, "bytes": 4}}, {"name": "[[[\\"}]
    assert shallow(chunk, 5) == chunk  # nothing deeper than 5: unchanged
    assert shallow(b"[" + b"[" * 100_000 + b"]" * 100_000 + b"]") == b"[[[null]]]"
