"""Bounded, streaming reading of a trace file: the ``traceEvents`` array cut into chunks of whole events.

A ``.json.gz`` is decompressed as it is read, so the compressed and the decoded file are never held
whole. Every read counts decompressed bytes against a cap (``ABPROF_MAX_TRACE_BYTES``, default 8 GiB):
a symlink to /dev/zero or a gzip bomb fails in one line once it passes the cap, holding at most about
the cap in memory (less for well-formed traces, which are held one chunk at a time).

``stream_document`` hands the chunks to an :class:`EventSink` (loader.py's columns) and parses the keys
around the array as the header; ``whole_document`` is the plain parse of any other layout.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Protocol

import orjson

from asyncbatch_prof.analysis.errors import TraceError

DEFAULT_MAX_TRACE_BYTES = 8 << 30  # beyond what torch.profiler writes for any window that a viewer opens
MAX_BYTES_ENV = "ABPROF_MAX_TRACE_BYTES"
_BLOCK = 8 << 20
_HEAD_LIMIT = 64 << 20  # a header this long before "traceEvents" is not Kineto's layout: read the file whole
_EVENTS_KEY = re.compile(rb'"traceEvents"\s*:\s*\[')
_WHITESPACE = b" \t\r\n"
_TAIL_TRIES = 64
_UNITS = {"": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20, "MIB": 1 << 20,
          "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30, "T": 1 << 40, "TB": 1 << 40, "TIB": 1 << 40}


def parse_size(text: str, what: str = MAX_BYTES_ENV) -> int:
    """Bytes from ``"123"``, ``"512M"``, ``"8GiB"`` (binary units); TraceError for anything else."""
    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    unit = m.group(2).upper() if m else ""
    if m is None or unit not in _UNITS or int(m.group(1)) <= 0:
        raise TraceError(f"{what} must be a positive byte count such as 2000000000, 512M or 8G, not {text!r}")
    return int(m.group(1)) * _UNITS[unit]


def max_trace_bytes(explicit: int | None = None) -> int:
    """The decompressed-size cap in bytes: ``explicit``, else ``$ABPROF_MAX_TRACE_BYTES``, else 8 GiB."""
    if explicit is not None:
        if explicit <= 0:
            raise TraceError(f"--max-trace-bytes must be a positive byte count, not {explicit}")
        return explicit
    env = os.environ.get(MAX_BYTES_ENV)
    return parse_size(env) if env else DEFAULT_MAX_TRACE_BYTES


class CappedReader:
    """A plain or gzip trace file read in blocks, counting decompressed bytes against ``cap``."""

    def __init__(self, path: Path, cap: int):
        self.path, self.cap, self.total = path, cap, 0
        try:
            raw = open(path, "rb")
        except IsADirectoryError:
            raise TraceError(f"{path} is a directory, not a trace file") from None
        except FileNotFoundError:
            raise TraceError(f"trace not found: {path}") from None
        except OSError as exc:
            raise TraceError(f"cannot read {path}: {exc.strerror}") from None
        self._raw: BinaryIO = raw
        self._stream: BinaryIO = raw
        magic = self._guard(lambda: raw.read(2))
        self._pending = magic  # a pipe cannot seek back: its first bytes are handed out first
        if raw.seekable():
            raw.seek(0)
            self._pending = b""
        if magic == b"\x1f\x8b":
            if not raw.seekable():
                raise TraceError(f"{path} is gzip but not a regular file")
            self._stream = gzip.GzipFile(fileobj=raw, mode="rb")

    def _guard(self, read: Callable[[], bytes]) -> bytes:
        try:
            return read()
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise TraceError(f"{self.path} is not a readable gzip file ({exc or 'truncated'})") from None
        except OSError as exc:
            raise TraceError(f"cannot read {self.path}: {exc.strerror or exc}") from None

    def read(self, n: int | None = None) -> bytes:
        """Up to ``n`` (default a block of 8 MiB) decompressed bytes, b"" at the end; TraceError once the
        total passes the cap."""
        n = n or _BLOCK
        block = self._pending + self._guard(lambda: self._stream.read(min(n, self.cap + 1 - self.total)))
        self._pending = b""
        self.total += len(block)
        if self.total > self.cap:
            raise TraceError(f"{self.path} holds more than {self.cap:,} bytes of trace (decompressed), the cap; "
                             f"raise it with --max-trace-bytes or {MAX_BYTES_ENV}")
        return block

    def read_all(self) -> bytes:
        """The rest of the file (within the cap)."""
        parts = []
        while block := self.read():
            parts.append(block)
        return b"".join(parts)

    def close(self) -> None:
        self._stream.close()
        self._raw.close()

    def __enter__(self) -> "CappedReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def first_byte_check(path: Path, head: bytes) -> None:
    """Fail at once on a file that cannot be JSON (binary data, /dev/zero): its first byte is no '{' or '['."""
    stripped = head.lstrip(_WHITESPACE)
    if stripped and stripped[:1] not in (b"{", b"["):
        raise TraceError(f"{path} is not a JSON trace (it starts with byte {stripped[:1]!r})")


def _last_boundary(buf: bytearray, lo: int) -> int | None:
    """Index of the ',' of the last ``}`` , ``{`` pair (between two events) in ``buf[lo:]``, or None."""
    i = len(buf)
    while True:
        i = buf.rfind(b"{", lo, i)
        if i < 0:
            return None
        j = i - 1
        while j >= lo and buf[j] in _WHITESPACE:
            j -= 1
        if j >= lo and buf[j] == 44:  # ','
            comma = j
            j -= 1
            while j >= lo and buf[j] in _WHITESPACE:
                j -= 1
            if j >= lo and buf[j] == 125:  # '}'
                return comma


def event_chunks(reader: CappedReader) -> Iterator[tuple[str, bytes | memoryview]]:
    """Yield ``("head", prefix)``, then ``("events", [...])`` chunks of whole events, then ``("tail", rest)``
    (the last event, the array's end and the keys after it); a ``("whole", b"")`` item says the layout
    is not Kineto's and the caller should parse the whole file instead.

    An events chunk is a view into the read buffer, valid until the next item is asked for: the comma
    between two events becomes the ']' closing one chunk and then the '[' opening the next, so no
    chunk is copied.
    """
    buf = bytearray(reader.read())
    first_byte_check(reader.path, bytes(buf[:4096]))
    m = _EVENTS_KEY.search(buf)
    while m is None:
        block = reader.read()
        if not block or len(buf) > _HEAD_LIMIT:
            yield "whole", b""
            return
        buf += block
        m = _EVENTS_KEY.search(buf, max(0, len(buf) - len(block) - 64))
    yield "head", bytes(buf[: m.end() - 1])
    del buf[: m.end() - 1]  # buf starts with the array's '['
    scan_from = 0
    while True:
        block = reader.read()
        buf += block
        comma = _last_boundary(buf, scan_from if block else 0)
        if comma is not None:
            buf[0], buf[comma] = 0x5B, 0x5D  # '[' ... ']'
            with memoryview(buf) as view, view[: comma + 1] as chunk:
                yield "events", chunk
            del buf[:comma]
            scan_from = 0
        else:
            scan_from = max(0, len(buf) - 64)
        if not block:
            buf[0] = 0x5B
            yield "tail", bytes(buf[1:])
            return


_STRUCTURAL = re.compile(rb'[\\"\[\]{}]')
EVENT_DEPTH = 3  # the chunk's array, an event, its args: every field the analysis reads is at most this deep


def shallow(data: bytes | bytearray | memoryview, max_depth: int = EVENT_DEPTH) -> bytes:
    """``data`` (JSON) with every array or object opened deeper than ``max_depth`` replaced by ``null``: a
    value nested past the decoders' recursion limit, somewhere the analysis never reads, no longer fails
    the whole chunk. Iterative, strings and escapes respected; for the rare chunk that needs it."""
    data = bytes(data)
    out, last, depth, cut, in_str, escaped = bytearray(), 0, 0, None, False, -1
    for m in _STRUCTURAL.finditer(data):
        p = m.start()
        if p == escaped:
            continue
        c = data[p]
        if in_str:
            if c == 0x5C:  # backslash: the next byte is escaped
                escaped = p + 1
            elif c == 0x22:
                in_str = False
        elif c == 0x22:
            in_str = True
        elif c in (0x5B, 0x7B):
            depth += 1
            if depth == max_depth + 1:
                cut = p
        elif c in (0x5D, 0x7D):
            if depth == max_depth + 1 and cut is not None:
                out += data[last:cut] + b"null"
                last, cut = p + 1, None
            depth -= 1
    return bytes(out + data[last:])


class NotParsed(Exception):
    """A chunk or document that does not parse as JSON (the reason in its message)."""


def loads(data: bytes | bytearray | memoryview, depth: int = EVENT_DEPTH) -> Any:
    """orjson, falling back to the stdlib for what orjson refuses (integers beyond 64 bits, NaN, lone
    surrogates); NotParsed where neither parses it. A value nested past the parsers' limits and deeper than
    ``depth`` (where nothing is read; an array of events by default) is read as null (:func:`shallow`)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        try:
            return json.loads(bytes(data))
        except RecursionError:
            return json.loads(shallow(data, depth))
    except RecursionError:
        raise NotParsed("nesting too deep") from None
    except (ValueError, TypeError) as exc:
        raise NotParsed(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None


class EventSink(Protocol):
    """What the events of a document go to (loader's columns): a ``[...]`` chunk as bytes, or parsed events."""

    def add_chunk(self, chunk: bytes | memoryview) -> None: ...

    def add(self, events: list) -> None: ...


def stream_document(reader: CappedReader, columns: EventSink) -> dict[str, Any] | None:
    """Parse the traceEvents array chunk by chunk into ``columns``; the header (all other keys), or None
    where the layout is not Kineto's (the caller then parses the whole document)."""
    head = b""
    try:
        for kind, data in event_chunks(reader):
            if kind == "whole":
                return None
            if kind == "head":
                head = data
            elif kind == "events":
                columns.add_chunk(data)
            else:
                return _tail(head, data, columns)
    except NotParsed:
        return None
    return None


def _tail(head: bytes, tail: bytes, columns: EventSink) -> dict[str, Any] | None:
    """The last event(s) and the array's end: the ']' after which the rest parses as the header's last
    keys, tried from the end (the keys after the array are few and short: a bounded number of tries)."""
    end = len(tail)
    for _ in range(_TAIL_TRIES):
        end = tail.rfind(b"]", 0, end)
        if end < 0:
            return None
        try:
            header = loads(head + b"[]" + tail[end + 1:], EVENT_DEPTH + 1)
        except NotParsed:
            continue
        if not isinstance(header, dict):
            return None
        try:
            last = loads(b"[" + tail[:end] + b"]")
        except NotParsed:
            return None
        columns.add(last)
        return header
    return None


def whole_document(path: Path, data: bytes, columns: EventSink) -> dict[str, Any]:
    """One plain parse of the whole document (any layout, the bare-array form included): its events into
    ``columns``, its other keys returned as the header; TraceError where it is no Chrome trace."""
    first_byte_check(path, data[:4096])
    try:
        doc = loads(data, EVENT_DEPTH + 1)
    except NotParsed as exc:
        raise TraceError(f"{path} is not valid JSON ({exc})") from None
    if isinstance(doc, list):
        doc = {"traceEvents": doc}  # the bare-array form of the Chrome trace format
    if not isinstance(doc, dict) or not isinstance(doc.get("traceEvents"), list):
        raise TraceError(f"{path} is not a Chrome trace (no 'traceEvents' list)")
    columns.add(doc.pop("traceEvents"))
    return doc
