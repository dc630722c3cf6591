"""The run folder that ``abprof run`` writes and ``analyze``/``report``/``compare``/``gate`` read.

Layout::

    RUN/
      INCOMPLETE        present while the run is being written, or after it failed (holds the reason)
      run.json          command line, config, workload, seed, environment, status
      trace.json.gz     the torch.profiler trace, unchanged (opens in Perfetto)
      nvml.csv          NVML samples, long format: epoch_us,series,value
      requests.csv      per-request timings
      metrics.json      the metric contract's numbers (asyncbatch_prof.analysis.contract)
      report.html       the self-contained HTML report

A folder is complete only when ``INCOMPLETE`` is absent and ``run.json`` says ``"status": "complete"``:
readers refuse anything else, so an interrupted run never passes for a finished one.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from asyncbatch_prof.errors import AbprofError

INCOMPLETE = "INCOMPLETE"
RUN_JSON = "run.json"
TRACE = "trace.json.gz"
NVML_CSV = "nvml.csv"
REQUESTS_CSV = "requests.csv"
METRICS_JSON = "metrics.json"
REPORT_HTML = "report.html"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, doc: Any) -> None:
    """Write a JSON document atomically, indented for people and diffs."""
    atomic_write_text(path, json.dumps(doc, indent=2, sort_keys=False, allow_nan=False) + "\n")


def check_complete(run_dir: Path) -> None:
    """Raise AbprofError (exit 2) unless ``run_dir`` is a complete run folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise AbprofError(f"not a run folder: {run_dir}")
    marker = run_dir / INCOMPLETE
    if marker.exists():
        reason = marker.read_text(errors="replace").strip() or "no reason recorded"
        raise AbprofError(f"run folder {run_dir} is incomplete: {reason}")
    run = read_json(run_dir / RUN_JSON)
    if run.get("status") != "complete":
        raise AbprofError(f"run folder {run_dir} is not marked complete (status: {run.get('status')!r})")


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object, turning a missing or malformed file into one AbprofError line."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise AbprofError(f"file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AbprofError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise AbprofError(f"{path} does not hold a JSON object")
    return doc


def load_metrics(path: Path) -> dict[str, Any]:
    """Load metrics.json from a complete run folder, or from a metrics.json file given directly.

    Raises AbprofError (exit 2) for a document abprof cannot read as its metric contract: no
    ``metrics``/``schema_version``, an unknown ``schema_version``, ``metrics`` or ``absent`` not objects,
    or a contract metric whose value has the wrong type (see :func:`metrics_problems`). A metrics.json
    inside an incomplete run folder is refused like the folder.
    """
    path = Path(path)
    if path.is_dir():
        check_complete(path)
        path = path / METRICS_JSON
    elif (path.parent / RUN_JSON).exists() or (path.parent / INCOMPLETE).exists():
        check_complete(path.parent)
    doc = read_json(path)
    if "metrics" not in doc or "schema_version" not in doc:
        raise AbprofError(f"{path} is not an abprof metrics.json (no 'metrics' or 'schema_version')")
    problems = metrics_problems(doc)
    if problems:
        raise MetricsDocError(f"{path}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if problems[1:] else ""))
    return doc


class MetricsDocError(AbprofError):
    """A metrics.json whose structure or values break the contract (exit 2: bad input)."""


def metrics_problems(doc: dict[str, Any]) -> list[str]:
    """What makes ``doc`` unusable as contract evidence, one phrase each (empty: usable).

    Values are never coerced: ``true`` is not 1, ``"true"`` is not a bool, NaN and infinity are not numbers.
    """
    from asyncbatch_prof.analysis.contract import METRICS, SCHEMA_VERSIONS

    version = doc.get("schema_version")
    if isinstance(version, bool) or version not in SCHEMA_VERSIONS:
        known = ", ".join(map(str, SCHEMA_VERSIONS))
        return [f"schema_version {version!r} is not one this abprof reads ({known})"]
    metrics, absent = doc.get("metrics"), doc.get("absent", {})
    problems = []
    if not isinstance(metrics, dict):
        problems.append(f"'metrics' must be an object, not {type(metrics).__name__}")
        metrics = {}
    if not isinstance(absent, dict):
        problems.append(f"'absent' must be an object, not {type(absent).__name__}")
    elif any(not isinstance(v, str) for v in absent.values()):
        problems.append("'absent' must map metric names to reasons (strings)")
    for name, value in metrics.items():
        metric = METRICS.get(name)
        if metric is not None and not _valid_value(value, metric.unit, metric.windowed):
            problems.append(f"metric {name} has an invalid value {_short(value)} ({_expected(metric.unit)})")
    return problems


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _valid_value(value: Any, unit: str, windowed: bool) -> bool:
    if unit == "bool":
        return isinstance(value, bool)
    if windowed and isinstance(value, dict):
        return bool(value) and all(k in ("step", "kernel") and (v is None or _is_number(v)) for k, v in value.items())
    return _is_number(value)


def _expected(unit: str) -> str:
    return "expected true or false" if unit == "bool" else "expected a finite number"


def _short(value: Any) -> str:
    text = json.dumps(value, allow_nan=True, default=str)
    return text if len(text) <= 40 else text[:37] + "..."
