"""Where a trace's engine steps come from, for any engine.

Tried in order, the first that finds steps wins and is recorded as ``steps.source``:

1. ``abprof.step`` annotations (the first profiled step excluded, as before);
2. a user mapping (``--steps-config`` / ``abprof.toml [steps]`` / ``pyproject.toml [tool.abprof.steps]``):
   range name pattern -> ``"step"`` or a phase label;
3. ``ProfilerStep#N`` ranges of torch.profiler's schedule;
4. the markers of known engines (SGLang, vLLM, transformers continuous batching; SGLang first because its
   traces can carry the ``execute_*_context_*`` annotation that vLLM's also carry);
5. the trace's structure: the engine thread's ``cudaGraphLaunch`` calls (one graph replay per step),
   else its host synchronizations (a step is the run of launches between two of them).

A pattern matches a range name exactly, as a shell glob (``*``, ``?``), or as the function part of a
``python_function`` row (``file.py(123): name``). Phase mappings label the engine thread's CPU time
for host-bound attribution; where an engine's markers name no phase, the innermost CPU row is used.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from asyncbatch_prof.analysis.errors import TraceError
from asyncbatch_prof.analysis.gpu import Launches
from asyncbatch_prof.analysis.host import SYNC_CALLS, EngineThread, innermost_segments, names_matching
from asyncbatch_prof.analysis.loader import PYTHON_FUNCTION, RUNTIME, DRIVER, USER_ANNOTATION, CPU_OP, TraceEvents
from asyncbatch_prof.analysis.steps import StepRanges, step_ranges

MARKER_CATS = (USER_ANNOTATION, PYTHON_FUNCTION, CPU_OP)


@dataclass
class EngineMarkers:
    """How one engine marks its steps and phases: step patterns (first that matches wins) and phases."""

    engine: str
    steps: tuple[str, ...]
    phases: dict[str, str] = field(default_factory=dict)


KNOWN_ENGINES = (
    EngineMarkers("sglang", ("step[[]*[]]*", "*scheduler.py(*): run_batch", "*scheduler.py(*): _run_batch_inner"),
                  {"get_next_batch_to_run": "schedule", "recv_requests": "receive requests",
                   "*forward_batch_info.py(*): init_new": "prepare inputs", "*model_runner.py(*): sample": "sample",
                   "process_batch_result*": "process results", "*cuda_graph_runner.py(*): replay_prepare":
                   "prepare inputs"}),
    EngineMarkers("vllm", ("*gpu_model_runner.py(*): execute_model", "*model_runner*: execute_model",
                           "execute_*_context_*_generation_*"),
                  {"*scheduler.py(*): schedule": "schedule", "_update_states": "update states",
                   "_prepare_inputs": "prepare inputs", "_build_attention_metadata": "prepare inputs",
                   "*sampler.py(*): forward": "sample", "_sample": "sample", "_bookkeeping_sync": "bookkeeping",
                   "gpu_model_runner: preprocess": "prepare inputs", "gpu_model_runner: sample": "sample",
                   "gpu_model_runner: postprocess": "process outputs", "gpu_model_runner: bookkeep": "bookkeeping",
                   "*output_processor.py(*): process_outputs": "process outputs"}),
    EngineMarkers("transformers", ("*continuous_api.py(*): _generation_step", "_generation_step"),
                  {"prepare_next_batch": "prepare batch", "update_batch": "update batch", "_sample": "sample",
                   "*continuous_api.py(*): _model_forward": "forward", "schedule_batch": "schedule"}),
)


@dataclass
class StepsConfig:
    """A user's mapping of range names to steps: ``steps`` patterns and ``phases`` {pattern: label}."""

    steps: tuple[str, ...]
    phases: dict[str, str]
    path: str


