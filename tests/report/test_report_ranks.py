"""The rank-set page: a timeline row per rank and the communication bars, from the merged document."""

from __future__ import annotations

from pathlib import Path

from asyncbatch_prof.analysis.rankset import analyze_rank_set
from asyncbatch_prof.report.ranks import comm_bars_figure, rank_timeline_figure, render_rank_set

HTA = Path(__file__).resolve().parents[1] / "data" / "traces" / "hta_ranks"


def test_rank_page_has_a_row_per_rank_and_the_comm_bars():
    rs = analyze_rank_set(HTA, jobs=1)
    timeline = rank_timeline_figure(rs)
    assert list(timeline.layout.yaxis.ticktext) == ["rank 0", "rank 1"]
    bars = comm_bars_figure(rs.doc)
    by_name = {b.name: b for b in bars.data}
    # exposed + overlapped communication adds up to each rank's communication time (ms)
    for i, rank in enumerate(("0", "1")):
        row = rs.doc["ranks"][rank]
        total = by_name["comm overlapped"].y[i] + by_name["comm exposed"].y[i]
        assert abs(total - row["comm_us"] / 1e3) < 1e-9
    # no matched collective in this set (SendRecv only): no wait/transfer bars rather than zeros
    assert "collective wait" not in by_name
    page = render_rank_set(rs, plotly_src="plotly.min.js")
    assert 'data-figure="rank_timeline"' in page and 'data-figure="comm_bars"' in page
