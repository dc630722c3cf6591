"""Rank sets: several ranks of one job analyzed each on its own (in parallel), then merged.

A rank set is (a) a folder of per-rank traces (every ``*.json``/``*.json.gz`` directly in it), (b) a TP
run folder (``run.json`` with ``"tp": N`` and ``traces/rank0.json.gz`` … ``traces/rank{N-1}.json.gz``),
or (c) one trace holding several devices (rank = device id). Each file is analyzed by
:func:`analyze_file` in a worker process: its figures are exactly those of ``analyze(file)``. The merge
needs only a few numbers per rank and the start/end of every collective kernel (see
:mod:`asyncbatch_prof.analysis.rankset` and docs/ranks.md).
"""

from __future__ import annotations

import copy
import json
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from asyncbatch_prof.analysis import intervals
from asyncbatch_prof.analysis.comm import Collectives, comm_intervals, device_collectives
from asyncbatch_prof.analysis.document import _contract_metrics
from asyncbatch_prof.analysis.errors import TraceError
from asyncbatch_prof.analysis.gpu import join_launches
from asyncbatch_prof.analysis.host import thread_phases
from asyncbatch_prof.analysis.loader import load_trace
from asyncbatch_prof.analysis.result import TraceAnalysis

RUN_JSON, TRACES_DIR, PLAIN_TRACE = "run.json", "traces", "trace.json.gz"
_RANK_IN_NAME = re.compile(r"(?i)rank[-_]?(\d+)")
_NOT_TRACES = re.compile(r"(?i)^(metrics|run)\.json$")


@dataclass
class RankPart:
    """One rank (one device of one trace file), reduced to what the merge and the report need.

    Times are trace µs of its file; ``clock_ns`` is the epoch ns of trace µs 0 (None: unknown), so
    ``epoch_ns = clock_ns + 1000 * t``. ``doc`` is the rank's metrics.json (that of ``analyze(file)``
    when the file holds one device).
    """

    path: str
    device: int
    distributed_rank: int | None
    clock_ns: int | None
    window: str
    lo_us: float
    hi_us: float
    doc: dict[str, Any]
    collectives: Collectives
    busy: tuple[np.ndarray, np.ndarray]
    comm: tuple[np.ndarray, np.ndarray]
    comm_hidden: tuple[np.ndarray, np.ndarray]
    phases: tuple[np.ndarray, np.ndarray, np.ndarray]  # engine-thread phase segments (starts, ends, names)
    rank: int = -1
    other_devices: list[int] = field(default_factory=list)


@dataclass
class RankSetSource:
    """What was asked for: the trace files in rank order hints, and how the set was found."""

    kind: str  # "folder", "tp run", "run", "file"
    path: Path
    files: list[Path]
    run: dict[str, Any] | None = None


def find_rank_traces(path: str | Path) -> RankSetSource:
    """Resolve a file, a run folder (plain or TP) or a folder of per-rank traces into trace files."""
    path = Path(path)
    if not path.exists():
        raise TraceError(f"not found: {path}")
    if path.is_file():
        return RankSetSource("file", path, [path])
    run_json = path / RUN_JSON
    if (path / "INCOMPLETE").exists():
        reason = (path / "INCOMPLETE").read_text(errors="replace").strip() or "no reason recorded"
        raise TraceError(f"run folder {path} is incomplete: {reason}")
    if run_json.is_file():
        try:
            run = json.loads(run_json.read_text())
        except (OSError, ValueError) as exc:
            raise TraceError(f"{run_json} is not valid JSON ({exc})") from None
        if not isinstance(run, dict):
            raise TraceError(f"{run_json} does not hold a JSON object")
        tp = run.get("tp", 1)
        if not isinstance(tp, int) or isinstance(tp, bool) or tp < 1:
            raise TraceError(f"{run_json}: 'tp' must be a positive integer, not {tp!r}")
        if tp > 1 or (path / TRACES_DIR).is_dir():
            files = [path / TRACES_DIR / f"rank{r}.json.gz" for r in range(tp)]
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise TraceError(f"TP run folder {path} (tp={tp}) lacks {', '.join(missing)}")
            return RankSetSource("tp run", path, files, run)
        if not (path / PLAIN_TRACE).is_file():
            raise TraceError(f"run folder {path} holds no {PLAIN_TRACE}")
        return RankSetSource("run", path, [path / PLAIN_TRACE], run)
    files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith((".json", ".json.gz"))
                   and not _NOT_TRACES.match(p.name))
    if not files:
        raise TraceError(f"no trace (*.json, *.json.gz) in folder {path}")
    return RankSetSource("folder", path, files)


