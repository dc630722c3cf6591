"""Load a torch.profiler (Kineto) Chrome trace into flat numpy columns, keeping only the fields used.

Times stay float microseconds with their nanosecond fraction. They are stored relative to
``origin_us`` (a whole microsecond near the first event) because absolute epoch-µs timestamps of older
traces (~1.7e15) leave float64 only quarter-µs resolution for ``ts + dur``; trace µs = origin_us + value.

Kineto writes one event per few lines, so the ``traceEvents`` array is read in blocks and cut into
chunks of a few MB at event boundaries, the keys around it parsed as the header (reader.py); peak
memory is the columns plus one chunk. Each chunk is decoded by msgspec into typed records of only the
fields read (``_Event``: unknown keys are skipped without building objects), the fastest of msgspec,
orjson and simdjson measured on a 148 MB trace (benchmarks/trace_speed.py). A chunk whose values do
not have the expected JSON types goes through orjson dicts (``_Columns.add``) instead, so odd values
are handled as before; a chunk that does not parse (unusual formatting) sends the whole file through
one plain parse, so the cut can never change the result. A field added to the columns goes into
``_Event``/``_Args`` and ``_Columns.add``.
"""

from __future__ import annotations

import gc
import math
import operator
import re
from dataclasses import dataclass, field
from itertools import compress, repeat
from pathlib import Path
from typing import Any, Optional, Union

import msgspec
import numpy as np

from asyncbatch_prof.analysis.errors import TraceError
from asyncbatch_prof.analysis.reader import CappedReader, max_trace_bytes, shallow, stream_document
from asyncbatch_prof.analysis.reader import loads as _loads
from asyncbatch_prof.analysis.reader import whole_document as _whole_document

# Category codes of the rows the analysis reads; legacy capitalised GPU names map to the same code.
KERNEL, MEMCPY, MEMSET, RUNTIME, DRIVER, CPU_OP, USER_ANNOTATION, PYTHON_FUNCTION = range(8)
GPU_CATS = (KERNEL, MEMCPY, MEMSET)
CAT_CODES = {
    "kernel": KERNEL, "Kernel": KERNEL, "gpu_memcpy": MEMCPY, "Memcpy": MEMCPY, "gpu_memset": MEMSET,
    "Memset": MEMSET, "cuda_runtime": RUNTIME, "Runtime": RUNTIME, "Operator": CPU_OP, "cuda_driver": DRIVER, "cpu_op": CPU_OP,
    "user_annotation": USER_ANNOTATION, "python_function": PYTHON_FUNCTION,
    # a CPU run's device steps and their hand-overs, which abprof run adds (capture/device_ops.py)
    "cpu_device_op": KERNEL, "cpu_device_launch": RUNTIME,
}
CAT_NAMES = ("kernel", "gpu_memcpy", "gpu_memset", "cuda_runtime", "cuda_driver", "cpu_op", "user_annotation",
             "python_function")
_COLUMNS = {"cat": np.int8, "name": np.int32, "pid": np.int64, "tid": np.int64, "ts": np.float64,
            "dur": np.float64, "corr": np.int64, "nbytes": np.float64}
_SURROGATE = re.compile("[\ud800-\udfff]")
_TIME_LIMIT_US = 2.0**53  # beyond it float64 holds no whole µs (and sums of such times overflow)
_EPOCH_US = 1e15  # timestamps above this are absolute epoch µs (after 2001), below it relative to baseTime


@dataclass
class TraceEvents:
    """The kept ``X`` rows of a trace as parallel numpy arrays (one row per event).

    ``ts_us``/``dur_us`` are µs relative to ``origin_us``; ``name`` indexes ``names``; ``correlation`` is
    -1 where absent; ``nbytes`` is NaN where absent; pid/tid of GPU rows are device/stream.
    """

    cat: np.ndarray
    name: np.ndarray
    pid: np.ndarray
    tid: np.ndarray
    ts_us: np.ndarray
    dur_us: np.ndarray
    correlation: np.ndarray
    nbytes: np.ndarray
    names: list[str]
    origin_us: float
    base_time_ns: int | None
    header: dict[str, Any]
    counts: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ts_us)


