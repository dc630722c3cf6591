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

import csv
import io
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
REQUESTS_COLUMNS = ("request_id", "prompt_len", "max_new_tokens", "output_tokens", "arrival_s", "scheduled_s",
                    "first_token_s", "finish_s", "ttft_ms", "e2e_ms", "preemptions", "finish_reason",
                    "rejected_reason", "token_times_s")


def _file_mode() -> int:
    """The mode ``open()`` would give a new file under the process' umask (0644 under umask 022)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename, so readers never see half a file.

    The file gets the mode an ordinary write would (mkstemp's own is 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            os.fchmod(handle.fileno(), _file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, doc: Any) -> Path:
    """Write a JSON document atomically, indented for people and diffs; returns ``path``."""
    atomic_write_text(path, json.dumps(doc, indent=2, sort_keys=False, allow_nan=False) + "\n")
    return Path(path)


def prepare_folder(run_dir: Path) -> Path:
    """Create ``run_dir`` (it must not exist or be empty) and mark it incomplete before anything runs."""
    run_dir = Path(run_dir)
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise AbprofError(f"output folder {run_dir} already exists and is not empty; choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / INCOMPLETE, "running: the run has not finished\n")
    return run_dir


def mark_complete(run_dir: Path, run_doc: dict[str, Any]) -> None:
    """The last step of a run: run.json with ``"status": "complete"``, then ``INCOMPLETE`` goes. A process
    killed between the two leaves a folder that readers still refuse (the marker is there)."""
    atomic_write_json(Path(run_dir) / RUN_JSON, run_doc)
    (Path(run_dir) / INCOMPLETE).unlink()


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
    from asyncbatch_prof.analysis.contract import metrics_problems

    problems = metrics_problems(doc)
    if problems:
        raise MetricsDocError(f"{path}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if problems[1:] else ""))
    return doc


def requests_csv(records: list[Any]) -> str:
    """requests.csv text, one row per request (INTERFACES §3 columns; token times space-separated in s)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(REQUESTS_COLUMNS)
    for r in records:
        ttft, e2e = _ms(r.first_token_s, r.arrival_s), _ms(r.finish_s, r.arrival_s)
        writer.writerow([
            r.request_id, r.prompt_len, r.max_new_tokens, len(r.output_token_ids), _num(r.arrival_s),
            _num(r.scheduled_s), _num(r.first_token_s), _num(r.finish_s), _num(ttft), _num(e2e), r.preemptions,
            r.finish_reason or "", r.rejected_reason or "", " ".join(f"{t:.6f}" for t in r.token_times_s or ()),
        ])
    return out.getvalue()


def _ms(later: float | None, earlier: float | None) -> float | None:
    return None if later is None or earlier is None else (later - earlier) * 1e3


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


class MetricsDocError(AbprofError):
    """A metrics.json whose structure or values break the contract (exit 2: bad input)."""
