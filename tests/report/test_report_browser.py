"""The report and the comparison in headless Chromium: they load from file:// with no console errors and
no network, and every figure renders. Needs Debian's chromium (apt-get install chromium)."""

from __future__ import annotations

from pathlib import Path

import pytest

from asyncbatch_prof.report import write_comparison, write_report

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} absent (apt-get install chromium)")]


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield instance
        instance.close()


def open_page(browser, path: Path, screenshot: Path) -> dict:
    """Load ``path`` offline, wait for the figures, screenshot it; returns what the page did."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    seen = {"errors": [], "network": []}
    page.on("console", lambda m: m.type == "error" and seen["errors"].append(m.text))
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))

    def only_files(route):
        if route.request.url.startswith("file://"):
            return route.continue_()
        seen["network"].append(route.request.url)
        return route.abort()

    page.route("**/*", only_files)
    page.goto(path.as_uri())
    page.wait_for_function("document.body.dataset.rendered === 'yes'", timeout=30_000)
    seen["figures"] = page.evaluate("""Array.from(document.querySelectorAll('div.plot')).map(d => {
        const svg = d.querySelector('svg.main-svg'); const box = svg ? svg.getBoundingClientRect() : null;
        return {kind: d.dataset.figure, width: box ? box.width : 0, height: box ? box.height : 0,
                marks: d.querySelectorAll('g.trace path, g.trace rect, g.point path, canvas').length};
    })""")
    seen["absent"] = page.evaluate("Array.from(document.querySelectorAll('.fig-absent')).map(d => d.dataset.figure)")
    page.screenshot(path=str(screenshot), full_page=True)
    page.close()
    return seen


def assert_rendered(seen: dict, expected: int) -> None:
    assert seen["errors"] == []
    assert seen["network"] == []
    assert len(seen["figures"]) == expected
    for figure in seen["figures"]:
        assert figure["width"] > 100 and figure["height"] > 100 and figure["marks"] > 0, figure


def test_report_renders_offline_in_chromium(browser, runs, tmp_path):
    seen = open_page(browser, write_report(runs["sync"]), tmp_path / "report.png")
    assert_rendered(seen, expected=6)
    assert {f["kind"] for f in seen["figures"]} == {"timeline", "idle_by_cause", "gap_histogram", "steps", "nvml",
                                                    "latency"}
    assert (tmp_path / "report.png").stat().st_size > 50_000


def test_report_without_nvml_says_so_in_chromium(browser, runs, tmp_path):
    (runs["sync"] / "nvml.csv").unlink()
    seen = open_page(browser, write_report(runs["sync"]), tmp_path / "report-no-nvml.png")
    assert_rendered(seen, expected=5)
    assert seen["absent"] == ["nvml"]


def test_comparison_renders_offline_in_chromium(browser, runs, tmp_path):
    out = write_comparison([runs["sync"], runs["async"]], tmp_path / "compare.html")
    seen = open_page(browser, out, tmp_path / "compare.png")
    assert_rendered(seen, expected=12)
    assert (tmp_path / "compare.png").stat().st_size > 50_000


def test_cdn_page_offline_says_plotly_did_not_load(browser, runs, tmp_path):
    # the committed reports load plotly.js from plotly's CDN: offline they must say why no chart shows
    path = write_report(runs["sync"], out=tmp_path / "cdn.html", plotly_src="cdn")
    page = browser.new_page()
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file://") else route.abort())
    page.goto(path.as_uri())
    page.wait_for_function("document.body.dataset.plotlyMissing === 'yes'", timeout=30_000)
    messages = page.evaluate("Array.from(document.querySelectorAll('.fig-absent')).map(d => d.textContent)")
    page.close()
    assert len(messages) == 6 and all("needs plotly.js" in m and "cdn.plot.ly" in m for m in messages)
