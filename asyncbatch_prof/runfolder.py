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
    """Load metrics.json from a complete run folder, or from a metrics.json file given directly."""
    path = Path(path)
    if path.is_dir():
        check_complete(path)
        path = path / METRICS_JSON
    doc = read_json(path)
    if "metrics" not in doc or "schema_version" not in doc:
        raise AbprofError(f"{path} is not an abprof metrics.json (no 'metrics' or 'schema_version')")
    return doc
