"""Mutated real traces through `abprof analyze` and then `abprof gate`.

Properties, for every mutation of a committed trace (HTA's simple_add test trace; a transformers
continuous-batching slice):

- `analyze` exits 0 or 2 (one line), never with a traceback; on 2 it writes nothing;
- on 0 the metrics.json it writes is valid contract evidence (no NaN, no wrongly typed value);
- `gate --max gpu_idle_pct=100` on that metrics.json passes only if `gpu_idle_pct` is there: it exits
  4 (invalid) when the mutation left the metric absent, never 0.
"""

from __future__ import annotations

import copy
import gzip
import json
from functools import lru_cache

import pytest
from fuzzing import DATA, assert_no_traceback, examples, invoke, scratch
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncbatch_prof.analysis.contract import metrics_problems

TRACES = ("hta-simple_add.json.gz", "transformers-cb-sync-slice.json.gz")

NASTY_TEXT = ["[/bold]", "[/y]", "[param|x]", "[link=https://e.example]x[/link]", "\x1b]8;;https://e\x07x",
              "\x1b[2J", "\x9b31m", "", "\x00", "é" * 50, "a" * 5000]
JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(NASTY_TEXT), st.text(max_size=6), st.just([]), st.just({}), st.lists(st.integers(), max_size=2),
    st.sampled_from([1e308, -1e308, 5e-324, 2**53 + 1, -1]),
)
KEYS = ("ts", "dur", "ph", "cat", "name", "pid", "tid", "id", "args", "args.correlation", "args.device",
        "args.stream", "args.External id", "args.cbid")
CATS = ("kernel", "gpu_memcpy", "gpu_memset", "cuda_runtime", "cuda_driver", "user_annotation", "gpu_user_annotation",
        "cpu_op", "ac2g", "Runtime", "Kernel", "Memcpy", "python_function", "Trace")
OPS = ("drop_key", "set", "delete_event", "duplicate_shifted", "set_cat", "truncate_events", "swap_ts",
       "set_all_of_cat", "drop_cat", "set_top")
TOP_KEYS = ("baseTimeNanoseconds", "deviceProperties", "schemaVersion", "traceEvents", "distributedInfo")
MUTATION = st.tuples(st.sampled_from(OPS), st.integers(0, 2**31), st.sampled_from(KEYS), JUNK,
                     st.floats(-1e4, 1e4, allow_nan=False), st.sampled_from(CATS))


@lru_cache(maxsize=None)
def _events(name: str) -> str:
    return gzip.decompress((DATA / "traces" / name).read_bytes()).decode()


