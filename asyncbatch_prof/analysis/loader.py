"""Load a torch.profiler (Kineto) Chrome trace into flat numpy columns, keeping only the fields used.

Times stay float microseconds with their nanosecond fraction. They are stored relative to
``origin_us`` (a whole microsecond near the first event) because absolute epoch-µs timestamps of older
traces (~1.7e15) leave float64 only quarter-µs resolution for ``ts + dur``; trace µs = origin_us + value.

Kineto writes one event per few lines, so the ``traceEvents`` array is cut into chunks of a few MB
at event boundaries and each chunk is parsed with orjson on its own: peak memory stays near the file
size instead of several times it. A chunk that does not parse (unusual formatting) sends the whole
file through one plain parse instead, so the cut can never change the result.
"""

from __future__ import annotations

import gc
import gzip
import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from asyncbatch_prof.analysis.errors import TraceError

# Category codes of the rows the analysis reads; legacy capitalised GPU names map to the same code.
KERNEL, MEMCPY, MEMSET, RUNTIME, DRIVER, CPU_OP, USER_ANNOTATION, PYTHON_FUNCTION = range(8)
GPU_CATS = (KERNEL, MEMCPY, MEMSET)
CAT_CODES = {
    "kernel": KERNEL, "Kernel": KERNEL, "gpu_memcpy": MEMCPY, "Memcpy": MEMCPY, "gpu_memset": MEMSET,
    "Memset": MEMSET, "cuda_runtime": RUNTIME, "cuda_driver": DRIVER, "cpu_op": CPU_OP,
    "user_annotation": USER_ANNOTATION, "python_function": PYTHON_FUNCTION,
}
CAT_NAMES = ("kernel", "gpu_memcpy", "gpu_memset", "cuda_runtime", "cuda_driver", "cpu_op", "user_annotation",
             "python_function")
_CHUNK_BYTES = 8 << 20
_BOUNDARY = re.compile(rb"\}\s*,\s*\{")
_EVENTS_KEY = re.compile(rb'"traceEvents"\s*:\s*\[')
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


