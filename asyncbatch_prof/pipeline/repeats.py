"""``abprof run --repeats N``: one mode's folder made from its N measured passes.

Layout (``RUN`` is ``OUT`` for one mode, ``OUT/sync`` and ``OUT/async`` for both)::

    RUN/
      r1/ ... rN/       each a complete run folder of one measured pass (its own trace, metrics.json, report)
      metrics.json      medians of the repeats and the ``repeats`` section (analysis.repeats)
      run.json          the representative repeat's run.json, with ``repeats`` (n, order, folders, times)
      trace.json.gz, nvml.csv, requests.csv   copies of the representative repeat's (the median tokens/s)
      report.html       the report of those files with the medians and their spread

So ``RUN`` reads like any run folder (report, compare, gate take it, with the medians), and
``abprof gate RUN/r*`` gets every repeat as a repeat of one side.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Sequence

from asyncbatch_prof import runfolder as rf
from asyncbatch_prof.analysis.repeats import merge_repeats, representative
from asyncbatch_prof.pipeline.plan import RunSpec
from asyncbatch_prof.pipeline.outcome import RunOutcome, jsonable, now_iso
from asyncbatch_prof.report.run_view import view_from_memory

COPIED = (rf.TRACE, rf.NVML_CSV, rf.REQUESTS_CSV)


def start_folder(spec: RunSpec, run_dir: Path, n: int) -> None:
    """Make the mode's folder, marked INCOMPLETE until every repeat is in and merged."""
    rf.prepare_folder(run_dir)
    rf.atomic_write_json(run_dir / rf.RUN_JSON, {
        "status": "incomplete", "reason": "running", "mode": spec.mode, "engine": spec.engine,
        "command": list(spec.command), "argv": list(spec.argv), "workload": dict(spec.workload),
        "repeats": {"n": n}, "started_at": now_iso()})


def fail_folder(run_dir: Path, reason: str) -> None:
    """Leave the mode's folder INCOMPLETE with ``reason`` (a repeat failed or was interrupted)."""
    if (run_dir / rf.INCOMPLETE).exists():
        try:
            run_doc = rf.read_json(run_dir / rf.RUN_JSON)
            run_doc.update(reason=reason, finished_at=now_iso())
            rf.atomic_write_json(run_dir / rf.RUN_JSON, run_doc)
        finally:
            rf.atomic_write_text(run_dir / rf.INCOMPLETE, reason + "\n")


def _copy(src: Path, dst: Path) -> None:
    """Copy through a temporary name and a rename (a hard link where the filesystem allows)."""
    tmp = dst.with_name(f".{dst.name}.copy")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def merge_folder(spec: RunSpec, run_dir: Path, outcomes: Sequence[RunOutcome], order: Sequence[int],
                 engine_reuse: str) -> RunOutcome:
    """Write the mode folder from its repeats (run order): medians and spread in metrics.json, the
    representative repeat's files, the report, then run.json complete. ``order``: each repeat's position
    among all measured passes of the command (1-based); ``engine_reuse`` says how engines were kept."""
    rep = representative([o.metrics for o in outcomes])
    chosen = outcomes[rep]
    doc = jsonable(merge_repeats([o.metrics for o in outcomes], rep, order))
    for name in COPIED:
        if (chosen.run_dir / name).exists():
            _copy(chosen.run_dir / name, run_dir / name)
    run_doc: dict[str, Any] = dict(chosen.run)
    run_doc.update(command=list(spec.command), status="complete", reason=None, finished_at=now_iso(),
                   repeats=repeats_record(run_dir, outcomes, order, rep, engine_reuse))
    run_doc["started_at"] = run_doc["repeats"]["started_at"][0]
    rf.atomic_write_json(run_dir / rf.METRICS_JSON, doc)
    text = {n: (run_dir / n).read_text() if (run_dir / n).exists() else "" for n in (rf.REQUESTS_CSV, rf.NVML_CSV)}
    view = view_from_memory(run_dir, run_doc, doc, getattr(chosen.view, "analysis", None),
                            text[rf.REQUESTS_CSV], text[rf.NVML_CSV])
    from asyncbatch_prof.report.plain import write_run_report

    run_doc["report"] = write_run_report(view)
    run_doc = jsonable(run_doc)
    view.run = run_doc
    rf.mark_complete(run_dir, run_doc)
    return RunOutcome(run_dir, doc, run_doc, view)


def repeats_record(run_dir: Path, outcomes: Sequence[RunOutcome], order: Sequence[int], rep: int,
                   engine_reuse: str) -> dict[str, Any]:
    """run.json's ``repeats``: how many, where, in which order, when each ran, and which one the folder's
    files are."""
    return {"n": len(outcomes), "folders": [str(o.run_dir.relative_to(run_dir)) for o in outcomes],
            "order": list(order), "representative": str(outcomes[rep].run_dir.relative_to(run_dir)),
            "started_at": [o.run.get("started_at") for o in outcomes],
            "generate_start_epoch_ns": [o.run.get("generate_start_epoch_ns") for o in outcomes],
            "engine_reuse": engine_reuse}