def _clock_ns(ta: TraceAnalysis) -> int | None:
    """Epoch ns of trace µs 0: needs baseTimeNanoseconds or absolute epoch timestamps."""
    if ta.base_time_ns is None:
        return None
    return int(ta.base_time_ns) + int(ta.origin_us) * 1000  # origin is a whole µs: exact, unlike µs * 1000.0


def device_doc(ta: TraceAnalysis, device: int) -> dict[str, Any]:
    """metrics.json of one device of a trace: ``ta.doc`` itself for the headline device of a one-device
    trace; otherwise the same document with that device's metrics and engine thread."""
    if device == ta.device and len(ta.devices) == 1:
        return ta.doc
    doc = copy.deepcopy(ta.doc)
    doc["device"], doc["metrics"], doc["absent"] = device, {}, {}
    _contract_metrics(SimpleNamespace(windows=ta.windows, device=device), doc)
    engine = ta.engines.get(device)
    doc["trace"]["engine_thread"] = None if engine is None else {
        "pid": engine.pid, "tid": engine.tid, "chosen_by": engine.source, "runtime_calls_only": engine.runtime_only}
    if device != ta.device:
        for key in ("steps", "launches", "phases", "host"):
            doc.pop(key, None)
        doc["note"] = f"steps, launches and host sections are computed for device {ta.device} only"
    return doc


def parts_of(ta: TraceAnalysis, ev, devices: list[int] | None = None) -> list[RankPart]:
    """One RankPart per device of an analyzed trace (``devices``: which ones; default all)."""
    launches = join_launches(ev)
    parts = []
    dist = ev.header.get("distributedInfo")
    dist_rank = dist.get("rank") if isinstance(dist, dict) and isinstance(dist.get("rank"), int) else None
    for dev in (sorted(ta.devices) if devices is None else devices):
        ops, per_window = ta.devices[dev], ta.windows[dev]
        window = "step" if not isinstance(per_window.get("step"), str) else "kernel"
        res = per_window[window]
        comm, hidden = comm_intervals(ev, ops, res.lo, res.hi)
        engine = ta.engines.get(dev)
        phases = thread_phases(ev, engine.pid, engine.tid) if engine is not None else (np.zeros(0),) * 3
        parts.append(RankPart(
            path=str(ta.path), device=dev, distributed_rank=dist_rank, clock_ns=_clock_ns(ta), window=window,
            lo_us=res.lo, hi_us=res.hi, doc=device_doc(ta, dev),
            collectives=device_collectives(ev, ops, launches), busy=intervals.clip(ops.busy, res.lo, res.hi),
            comm=comm, comm_hidden=hidden, phases=phases,
            other_devices=[d for d in sorted(ta.devices) if d != dev]))
    return parts


def analyze_file(path: str | Path, threshold_us: float, all_devices: bool = False) -> list[RankPart]:
    """Worker: analyze one trace file (the headline device, or every device), exactly as ``analyze`` does.

    Module-level and fed only picklable arguments, so it runs under a spawn-started process pool.
    """
    ev = load_trace(path)
    ta = TraceAnalysis(Path(path), ev, threshold_us)
    if ta.device is None:
        raise TraceError(f"no GPU activity in trace {path}")
    return parts_of(ta, ev, None if all_devices else [ta.device])


def analyze_files(files: list[Path], threshold_us: float, jobs: int) -> list[list[RankPart]]:
    """Analyze trace files, ``jobs`` at a time in spawn-started worker processes (1: in this process)."""
    jobs = max(1, min(jobs, len(files)))
    if jobs == 1:
        return [analyze_file(f, threshold_us) for f in files]
    ctx = multiprocessing.get_context("spawn")  # fork with threads (BLAS, orjson) is unsafe; spawn is portable
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        return list(pool.map(analyze_file, [str(f) for f in files], [threshold_us] * len(files)))


def default_jobs(n_files: int) -> int:
    """Worker processes for ``n_files`` traces: one per file, at most one per usable core."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(n_files, cores))


def assign_ranks(parts: list[RankPart], by_device: bool) -> dict[int, RankPart]:
    """Rank of each part: the device id (one file, several devices), else distributedInfo.rank, else a
    ``rank(\\d+)`` in the file name, else the file's position. Colliding ranks raise TraceError."""
    out: dict[int, RankPart] = {}
    for position, part in enumerate(parts):
        if by_device:
            rank = part.device
        elif part.distributed_rank is not None:
            rank = part.distributed_rank
        else:
            m = _RANK_IN_NAME.search(Path(part.path).name)
            rank = int(m.group(1)) if m else position
        if rank in out:
            raise TraceError(f"ranks collide: {out[rank].path} and {part.path} are both rank {rank}")
        part.rank = rank
        out[rank] = part
    return dict(sorted(out.items()))