def load_steps_config(path: str | Path) -> StepsConfig:
    """Read ``[steps]`` of abprof.toml (or ``[tool.abprof.steps]`` of pyproject.toml): pattern = "step" or a
    phase label. Raises TraceError (exit 2) when the file or table is missing or malformed."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise TraceError(f"cannot read steps config {path}: {exc}") from None
    table = doc.get("steps", doc.get("tool", {}).get("abprof", {}).get("steps"))
    if not isinstance(table, dict) or not table:
        raise TraceError(f"{path} has no [steps] (or [tool.abprof.steps]) table mapping names to 'step' or a phase")
    bad = [k for k, v in table.items() if not isinstance(v, str) or not v]
    if bad:
        raise TraceError(f"{path} [steps]: {bad[0]!r} must map to \"step\" or a phase label (a string)")
    steps = tuple(k for k, v in table.items() if v == "step")
    if not steps:
        raise TraceError(f"{path} [steps] maps no name to \"step\"")
    return StepsConfig(steps, {k: v for k, v in table.items() if v != "step"}, str(path))


def find_steps_config(folder: str | Path) -> Path | None:
    """The steps config a folder offers: its abprof.toml when that has a [steps] table, else its
    pyproject.toml when that has [tool.abprof.steps]; None when neither does."""
    for name, keys in (("abprof.toml", ("steps",)), ("pyproject.toml", ("tool", "abprof", "steps"))):
        path = Path(folder) / name
        if not path.is_file():
            continue
        try:
            table: object = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            if name == "abprof.toml":
                raise TraceError(f"cannot read steps config {path}: {exc}") from None
            continue
        for key in keys:
            table = table.get(key) if isinstance(table, dict) else None
        if isinstance(table, dict):
            return path
    return None


def _matcher(pattern: str):
    glob = re.compile(fnmatch.translate(pattern))
    plain = not any(ch in pattern for ch in "*?[")

    def match(name: str) -> bool:
        if glob.match(name):
            return True
        return plain and name.rpartition("): ")[2] == pattern

    return match


def _marker_rows(ev: TraceEvents, pattern: str) -> np.ndarray:
    hit = names_matching(ev, _matcher(pattern))
    return np.flatnonzero(hit[ev.name] & np.isin(ev.cat, MARKER_CATS))


def _outermost(ev: TraceEvents, rows: np.ndarray) -> StepRanges | None:
    """Top-level ranges of the thread that holds most of ``rows`` (nested matches dropped), µs."""
    if rows.size == 0:
        return None
    pairs, counts = np.unique(np.stack([ev.pid[rows], ev.tid[rows]], axis=1), axis=0, return_counts=True)
    pid, tid = pairs[np.argmax(counts)]
    rows = rows[(ev.pid[rows] == pid) & (ev.tid[rows] == tid)]
    s, e = ev.ts_us[rows], ev.ts_us[rows] + ev.dur_us[rows]
    order = np.lexsort((-e, s))
    s, e = s[order], e[order]
    keep = np.concatenate(([True], s[1:] >= np.maximum.accumulate(e)[:-1]))
    s, e = s[keep], e[keep]
    return StepRanges(np.arange(s.size), s, e, int(s.size))


def _structure(ev: TraceEvents, engine: EngineThread | None, launches: Launches) -> tuple[StepRanges | None, str]:
    if engine is None or launches.start_us.size == 0:
        return None, ""
    mine = (launches.pid == engine.pid) & (launches.tid == engine.tid)
    starts = np.sort(launches.start_us[mine])
    names = np.array(ev.names, dtype=object)[ev.name[launches.row[mine]]]
    graph = np.sort(launches.start_us[mine][names == "cudaGraphLaunch"])
    if graph.size >= 2:
        return _tiled(graph, float(launches.end_us[mine].max())), "graph launches (cudaGraphLaunch on the engine thread)"
    is_sync = names_matching(ev, lambda n: n in SYNC_CALLS)[ev.name]
    sync = np.flatnonzero(is_sync & (ev.pid == engine.pid) & (ev.tid == engine.tid) & np.isin(ev.cat, (RUNTIME, DRIVER)))
    ends = np.sort(ev.ts_us[sync] + ev.dur_us[sync])
    if ends.size < 2:
        return None, ""
    # a step: the launches between two host synchronizations; several syncs in a row make one boundary
    first_after = np.searchsorted(starts, ends, side="right")
    first_after = np.unique(first_after[first_after < starts.size])
    cut = np.unique(np.concatenate(([starts[0]], starts[first_after])))
    if cut.size < 2:
        return None, ""
    return _tiled(cut, float(launches.end_us[mine].max())), "host synchronizations on the engine thread"


def _tiled(starts: np.ndarray, last_end: float) -> StepRanges:
    ends = np.append(starts[1:], max(last_end, float(starts[-1])))
    return StepRanges(np.arange(starts.size), starts, ends, int(starts.size))


def detect_steps(ev: TraceEvents, engine: EngineThread | None, launches: Launches,
                 config: StepsConfig | None = None) -> tuple[StepRanges | None, dict]:
    """The profiled steps and where they came from: ({"source", "detail", ...}); (None, {...reason}) if none."""
    def own(rows: np.ndarray) -> np.ndarray:
        # a file holding several processes (ranks): the engine's own process' markers, where it has any
        if engine is None:
            return rows
        mine = rows[ev.pid[rows] == engine.pid]
        return mine if mine.size else rows

    annotated = step_ranges(ev, engine)
    if annotated is not None:
        return annotated, {"source": "abprof", "detail": "abprof.step annotations (first profiled step excluded)"}
    if config is not None:
        for pattern in config.steps:
            found = _outermost(ev, own(_marker_rows(ev, pattern)))
            if found is not None:
                return found, {"source": "config", "detail": f"{pattern!r} from {config.path}",
                               "phases": dict(config.phases)}
    found = _outermost(ev, own(np.flatnonzero(names_matching(ev, lambda n: n.startswith("ProfilerStep#"))[ev.name]
                                              & (ev.cat == USER_ANNOTATION))))
    if found is not None:
        return found, {"source": "profiler_steps", "detail": "ProfilerStep#N ranges"}
    for markers in KNOWN_ENGINES:
        for pattern in markers.steps:
            found = _outermost(ev, own(_marker_rows(ev, pattern)))
            if found is not None:
                return found, {"source": markers.engine, "detail": f"{markers.engine} markers {pattern!r}",
                               "phases": dict(markers.phases)}
    found, detail = _structure(ev, engine, launches)
    if found is not None:
        return found, {"source": "structure", "detail": detail}
    return None, {"source": None, "detail": "no step markers, profiler steps, graph launches or host syncs found"}


def phase_segments(ev: TraceEvents, pid: int, tid: int, phases: dict[str, str]):
    """The engine's named phases on one thread as disjoint segments (starts, ends, labels; µs), innermost
    mapped range winning; None when no range of the thread matches a phase pattern."""
    if not phases:
        return None
    label = np.full(len(ev.names), -1, dtype=np.int64)
    labels = list(dict.fromkeys(phases.values()))
    for pattern, phase in phases.items():
        hit = names_matching(ev, _matcher(pattern)) & (label < 0)
        label[hit] = labels.index(phase)
    rows = np.flatnonzero((ev.pid == pid) & (ev.tid == tid) & np.isin(ev.cat, MARKER_CATS) & (label[ev.name] >= 0))
    if rows.size == 0:
        return None
    s, e, codes = innermost_segments(ev.ts_us[rows], ev.ts_us[rows] + ev.dur_us[rows], label[ev.name[rows]])
    return s, e, np.array([labels[c] for c in codes], dtype=object)
