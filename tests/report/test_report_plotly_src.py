"""`--plotly-js`: reports that load a shared plotly.js instead of embedding their own copy."""

from __future__ import annotations

from asyncbatch_prof.report.page import plotly_js


def test_report_and_compare_with_shared_plotly(runs, cli, tmp_path):
    embedded = cli("report", runs["sync"], "--out", tmp_path / "embedded.html")
    assert embedded.exit_code == 0, embedded.output
    shared = cli("report", runs["sync"], "--out", tmp_path / "shared.html", "--plotly-js", "plotly.min.js")
    assert shared.exit_code == 0, shared.output
    small = (tmp_path / "shared.html").read_text()
    big = (tmp_path / "embedded.html").read_text()
    assert '<script src="plotly.min.js"></script>' in small and plotly_js()[:200] not in small
    assert len(big) - len(small) >= len(plotly_js()) - 1000  # only plotly.js differs
    assert small.count('class="fig-data"') == big.count('class="fig-data"') > 0
    both = cli("compare", runs["sync"], runs["async"], "--out", tmp_path / "c.html", "--plotly-js", "../p.js")
    assert both.exit_code == 0, both.output
    assert '<script src="../p.js"></script>' in (tmp_path / "c.html").read_text()


def test_plotly_from_cdn_names_the_embedded_version(runs, cli, tmp_path):
    from plotly.offline import get_plotlyjs_version

    result = cli("report", runs["sync"], "--out", tmp_path / "cdn.html", "--plotly-js", "cdn")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "cdn.html").read_text()
    assert f'<script src="https://cdn.plot.ly/plotly-{get_plotlyjs_version()}.min.js"></script>' in page
    assert plotly_js()[:200] not in page


def test_local_plotly_js_is_written_when_missing_and_checked_when_present(runs, cli, tmp_path):
    result = cli("report", runs["sync"], "--out", tmp_path / "site" / "a.html", "--plotly-js", "js/plotly.min.js")
    assert result.exit_code == 0, result.output
    written = tmp_path / "site" / "js" / "plotly.min.js"
    assert written.read_text() == plotly_js() and "wrote plotly.js" in result.output
    again = cli("report", runs["sync"], "--out", tmp_path / "site" / "b.html", "--plotly-js", "js/plotly.min.js")
    assert again.exit_code == 0 and "wrote plotly.js" not in again.output  # the file is reused
    (tmp_path / "site" / "not.js").write_text("console.log('hello')")
    bad = cli("report", runs["sync"], "--out", tmp_path / "site" / "c.html", "--plotly-js", "not.js")
    assert bad.exit_code == 2 and "is not plotly.js" in bad.output
