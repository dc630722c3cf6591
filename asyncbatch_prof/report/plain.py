"""report.html for a run: the report package's page, or a plain fallback page when that cannot be written.

The fallback is a small, self-contained table of metrics.json (values and absences with reasons),
so a run folder always has a report that opens; run.json's ``report`` says which one was written.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Sequence

from asyncbatch_prof import runfolder as rf
from asyncbatch_prof.analysis.contract import format_value, parse_name


def write_run_report(view) -> dict[str, Any]:
    """Write report.html of the run ``view`` (a RunView built from memory, while the folder is still
    INCOMPLETE); return run.json's ``report`` entry. A failure of the full report writes the plain page."""
    path = Path(view.run_dir) / rf.REPORT_HTML
    try:
        from asyncbatch_prof.report.run_report import render_report

        rf.atomic_write_text(path, render_report(view))
    except Exception as exc:  # the run's data is written; a report failure must not lose it
        reason = f"render_report failed: {type(exc).__name__}: {exc}"
        rf.atomic_write_text(path, plain_page(view.run, view.doc, reason))
        return {"writer": "plain fallback", "fallback_reason": reason}
    return {"writer": "asyncbatch_prof.report", "fallback_reason": None}


def _rows(items) -> str:
    return "\n".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v))}</td></tr>" for k, v in items)


def _metric_rows(items) -> str:
    return "\n".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v, k))}</td></tr>" for k, v in items)


def _fmt(value: Any, name: str | None = None) -> str:
    """A contract metric through the one formatter (each window of a windowed one); anything else as text."""
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v, f'{name}.{k}' if name else None)}" for k, v in value.items())
    if name is not None and isinstance(value, (int, float)):
        try:
            parse_name(name)
        except KeyError:
            pass
        else:
            return format_value(name, value)
    return str(value)


def plain_page(run: dict[str, Any], metrics: dict[str, Any], reason: str) -> str:
    """A minimal HTML page of a run's metrics (no scripts, no external resources)."""
    title = f"abprof run: {run.get('engine')} engine, {run.get('mode')} mode"
    env = run.get("environment") or {}
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em}}td{{padding:2px 12px;border-bottom:1px solid #ddd}}</style>
</head><body>
<h1>{html.escape(title)}</h1>
<p>Plain report ({html.escape(reason)}).</p>
<h2>Run</h2><table>{_rows([("model", (run.get("model") or {}).get("model")), ("workload", run.get("workload")),
                            ("profiled steps", run.get("profiled_steps")), ("gpu", env.get("gpu")),
                            ("torch", env.get("torch")), ("started", run.get("started_at"))])}</table>
<h2>Metrics</h2><table>{_metric_rows(sorted(metrics.get("metrics", {}).items()))}</table>
<h2>Not measured</h2><table>{_rows(sorted(metrics.get("absent", {}).items()))}</table>
</body></html>
"""


def plain_comparison(names: Sequence[str], docs: Sequence[dict[str, Any]], reason: str) -> str:
    """A minimal HTML table of the runs' metrics side by side (fallback for the comparison page)."""
    metrics = sorted({n for doc in docs for n in doc.get("metrics", {})})
    head = "".join(f"<th>{html.escape(name)}</th>" for name in names)
    body = "\n".join("<tr><td>" + html.escape(n) + "</td>" +
                     "".join(f"<td>{html.escape(_fmt(doc['metrics'].get(n, '—'), n))}</td>" for doc in docs) + "</tr>"
                     for n in metrics)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>abprof comparison</title></head><body>
<h1>abprof comparison</h1><p>Plain comparison ({html.escape(reason)}).</p>
<table><tr><th>metric</th>{head}</tr>
{body}</table></body></html>
"""
