"""A builder for small synthetic torch.profiler traces with known answers (times in µs)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest


class TraceBuilder:
    """Writes Kineto-shaped events: CPU rows on (pid, tid), GPU rows on (device, stream), ac2g flows."""

    def __init__(self, absolute: bool = False, pid: int = 1000, tid: int = 1000):
        self.offset = 1_712_195_495_000_000.0 if absolute else 0.0
        self.absolute = absolute
        self.pid, self.tid = pid, tid
        self.events: list[dict] = []
        self.next_corr = 1

    def _ts(self, t: float) -> float:
        return self.offset + t

    def cpu(self, name: str, ts: float, dur: float, cat: str = "cpu_op", tid: int | None = None) -> None:
        """A CPU range (cpu_op, user_annotation, python_function, cuda_runtime...) on a thread."""
        self.events.append({"ph": "X", "cat": cat, "name": name, "pid": self.pid, "tid": tid or self.tid,
                            "ts": self._ts(ts), "dur": dur, "args": {"External id": len(self.events)}})

    def launch(self, ts: float, dur: float, ops: list[tuple[float, float]], name: str = "cudaLaunchKernel",
               cat: str = "cuda_runtime", stream: int = 7, device: int = 0, op_cat: str = "kernel",
               op_name: str = "k", nbytes: int | None = None, tid: int | None = None) -> int:
        """A launch call at [ts, ts+dur) and the GPU ops (start, dur) it issued, joined by correlation."""
        corr = self.next_corr
        self.next_corr += 1
        tid = tid or self.tid
        self.events.append({"ph": "X", "cat": cat, "name": name, "pid": self.pid, "tid": tid, "ts": self._ts(ts),
                            "dur": dur, "args": {"cbid": 211, "correlation": corr}})
        self.events.append({"ph": "s", "id": corr, "pid": self.pid, "tid": tid, "ts": self._ts(ts), "cat": "ac2g",
                            "name": "ac2g"})
        for start, length in ops:
            args = {"device": device, "stream": stream, "correlation": corr, "queued": 0}
            if nbytes is not None:
                args["bytes"] = nbytes
            self.events.append({"ph": "X", "cat": op_cat, "name": op_name, "pid": device, "tid": stream,
                                "ts": self._ts(start), "dur": length, "args": args})
            self.events.append({"ph": "f", "id": corr, "pid": device, "tid": stream, "ts": self._ts(start),
                                "cat": "ac2g", "name": "ac2g", "bp": "e"})
        return corr

    def doc(self) -> dict:
        """The trace document, with the metadata rows real traces carry (16 GPU labels, process names)."""
        meta = [{"name": "process_labels", "ph": "M", "pid": d, "tid": 0, "args": {"labels": f"GPU {d}"}}
                for d in range(16)]
        meta.append({"name": "thread_name", "ph": "M", "pid": self.pid, "tid": self.tid, "args": {"name": "python"}})
        doc = {"schemaVersion": 1, "deviceProperties": [{"id": 0, "name": "Fake GPU"}],
               "traceEvents": self.events + meta + [
                   {"ph": "X", "cat": "Trace", "name": "PyTorch Profiler (0)", "pid": "Spans",
                    "tid": "PyTorch Profiler", "ts": self._ts(0), "dur": 1.0},
                   {"ph": "i", "s": "g", "name": "Record Window End", "pid": "", "tid": "", "ts": self._ts(0)}],
               "traceName": "synthetic"}
        if not self.absolute:
            doc["baseTimeNanoseconds"] = 1_790_857_026_000_000_000
        return doc

    def write(self, path: Path, gz: bool = True) -> Path:
        """Write the trace (Kineto-like indentation, so the chunked reader is exercised)."""
        text = json.dumps(self.doc(), indent=2)
        path = Path(path)
        if gz:
            path.write_bytes(gzip.compress(text.encode()))
        else:
            path.write_text(text)
        return path


@pytest.fixture
def trace_builder():
    """The TraceBuilder class."""
    return TraceBuilder