class _Args(msgspec.Struct, frozen=True, gc=False):
    """The args the analysis reads; other keys are skipped by the decoder without building objects."""

    correlation: int = -1
    bytes: float = math.nan


_NO_ARGS = _Args()


class _Event(msgspec.Struct, tag_field="ph", tag="X", gc=False):
    """One complete ("X") event as the typed decoder sees it: the fields the analysis reads, numbers NaN
    where absent (the decoder yields no NaN of its own; a JSON null goes the generic way)."""

    cat: Optional[str] = None
    name: Optional[str] = None
    pid: Union[int, str, None] = None
    tid: Union[int, str, None] = None
    ts: float = math.nan
    dur: float = math.nan
    args: _Args = _NO_ARGS


# Other phases of the Chrome trace format decode to empty records (their fields skipped unread); an
# event without "ph" or with another phase sends its chunk the generic way.
_OTHER_PHASES = {ph: msgspec.defstruct(f"_Phase{i}", [], tag_field="ph", tag=ph, gc=False)
                 for i, ph in enumerate("BEiICbneNODPRSTpFstfM()")}
_DECODER = msgspec.json.Decoder(list[Union[(_Event, *_OTHER_PHASES.values())]])  # type: ignore[misc]
_PHASE_CODES = {_Event: 1, **{_OTHER_PHASES[ph]: 2 for ph in "stf"}, _OTHER_PHASES["M"]: 3}
_GET = {f: operator.attrgetter(f) for f in ("cat", "name", "pid", "tid", "ts", "dur", "args", "correlation",
                                             "bytes")}
_ID_LIMIT = 2**62


def _typed(chunk: bytes | memoryview) -> list | None:
    """The chunk's typed records, None where they do not decode (the generic path takes it). A value nested
    past msgspec's recursion limit lies below every field read: it is cut to null (reader.shallow)."""
    try:
        try:
            return _DECODER.decode(chunk)
        except RecursionError:
            return _DECODER.decode(shallow(chunk))
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