def _mutate(doc: dict, mutations) -> dict:
    events = doc["traceEvents"]
    for op, pick, key, junk, shift, cat in mutations:
        if op == "set_top":  # last: it may replace the event list itself
            doc[TOP_KEYS[pick % len(TOP_KEYS)]] = copy.deepcopy(junk)
            return doc
        if op == "drop_cat":  # e.g. every launch gone, or every kernel (no GPU activity)
            events[:] = [e for e in events if not (isinstance(e, dict) and e.get("cat") == cat)]
            continue
        if op == "set_all_of_cat":  # systematic damage: one field of every event of a category
            for e in events:
                if isinstance(e, dict) and e.get("cat") == cat:
                    e[key.removeprefix("args.")] = copy.deepcopy(junk)
            continue
        if not events:
            break
        i = pick % len(events)
        e = events[i]
        if not isinstance(e, dict):
            continue
        target, field = (e.setdefault("args", {}), key[5:]) if key.startswith("args.") else (e, key)
        if not isinstance(target, dict):
            target, field = e, "args"
        if op == "drop_key":
            target.pop(field, None)
        elif op == "set":
            target[field] = copy.deepcopy(junk)
        elif op == "delete_event":
            del events[i]
        elif op == "duplicate_shifted" and isinstance(e.get("ts"), (int, float)):
            events.append(dict(e, ts=e["ts"] + shift))
        elif op == "set_cat":
            e["cat"] = cat
        elif op == "truncate_events":
            del events[max(1, pick % (len(events) + 1)):]  # the GPU tail cut off, as a full CUPTI buffer does
        elif op == "swap_ts":
            other = events[(pick // 7) % len(events)]
            if isinstance(other, dict):
                e["ts"], other["ts"] = other.get("ts"), e.get("ts")
    return doc


def _check_analyze_then_gate(text: str) -> None:
    with scratch() as tmp:
        trace = tmp / "t.json.gz"
        trace.write_bytes(gzip.compress(text.encode("utf-8", "surrogatepass"), compresslevel=1))
        out = tmp / "out"
        result = invoke("analyze", trace, "--out", out)
        assert_no_traceback(result, {0, 2})
        written = out / "metrics.json"
        if result.exit_code == 2:
            assert not written.exists(), "analyze wrote metrics.json and then exited 2"
            return
        doc = json.loads(written.read_text())
        assert metrics_problems(doc) == [], metrics_problems(doc)
        gate = invoke("gate", written, "--no-config", "--max", "gpu_idle_pct=100", "--min", "window_us=0")
        assert_no_traceback(gate, {0, 4})
        has_idle = isinstance(doc["metrics"].get("gpu_idle_pct"), dict) and doc["metrics"]["gpu_idle_pct"]
        if not has_idle:
            assert gate.exit_code == 4, "the gate passed a run whose gpu_idle_pct is absent"


@pytest.mark.parametrize("name", TRACES)
def test_mutated_real_traces_never_traceback_nor_pass_absent_evidence(name):
    @settings(max_examples=examples(40 if name.startswith("hta") else 15))
    @given(st.lists(MUTATION, min_size=1, max_size=10))
    def check(mutations):
        doc = _mutate(json.loads(_events(name)), mutations)
        _check_analyze_then_gate(json.dumps(doc))

    check()


DOC_SHAPES = [
    "[]", "42", '"x"', "null", '{"traceEvents": 5}', '{"traceEvents": {}}', '{"traceEvents": [[]]}',
    '{"traceEvents": [null, 1, "x"]}', '{"traceEvents": []}', '{"traceEvents": [{}]}',
    '{"traceEvents": [{"ph": "X", "ts": [1]}]}',
    '{"traceEvents": [{"ph": "X", "cat": "kernel", "ts": 1, "dur": 1e308, "args": {"device": 0}}]}',
    '{"traceEvents": [{"ph": "X", "cat": "kernel", "ts": NaN, "dur": 1, "args": {"device": 0}}]}',
    '{"traceEvents": [{"ph": "X", "cat": "kernel", "ts": 1, "dur": -5, "args": {"device": 0, "stream": 7}}]}',
    '{"traceEvents": [{"ph": "X", "cat": "kernel", "name": "\\u001b]0;t\\u0007[/bold]", "ts": 1, "dur": 1, '
    '"args": {"device": 0, "stream": 7}}]}',
    # the loader-level cases of issue 15 item 5, end to end
    '{"traceEvents": [{"ph": "X", "cat": "kernel", "ts": 1e308, "dur": 1e308, "args": {"device": 0, "stream": 7}}]}',
    '{"traceEvents": [{"ph": "X", "cat": "kernel", "name": "\\ud800", "ts": 1, "dur": 1, '
    '"args": {"device": 0, "stream": 7}}, {"ph": "X", "cat": "cpu_op", "name": "\\udfff", "pid": 1, "tid": 1, '
    '"ts": 0, "dur": 3}]}',
    '{"traceEvents": ' + "[" * 100_000 + "]" * 100_000 + "}",
    '{"traceEvents": [' + '{"a":' * 5_000 + "1" + "}" * 5_000 + "]}",
]


@pytest.mark.parametrize("shape", DOC_SHAPES, ids=range(len(DOC_SHAPES)))
def test_malformed_documents(shape):
    """Whole-document damage: wrong shapes, out-of-range numbers, lone surrogates, deep nesting."""
    _check_analyze_then_gate(shape)


@settings(max_examples=examples(15))
@given(st.integers(0, 10**9))
def test_real_trace_cut_at_any_byte(cut):
    """A killed writer: a real trace cut at an arbitrary byte."""
    text = _events(TRACES[0])
    _check_analyze_then_gate(text[: cut % len(text)])
