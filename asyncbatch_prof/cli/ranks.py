"""`abprof analyze` on a rank set: per-rank metrics.json files, the merged one, the summary and ranks.html."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from asyncbatch_prof.pipeline.rankset import RANK_DOCS, write_rank_set  # noqa: F401 (re-exported)


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f} %"


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v / 1e3:,.3f}"


def print_rank_set(console, doc: dict[str, Any]) -> None:
    """The rank-set summary: one row per rank, then the merged figures and the straggler."""
    from rich.table import Table

    rs = doc["rank_set"]
    table = Table(title=f"{rs['ranks']} ranks ({rs['source']}, {rs['jobs']} worker processes)", title_justify="left")
    for col in ("rank", "device", "engine thread", "window", "GPU idle", "comm", "comm overlapped", "wait ms",
                "transfer ms", "started last"):
        table.add_column(col, justify="left" if col in ("engine thread", "window") else "right")
    for rank, row in doc["ranks"].items():
        engine = row.get("engine_thread") or {}
        thread = f"{engine.get('tid')} (pid {engine.get('pid')}, {engine.get('chosen_by')})" if engine else "—"
        table.add_row(rank, str(row["device"]), thread, row["window"], _pct(row["gpu_idle_pct"]), _pct(row["comm_pct"]),
                      _pct(row["comm_overlap_pct"]), _ms(row.get("collective_wait_us")),
                      _ms(row.get("collective_transfer_us")), str(row.get("started_last", "—")))
    console.print(table)
    m, absent = doc["metrics"], doc["absent"]

    def line(name: str, label: str) -> None:
        value = m.get(name)
        if isinstance(value, dict):
            value = value.get("step", value.get("kernel"))
        console.print(f"{label}: {_pct(value)}" if value is not None else f"{label}: absent ({absent.get(name)})")

    line("gpu_idle_pct_worst_rank", f"worst rank's GPU idle (rank {rs.get('worst_idle_rank')})")
    line("comm_pct", "communication share (all ranks)")
    line("comm_overlap_pct", "communication overlapped by compute")
    line("collective_wait_pct", "collective time spent waiting for the last rank")
    console.print(f"clock: {rs['clock']}", style="dim")
    st = doc.get("straggler")
    if st and st.get("rank") is not None:
        phase = f"; its engine thread was in {st['top_phase']!r} for {st['top_phase_pct']:.1f} % of its late time" \
            if st.get("top_phase") else ""
        console.print(f"straggler: rank {st['rank']} started last in {st['started_last'].get(str(st['rank']), 0)} of "
                      f"{st['instances']} collectives{phase}")