class _Columns:
    """Accumulates the kept rows chunk by chunk, as numpy parts; names and id labels are file-wide."""

    def __init__(self) -> None:
        self.parts: dict[str, list[np.ndarray]] = {k: [] for k in _COLUMNS}
        self.name_codes: dict[str, int] = {}
        self.id_labels: dict[str, int] = {}
        self.counts = {"events": 0, "kept": 0, "flows": 0, "metadata": 0, "unknown_category": 0,
                       "missing_ts": 0, "missing_dur": 0, "not_events": 0}

    def names(self) -> list[str]:
        """Event names by code."""
        return list(self.name_codes)

    def add_chunk(self, chunk: bytes | memoryview) -> None:
        """Decode one ``[...]`` chunk of events: typed (msgspec) where every field has the expected JSON
        type, else generic (orjson dicts) so that odd values take the same path as a whole-file parse."""
        events = _typed(chunk)
        if events is None:
            self.add(_loads(chunk))
            return
        try:
            self._add_typed(events)  # raises before it stores any row, name or count
        except (OverflowError, ValueError, TypeError):  # e.g. an int beyond 64 bits: the generic conversions
            self.add(_loads(chunk))

    def _add_typed(self, events: list) -> None:
        n = len(events)
        get = _GET
        phc = np.fromiter(map(_PHASE_CODES.get, map(type, events), repeat(0)), np.int8, n)
        rows = list(compress(events, (phc == 1).tolist()))
        catc = np.fromiter(map(CAT_CODES.get, map(get["cat"], rows), repeat(-1)), np.int8, len(rows))
        known = catc >= 0
        if not known.all():
            rows = list(compress(rows, known.tolist()))
        ts = np.fromiter(map(get["ts"], rows), np.float64, len(rows))
        has_ts = ~np.isnan(ts)
        if not has_ts.all():
            rows = list(compress(rows, has_ts.tolist()))
        m = len(rows)
        c, ts = catc[known][has_ts], ts[has_ts]
        dur = np.fromiter(map(get["dur"], rows), np.float64, m)
        args = list(map(get["args"], rows))
        corr = np.fromiter(map(get["correlation"], args), np.int64, m)
        nbytes = _byte_counts(np.fromiter(map(get["bytes"], args), np.float64, m))
        missing_dur = np.isnan(dur)
        dur[missing_dur] = 0.0
        corr[c > DRIVER] = -1
        nbytes[(c != MEMCPY) & (c != MEMSET)] = np.nan
        pid, tid = self._typed_ids(rows, get["pid"]), self._typed_ids(rows, get["tid"])
        counts = self.counts  # from here on nothing raises: the generic path never sees this chunk counted
        counts["events"] += n
        counts["flows"] += int((phc == 2).sum())
        counts["metadata"] += int((phc == 3).sum())
        counts["unknown_category"] += int(known.size - known.sum())
        counts["missing_ts"] += int(has_ts.size - m)
        counts["missing_dur"] += int(missing_dur.sum())
        self._append(c, self._name_codes(list(map(get["name"], rows))), pid, tid, ts, dur, corr, nbytes)

    def _name_codes(self, names: list) -> np.ndarray:
        codes = self.name_codes
        local = {}
        for n in dict.fromkeys(names):  # first-appearance order, as the generic path assigns codes
            key = "" if n is None else n
            local[n] = codes.setdefault(key, len(codes))
        return np.fromiter(map(local.__getitem__, names), np.int32, len(names))

    def _append(self, cat, name, pid, tid, ts, dur, corr, nbytes) -> None:
        for key, part in zip(_COLUMNS, (np.asarray(cat, dtype=np.int8), name, pid, tid, ts, dur, corr, nbytes)):
            self.parts[key].append(np.asarray(part))

    def _typed_ids(self, rows: list, getter: Any) -> np.ndarray:
        """pid or tid of typed rows: integers straight into int64, else (labels) as _ids does."""
        try:
            out = np.fromiter(map(getter, rows), np.int64, len(rows))
            if out.size == 0 or (np.abs(out) < _ID_LIMIT).all():
                return out
        except (TypeError, ValueError, OverflowError):
            pass
        return self._ids(list(map(getter, rows)))

    def _ids(self, values: list) -> np.ndarray:
        """pid/tid as int64; a label string (or an id beyond ±2**62) gets a file-wide negative code."""
        try:
            out = np.array(values, dtype=np.int64)
            if out.size == 0 or (np.abs(out) < _ID_LIMIT).all():
                return out
        except (TypeError, ValueError, OverflowError):
            pass
        labels = self.id_labels
        out = np.empty(len(values), dtype=np.int64)
        for i, v in enumerate(values):
            if type(v) is int and -_ID_LIMIT < v < _ID_LIMIT:
                out[i] = v
            else:
                out[i] = labels.setdefault(repr(v), -_ID_LIMIT - len(labels))
        return out

    def add(self, events: list) -> None:
        """Keep the X rows of known categories from one parsed chunk (generic: any JSON values)."""
        cats, names, pids, tids, tss, durs, corrs, nbytes = ([] for _ in range(8))
        codes, counts, cat_codes = self.name_codes, self.counts, CAT_CODES
        counts["events"] += len(events)
        for e in events:
            if type(e) is not dict:
                counts["not_events"] += 1
                continue
            ph = e.get("ph")
            if ph != "X":
                if ph in ("s", "f", "t"):
                    counts["flows"] += 1
                elif ph == "M":
                    counts["metadata"] += 1
                elif ph is None:
                    counts["not_events"] += 1
                continue
            cat = e.get("cat")
            c = cat_codes.get(cat) if type(cat) is str else None
            if c is None:
                counts["unknown_category"] += 1
                continue
            ts = e.get("ts")
            if ts is None:
                counts["missing_ts"] += 1
                continue
            name = e.get("name")
            if type(name) is not str:
                name = "" if name is None else str(name)
            code = codes.get(name)
            if code is None:
                code = codes[name] = len(codes)
            dur = e.get("dur")
            if dur is None:
                counts["missing_dur"] += 1
                dur = 0.0
            cats.append(c)
            names.append(code)
            pids.append(e.get("pid"))
            tids.append(e.get("tid"))
            tss.append(ts)
            durs.append(dur)
            if c <= DRIVER:
                args = e.get("args")
                if type(args) is dict:
                    corrs.append(args.get("correlation", -1))
                    nbytes.append(args.get("bytes") if c in (MEMCPY, MEMSET) else None)
                    continue
            corrs.append(-1)
            nbytes.append(None)
        self._append(cats, np.array(names, dtype=np.int32), self._ids(pids), self._ids(tids),
                     _numeric(tss, np.float64, np.nan),
                     _numeric(durs, np.float64, 0.0), _numeric(corrs, np.int64, -1),
                     _byte_counts(_numeric(nbytes, np.float64, np.nan)))


