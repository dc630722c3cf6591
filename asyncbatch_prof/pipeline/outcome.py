"""What a finished run hands on, and the small rules every run path applies (one run, a tensor-parallel
run, repeats): its outcome, the rejected-workload check, JSON-safe values and the timestamp."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asyncbatch_prof.errors import AbprofError

if TYPE_CHECKING:  # the report's view imports pandas: not for the commands that only name an outcome
    from asyncbatch_prof.report.run_view import RunView


@dataclass
class RunOutcome:
    """What a finished run left: its folder, metrics.json and run.json documents, and the report's view
    of it (the trace analysis included), for the summary and the comparison."""

    run_dir: Path
    metrics: dict[str, Any]
    run: dict[str, Any]
    view: RunView | None = None


def now_iso() -> str:
    """Current UTC time, ISO 8601 with seconds."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def check_rejected(records: list) -> None:
    """Fail the run (exit 1) when the engine rejected every request: it measured nothing."""
    if records and all(r.finish_reason == "rejected" for r in records):
        why = next((r.rejected_reason for r in records if r.rejected_reason), None) or "no reason given"
        raise AbprofError(f"the engine rejected all {len(records)} requests ({why})", exit_code=1)


def jsonable(value: Any) -> Any:
    """Replace NaN/inf (which JSON cannot hold) with None, recursively; other values as they are."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value
