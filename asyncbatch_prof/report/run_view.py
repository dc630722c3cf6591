"""Everything a report draws from one run folder, loaded once: run.json, metrics.json, the trace analysis,
NVML samples and per-request timings.

The numbers on the page come from ``metrics.json`` (what ``gate`` reads); the pictures come from the
analysis DataFrames of the same trace, so a figure never shows a number the cards do not.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from asyncbatch_prof import __version__, runfolder
from asyncbatch_prof.errors import AbprofError


@dataclass(slots=True)
class RunView:
    """One run as the report sees it. ``analysis`` is None (with ``analysis_absent`` saying why) when
    the folder has no readable trace; frames are empty DataFrames when their file is missing."""

    run_dir: Path
    name: str
    run: dict[str, Any]
    doc: dict[str, Any]
    analysis: Any | None
    analysis_absent: str | None
    requests: pd.DataFrame
    nvml: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    @property
    def base_time_ns(self) -> int | None:
        """Epoch ns of trace time 0 (aligns NVML's epoch µs with the trace's µs), None if unknown."""
        return getattr(self.analysis, "base_time_ns", None) if self.analysis is not None else None


def _analyze(trace: Path, doc: dict[str, Any]) -> Any:
    """Re-analyze the trace with the launch-latency threshold recorded in metrics.json (default 30 µs)."""
    from asyncbatch_prof.analysis import analyze  # report → analysis; imported late: heavy

    threshold = doc.get("launch_latency_threshold_us")
    if threshold is None:
        threshold = (doc.get("trace") or {}).get("launch_latency_threshold_us", 30.0)
    return analyze(trace, launch_latency_threshold_us=float(threshold), tool_version=__version__)


def read_requests(path: Path | io.StringIO) -> pd.DataFrame:
    """requests.csv (a path, or its text in a StringIO) as a DataFrame (seconds and ms columns as the file
    has them); empty if missing."""
    if isinstance(path, Path) and not path.exists():
        return pd.DataFrame()
    try:
        frame = pd.read_csv(path, keep_default_na=True, dtype={"token_times_s": "string"})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise AbprofError(f"{path} is not a readable CSV: {exc}") from None
    for column in frame.columns:
        if column in _NUMERIC_COLUMNS:
            _numeric(frame, column, path)
    if "token_times_s" in frame.columns:
        for row, cell in frame["token_times_s"].dropna().items():
            try:
                float_times = [float(x) for x in str(cell).split()]
            except ValueError:
                float_times = [float("nan")]
            if not all(np.isfinite(float_times)):
                raise AbprofError(f"{path}: token_times_s of data row {row + 1} is not a list of seconds: "
                                  f"{str(cell)[:40]!r}")
    return frame


_NUMERIC_COLUMNS = {"prompt_len", "max_new_tokens", "output_tokens", "arrival_s", "scheduled_s", "first_token_s",
                    "finish_s", "ttft_ms", "e2e_ms", "preemptions"}  # serving.REQUESTS_COLUMNS that hold numbers


def _numeric(frame: pd.DataFrame, column: str, path: Path) -> None:
    """Turn ``column`` into floats in place, or raise one AbprofError line naming the first bad cell."""
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() & frame[column].notna()
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise AbprofError(f"{path}: column {column!r} of data row {row + 1} is not a number: "
                          f"{str(frame[column].iloc[row])[:40]!r}")
    frame[column] = values


def read_nvml(path: Path | io.StringIO) -> pd.DataFrame:
    """nvml.csv (long format ``epoch_us,series,value``; a path or its text in a StringIO) as a DataFrame;
    empty if missing."""
    if isinstance(path, Path) and not path.exists():
        return pd.DataFrame(columns=["epoch_us", "series", "value"])
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise AbprofError(f"{path} is not a readable CSV: {exc}") from None
    missing = {"epoch_us", "series", "value"} - set(frame.columns)
    if missing:
        raise AbprofError(f"{path} lacks columns {sorted(missing)} (want epoch_us,series,value)")
    _numeric(frame, "epoch_us", path)
    _numeric(frame, "value", path)
    return frame


def inter_token_ms(requests: pd.DataFrame) -> np.ndarray:
    """Inter-token latencies in ms: differences of consecutive token times of each request."""
    if "token_times_s" not in requests.columns:
        return np.empty(0)
    parts = []
    for cell in requests["token_times_s"].dropna():
        times = np.array(str(cell).split(), dtype=float)
        if times.size > 1:
            parts.append(np.diff(times) * 1e3)
    return np.concatenate(parts) if parts else np.empty(0)


def load_run(run_dir: Path, analysis: Any | None = None) -> RunView:
    """Load a complete run folder; raises AbprofError (exit 2) for an incomplete or unreadable one.

    ``analysis`` is a TraceAnalysis of the folder's trace (re-analyzed from trace.json.gz when None).
    """
    run_dir = Path(run_dir)
    runfolder.check_complete(run_dir)
    run = runfolder.read_json(run_dir / runfolder.RUN_JSON)
    metrics_path = run_dir / runfolder.METRICS_JSON
    trace = run_dir / runfolder.TRACE
    absent_reason = None
    if analysis is None:
        if trace.exists():
            doc_for_threshold = runfolder.read_json(metrics_path) if metrics_path.exists() else {}
            analysis = _analyze(trace, doc_for_threshold)
        else:
            absent_reason = f"no {runfolder.TRACE} in the run folder"
    if metrics_path.exists():
        doc = runfolder.load_metrics(metrics_path)
    elif analysis is not None:
        doc = analysis.doc
    else:
        raise AbprofError(f"run folder {run_dir} has neither {runfolder.METRICS_JSON} nor {runfolder.TRACE}")
    return RunView(
        run_dir=run_dir,
        name=run.get("mode") or run_dir.name,
        run=run,
        doc=doc,
        analysis=analysis,
        analysis_absent=absent_reason,
        requests=read_requests(run_dir / runfolder.REQUESTS_CSV),
        nvml=read_nvml(run_dir / runfolder.NVML_CSV),
    )


def view_from_memory(run_dir: Path, run: dict[str, Any], doc: dict[str, Any], analysis: Any | None,
                     requests_csv: str, nvml_csv: str) -> RunView:
    """The view of a run that is being written, from what the pipeline holds: the same frames the files
    would give (their text parsed the way the files are), without reading the folder back."""
    return RunView(
        run_dir=Path(run_dir), name=run.get("mode") or Path(run_dir).name, run=run, doc=doc, analysis=analysis,
        analysis_absent=None if analysis is not None else (doc.get("absent", {}).get("gpu_idle_pct")
                                                           or f"no {runfolder.TRACE} in the run folder"),
        requests=read_requests(io.StringIO(requests_csv)), nvml=read_nvml(io.StringIO(nvml_csv)),
    )