def _numeric(values: list, dtype: Any, missing: float | int) -> np.ndarray:
    """Column as a numpy array; non-numeric entries (strings, None) become ``missing``."""
    try:
        return np.array(values, dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        pass
    out = np.full(len(values), missing, dtype=dtype)
    for i, v in enumerate(values):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            try:
                out[i] = v
            except (OverflowError, ValueError):
                pass
    return out


def _byte_counts(values: np.ndarray) -> np.ndarray:
    """args.bytes as float64; NaN where absent or not a plausible byte count (negative, beyond 2**53)."""
    out = np.array(values, dtype=np.float64)
    out[~((out >= 0) & (out < 2.0**53))] = np.nan
    return out


def _finish(columns: _Columns, header: dict[str, Any], path: Path | str = "trace") -> TraceEvents:
    parts = {k: (np.concatenate(v) if v else np.empty(0, dtype=_COLUMNS[k])) for k, v in columns.parts.items()}
    ts, dur = parts["ts"], parts["dur"]
    for key, values in (("ts", ts), ("dur", dur)):
        bad = np.flatnonzero(~(np.abs(values) < _TIME_LIMIT_US))  # NaN and inf included
        if bad.size:
            raise TraceError(f"{path}: {bad.size} events have a '{key}' that is not a number of µs below 2**53 "
                             f"(the first: {values[bad[0]]!r}, event name {_safe(columns.names()[parts['name'][bad[0]]])!r})")
    dur = np.where(dur > 0, dur, 0.0)
    origin = float(np.floor(ts.min())) if ts.size else 0.0
    ev = TraceEvents(
        cat=parts["cat"], name=parts["name"], pid=parts["pid"], tid=parts["tid"], ts_us=ts - origin, dur_us=dur,
        correlation=parts["corr"], nbytes=parts["nbytes"], names=[_safe(n) for n in columns.names()],
        origin_us=origin, base_time_ns=_base_time_ns(header, origin),
        header={k: v for k, v in header.items() if not isinstance(v, (list, dict)) or k in ("deviceProperties", "distributedInfo")},
        counts=dict(columns.counts),
    )
    ev.counts["kept"] = len(ev)
    return ev


def _safe(name: str) -> str:
    """The name with lone surrogates (valid in JSON, not in UTF-8) replaced, so it can be printed and written."""
    if name.isascii():
        return name
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", name)


def _base_time_ns(header: dict[str, Any], origin_us: float) -> int | None:
    """Epoch ns of trace ts 0: baseTimeNanoseconds, 0 for absolute-epoch traces, None when unknown."""
    base = header.get("baseTimeNanoseconds")
    if isinstance(base, int) and not isinstance(base, bool):
        return base
    return 0 if origin_us > _EPOCH_US else None


def load_trace(path: str | Path, max_bytes: int | None = None) -> TraceEvents:
    """Read a ``.json`` or ``.json.gz`` torch.profiler trace; raise TraceError for anything unreadable.

    ``max_bytes`` caps the decompressed size read (bytes; default ``$ABPROF_MAX_TRACE_BYTES`` or 8 GiB).
    """
    path = Path(path)
    cap = max_trace_bytes(max_bytes)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # millions of small objects, none cyclic: the collector would only rescan them
    try:
        columns = _Columns()
        with CappedReader(path, cap) as reader:
            header = stream_document(reader, columns)
        if header is None:
            columns = _Columns()
            with CappedReader(path, cap) as reader:
                header = _whole_document(path, reader.read_all(), columns)
        if columns.counts["events"] and columns.counts["not_events"] == columns.counts["events"]:
            raise TraceError(f"{path} is not a Chrome trace (no item of its traceEvents has a 'ph' field)")
        return _finish(columns, header, path)
    finally:
        if gc_was_enabled:
            gc.enable()
