"""A rank set's files: ranks/rank<N>.metrics.json per rank, the merged metrics.json and ranks.html (for
``abprof analyze`` on a rank set and for ``abprof run --tp N``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from asyncbatch_prof.runfolder import atomic_write_json

RANK_DOCS = "ranks"


def write_rank_set(rs, out_dir: Path, base_doc: dict[str, Any] | None = None) -> Path:
    """Write ranks/rank<N>.metrics.json per rank and the merged metrics.json (``base_doc`` with the
    rank-set sections and metrics added, when given: a multi-device trace keeps its single-trace doc)."""
    out_dir = Path(out_dir)
    for rank, part in rs.ranks.items():
        name = f"{RANK_DOCS}/rank{rank}.metrics.json"
        atomic_write_json(out_dir / name, part.doc)
        rs.doc["ranks"][str(rank)]["metrics_json"] = name
    doc = rs.doc
    if base_doc is not None:
        doc = dict(base_doc)
        for key in ("rank_set", "ranks", "collectives", "straggler"):
            doc[key] = rs.doc[key]
        doc["metrics"] = {**base_doc["metrics"], **{k: v for k, v in rs.doc["metrics"].items()
                                                   if k in ("gpu_idle_pct_worst_rank", "collective_wait_pct")}}
        doc["absent"] = {**base_doc["absent"], **{k: v for k, v in rs.doc["absent"].items()
                                                 if k in ("gpu_idle_pct_worst_rank", "collective_wait_pct")}}
    target = out_dir / "metrics.json"
    atomic_write_json(target, doc)
    from asyncbatch_prof.report.ranks import write_rank_report

    write_rank_report(rs, out_dir / "ranks.html")
    return target


def write_ranks_unmerged(docs: dict[int, dict[str, Any]], out_dir: Path, base_doc: dict[str, Any],
                         reason: str) -> Path:
    """Ranks that cannot be merged (no GPU activity, e.g. a CPU run): each rank's own metrics.json under
    ranks/, and the merged metrics.json as ``base_doc`` with the rank-set metrics absent for ``reason``."""
    out_dir = Path(out_dir)
    rows = {}
    for rank, part_doc in docs.items():
        name = f"{RANK_DOCS}/rank{rank}.metrics.json"
        atomic_write_json(out_dir / name, part_doc)
        rows[str(rank)] = {"device": part_doc.get("device"), "metrics_json": name}
    doc = dict(base_doc)
    doc["rank_set"] = {"source": "tp run", "path": str(out_dir), "ranks": len(docs), "merged": False,
                       "reason": reason}
    doc["ranks"] = rows
    doc["absent"] = {**base_doc["absent"], **{k: reason for k in ("gpu_idle_pct_worst_rank", "collective_wait_pct")}}
    target = out_dir / "metrics.json"
    atomic_write_json(target, doc)
    return target
