"""The chunked trace reader gives exactly what one whole-file parse gives."""

from __future__ import annotations

import numpy as np

from asyncbatch_prof.analysis import loader

from test_analysis_synthetic import _annotated


def test_small_chunks_equal_whole_file_parse(tmp_path, trace_builder, monkeypatch):
    path = _annotated(trace_builder()).write(tmp_path / "t.json", gz=False)
    whole_columns = loader._Columns()
    header = loader._whole_document(path, path.read_bytes(), whole_columns)
    whole = loader._finish(whole_columns, header)
    monkeypatch.setattr(loader, "_CHUNK_BYTES", 300)  # dozens of chunks for this small file
    chunks = loader._Columns()
    assert loader._chunked_events(path.read_bytes(), chunks) is not None  # the chunked path was taken
    chunked = loader.load_trace(path)
    for field in ("cat", "name", "pid", "tid", "ts_us", "dur_us", "correlation"):
        assert np.array_equal(getattr(chunked, field), getattr(whole, field)), field
    assert np.array_equal(chunked.nbytes, whole.nbytes, equal_nan=True)
    assert chunked.names == whole.names and chunked.counts == whole.counts
    assert chunked.base_time_ns == whole.base_time_ns == 1_790_857_026_000_000_000