class _Columns:
    """Accumulates the fields of kept events chunk by chunk (plain lists: appends are the cheap part)."""

    def __init__(self) -> None:
        self.cat: list[int] = []
        self.name: list[int] = []
        self.pid: list[Any] = []
        self.tid: list[Any] = []
        self.ts: list[Any] = []
        self.dur: list[Any] = []
        self.corr: list[Any] = []
        self.nbytes: list[Any] = []
        self.name_codes: dict[str, int] = {}
        self.counts = {"events": 0, "kept": 0, "flows": 0, "metadata": 0, "unknown_category": 0,
                       "missing_ts": 0, "missing_dur": 0, "not_events": 0}

    def add(self, events: list) -> None:
        """Keep the X rows of known categories from one parsed chunk."""
        cats, names, pids, tids, tss, durs, corrs, nbytes = (self.cat, self.name, self.pid, self.tid, self.ts,
                                                             self.dur, self.corr, self.nbytes)
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


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise TraceError(f"{path} is a directory, not a trace file") from None
    except FileNotFoundError:
        raise TraceError(f"trace not found: {path}") from None
    except OSError as exc:
        raise TraceError(f"cannot read {path}: {exc.strerror}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise TraceError(f"{path} is not a readable gzip file ({exc or 'truncated'})") from None
    return raw


def _loads(data: bytes | bytearray | memoryview) -> Any:
    """orjson, falling back to the stdlib for what orjson refuses (e.g. integers beyond 64 bits)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(bytes(data))


def _array_start(data: bytes) -> int | None:
    """Index of the first byte inside the traceEvents array, or None where the key is not found plainly."""
    key = data.find(b'"traceEvents"')
    if key < 0:
        return None
    m = _EVENTS_KEY.match(data, key)
    return None if m is None else m.end()


def _chunked_events(data: bytes, columns: _Columns) -> dict[str, Any] | None:
    """Parse traceEvents chunk by chunk into ``columns``; return the header (all other keys), or None."""
    first = _array_start(data)
    if first is None:
        return None
    pos = first
    view = memoryview(data)
    pending: list[tuple[int, int]] = []
    n = len(data)
    while True:
        cut = _BOUNDARY.search(data, min(pos + _CHUNK_BYTES, n))
        if cut is None:
            break
        pending.append((pos, cut.start() + 1))
        pos = cut.end() - 1
    # cut once more before the last event, so that finding the array's end below tries small prefixes only
    tail = None
    for tail in _BOUNDARY.finditer(data, pos):
        pass
    if tail is not None:
        pending.append((pos, tail.start() + 1))
        pos = tail.end() - 1
    # the last chunk ends at the first ']' after which it parses as a list (a balanced prefix)
    end = data.find(b"]", pos)
    last = None
    while end >= 0:
        try:
            last = _loads(b"[" + view[pos:end].tobytes() + b"]")
            break
        except (ValueError, TypeError):
            end = data.find(b"]", end + 1)
    if last is None:
        return None
    try:
        header = _loads(view[: first - 1].tobytes() + b"[]" + view[end + 1:].tobytes())
    except (ValueError, TypeError):
        return None
    if not isinstance(header, dict):
        return None
    for start, stop in pending:
        try:
            events = _loads(b"[" + view[start:stop].tobytes() + b"]")
        except (ValueError, TypeError):
            return None
        columns.add(events)
        del events
    columns.add(last)
    return header


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


def _byte_counts(values: list) -> np.ndarray:
    """args.bytes as float64; NaN where absent or not a plausible byte count (negative, beyond 2**53)."""
    out = _numeric(values, np.float64, np.nan)
    out[~((out >= 0) & (out < 2.0**53))] = np.nan
    return out


def _ids(values: list) -> np.ndarray:
    """pid/tid column as int64; a non-integer id (a label string) gets a stable negative code of its own."""
    try:
        return np.array(values, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        pass
    labels: dict[Any, int] = {}
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        if isinstance(v, int) and not isinstance(v, bool) and -(2**62) < v < 2**62:
            out[i] = v
        else:
            out[i] = labels.setdefault(repr(v), -(2**62) - len(labels))
    return out


def _finish(columns: _Columns, header: dict[str, Any]) -> TraceEvents:
    ts = _numeric(columns.ts, np.float64, np.nan)
    dur = _numeric(columns.dur, np.float64, 0.0)
    good = np.isfinite(ts)
    dur = np.where(np.isfinite(dur) & (dur > 0), dur, 0.0)
    counts = dict(columns.counts)
    counts["missing_ts"] += int((~good).sum())
    origin = float(np.floor(ts[good].min())) if good.any() else 0.0
    names = [n if isinstance(n, str) else str(n) for n in columns.name_codes]
    ev = TraceEvents(
        cat=np.array(columns.cat, dtype=np.int8)[good],
        name=np.array(columns.name, dtype=np.int32)[good],
        pid=_ids(columns.pid)[good],
        tid=_ids(columns.tid)[good],
        ts_us=ts[good] - origin,
        dur_us=dur[good],
        correlation=_numeric(columns.corr, np.int64, -1)[good],
        nbytes=_byte_counts(columns.nbytes)[good],
        names=names,
        origin_us=origin,
        base_time_ns=_base_time_ns(header, origin),
        header={k: v for k, v in header.items()
                if not isinstance(v, (list, dict)) or k in ("deviceProperties", "distributedInfo")},
        counts=counts,
    )
    counts["kept"] = len(ev)
    return ev


def _base_time_ns(header: dict[str, Any], origin_us: float) -> int | None:
    """Epoch ns of trace ts 0: baseTimeNanoseconds, 0 for absolute-epoch traces, None when unknown."""
    base = header.get("baseTimeNanoseconds")
    if isinstance(base, int) and not isinstance(base, bool):
        return base
    return 0 if origin_us > _EPOCH_US else None


def load_trace(path: str | Path) -> TraceEvents:
    """Read a ``.json`` or ``.json.gz`` torch.profiler trace; raise TraceError for anything unreadable."""
    path = Path(path)
    data = _read_bytes(path)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # millions of small containers, none cyclic: the collector would only rescan them
    try:
        columns = _Columns()
        header = _chunked_events(data, columns)
        if header is None:
            columns = _Columns()
            header = _whole_document(path, data, columns)
        if columns.counts["events"] and columns.counts["not_events"] == columns.counts["events"]:
            raise TraceError(f"{path} is not a Chrome trace (no item of its traceEvents has a 'ph' field)")
        return _finish(columns, header)
    finally:
        if gc_was_enabled:
            gc.enable()


def _whole_document(path: Path, data: bytes, columns: _Columns) -> dict[str, Any]:
    try:
        doc = _loads(data)
    except (ValueError, TypeError, RecursionError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TraceError(f"{path} is not valid JSON ({first})") from None
    if isinstance(doc, list):
        doc = {"traceEvents": doc}  # the bare-array form of the Chrome trace format
    if not isinstance(doc, dict) or not isinstance(doc.get("traceEvents"), list):
        raise TraceError(f"{path} is not a Chrome trace (no 'traceEvents' list)")
    events = doc.pop("traceEvents")
    columns.add(events)
    return doc
