"""report.html for a run: the report package's page, or a plain fallback page when that cannot be written.

The fallback is a small, self-contained table of metrics.json (values and absences with reasons),
so a run folder always has a report that opens; run.json's ``report`` says which one was written.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from asyncbatch_prof import runfolder as rf


def write_run_report(run_dir: Path, run_doc: dict[str, Any], analysis: Any = None) -> dict[str, Any]:
    """Write run_dir/report.html while run_dir is still INCOMPLETE; return run.json's ``report`` entry.

    The report package reads complete folders only, so it reads a staged view of the finished run
    (hard links, and run.json as it will be on completion) and writes its page into ``run_dir``.
    """
    run_dir = Path(run_dir)
    try:
        from asyncbatch_prof.report import write_report
    except ImportError as exc:
        return _fallback(run_dir, run_doc, f"asyncbatch_prof.report is not available: {exc}")
    stage_root = Path(tempfile.mkdtemp(prefix=".abprof-stage-", dir=run_dir.parent))
    try:
        stage = stage_root / run_dir.name
        stage.mkdir()
        for item in run_dir.iterdir():
            if item.is_file() and item.name not in (rf.INCOMPLETE, rf.RUN_JSON) and not item.name.startswith("."):
                _link_or_copy(item, stage / item.name)
        rf.atomic_write_json(stage / rf.RUN_JSON, run_doc)
        write_report(stage, analysis=analysis, out=run_dir / rf.REPORT_HTML)
    except Exception as exc:  # the run's data is written; a report failure must not lose it
        return _fallback(run_dir, run_doc, f"write_report failed: {type(exc).__name__}: {exc}")
    finally:
        shutil.rmtree(stage_root, ignore_errors=True)
    return {"writer": "asyncbatch_prof.report", "fallback_reason": None}


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _fallback(run_dir: Path, run_doc: dict[str, Any], reason: str) -> dict[str, Any]:
    metrics = json.loads((run_dir / rf.METRICS_JSON).read_text())
    rf.atomic_write_text(run_dir / rf.REPORT_HTML, plain_page(run_doc, metrics, reason))
    return {"writer": "plain fallback", "fallback_reason": reason}


def _rows(items) -> str:
    return "\n".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v))}</td></tr>" for k, v in items)


def _fmt(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.4g}"
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
<h2>Metrics</h2><table>{_rows(sorted(metrics.get("metrics", {}).items()))}</table>
<h2>Not measured</h2><table>{_rows(sorted(metrics.get("absent", {}).items()))}</table>
</body></html>
"""


def plain_comparison(run_dirs: list[Path], reason: str) -> str:
    """A minimal HTML table of the runs' metrics side by side (fallback for the report package)."""
    docs = [json.loads((Path(d) / rf.METRICS_JSON).read_text()) for d in run_dirs]
    names = sorted({n for doc in docs for n in doc.get("metrics", {})})
    head = "".join(f"<th>{html.escape(Path(d).name)}</th>" for d in run_dirs)
    body = "\n".join("<tr><td>" + html.escape(n) + "</td>" +
                     "".join(f"<td>{html.escape(_fmt(doc['metrics'].get(n, '—')))}</td>" for doc in docs) + "</tr>"
                     for n in names)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>abprof comparison</title></head><body>
<h1>abprof comparison</h1><p>Plain comparison ({html.escape(reason)}).</p>
<table><tr><th>metric</th>{head}</tr>
{body}</table></body></html>
"""
