"""The chunked, typed trace reader gives exactly what one whole-file generic parse gives."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from asyncbatch_prof.analysis import loader, reader

from test_analysis_synthetic import _annotated

FIELDS = ("cat", "name", "pid", "tid", "ts_us", "dur_us", "correlation")


def _whole(path):
    columns = loader._Columns()
    header = loader._whole_document(path, path.read_bytes(), columns)
    return loader._finish(columns, header)


def _assert_same(a, b):
    for name in FIELDS:
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert np.array_equal(a.nbytes, b.nbytes, equal_nan=True)
    assert a.names == b.names and a.counts == b.counts
    assert a.base_time_ns == b.base_time_ns and a.origin_us == b.origin_us


def _chunks_taken(path, monkeypatch):
    """Load with 300-byte blocks; return (events, number of typed chunks, number of generic chunks)."""
    monkeypatch.setattr(reader, "_BLOCK", 300)  # dozens of chunks for a small file
    typed, generic = [], []
    real_typed, real_add = loader._Columns._add_typed, loader._Columns.add
    monkeypatch.setattr(loader._Columns, "_add_typed", lambda self, ev: typed.append(1) or real_typed(self, ev))
    monkeypatch.setattr(loader._Columns, "add", lambda self, ev: generic.append(1) or real_add(self, ev))
    ev = loader.load_trace(path)
    return ev, len(typed), len(generic)


@pytest.mark.parametrize("gz", [False, True])
def test_small_chunks_equal_whole_file_parse(tmp_path, trace_builder, monkeypatch, gz):
    path = _annotated(trace_builder()).write(tmp_path / "t.json", gz=False)
    whole = _whole(path)
    if gz:
        path = tmp_path / "t.json.gz"
        path.write_bytes(gzip.compress((tmp_path / "t.json").read_bytes()))
    chunked, typed, generic = _chunks_taken(path, monkeypatch)
    assert typed >= 10 and generic == 1  # the chunked, typed path was taken (the generic one: the last event)
    _assert_same(chunked, whole)
    assert chunked.base_time_ns == 1_790_857_026_000_000_000


def test_odd_values_take_the_generic_path_with_the_same_result(tmp_path, trace_builder, monkeypatch):
    tb = _annotated(trace_builder())
    doc = tb.doc()
    events = doc["traceEvents"]
    events[3]["ts"] = str(events[3]["ts"])  # a numeric string: read as a number, as a whole-file parse does
    events[5]["pid"] = "main"  # a label pid: a negative code of its own
    events[7]["args"] = "none"  # args that are no object
    events.insert(9, [1, 2])  # an item that is no event
    path = tmp_path / "odd.json"
    path.write_text(json.dumps(doc, indent=1))
    chunked, typed, generic = _chunks_taken(path, monkeypatch)
    assert typed and generic > 1
    _assert_same(chunked, _whole(path))
    assert chunked.counts["not_events"] == 1
