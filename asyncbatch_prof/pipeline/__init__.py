"""``abprof run``'s path: options → plan → for each run, engine → capture → analysis → run folder →
report, and with both loops the comparison, all from the results held in memory (each trace parsed once).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from asyncbatch_prof import runfolder as rf
from asyncbatch_prof.errors import AbprofError

if TYPE_CHECKING:  # the runner imports the report (plotly, pandas): not for every command that names an option
    from asyncbatch_prof.pipeline.outcome import RunOutcome


def compare_outcomes(outcomes: Sequence[RunOutcome], out_path: Path) -> str:
    """Write the comparison page of finished runs from their in-memory views (no trace parsed again);
    returns '' or a note saying the plain fallback page was written and why."""
    try:
        from asyncbatch_prof.report.compare import write_view_comparison

        write_view_comparison([o.view for o in outcomes], out_path)
        return ""
    except AbprofError:
        raise
    except Exception as exc:
        from asyncbatch_prof.report.plain import plain_comparison

        reason = f"the comparison page failed: {type(exc).__name__}: {exc}"
        rf.atomic_write_text(out_path, plain_comparison([o.run_dir.name for o in outcomes],
                                                        [o.metrics for o in outcomes], reason))
        return f" (plain fallback: {reason})"
