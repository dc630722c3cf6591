"""How fast a report of a large trace opens: builds a run folder whose trace holds ~100k kernels,
renders its report, and opens it in headless Chromium.

    python benchmarks/report_speed.py [--steps 500 --kernels-per-step 200] [--repeats 3] [--keep DIR]

Measures the file size, the time to render the HTML (Python, including the trace analysis when
``asyncbatch_prof.analysis.analyze`` exists), and in the browser (from navigation start, the page's
``performance.now()``): the load event (plotly.js parsed) and the moment every figure is drawn.
Budgets: the file under 10 MB, every figure drawn in under 3 s. Exit 1 when a budget is missed.
Needs Debian's chromium at /usr/bin/chromium and the ``playwright`` package.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "report"))  # the synthetic run-folder builder the report tests use

from report_synthetic import write_run  # noqa: E402

from asyncbatch_prof.report.run_report import write_report  # noqa: E402

MAX_BYTES = 10 * 1024 * 1024
MAX_OPEN_S = 3.0
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def open_times(path: Path, repeats: int) -> list[tuple[float, float]]:
    """(load event, all figures drawn) in ms from navigation start, one pair per fresh page."""
    from playwright.sync_api import sync_playwright

    out = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        for _ in range(repeats):
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(path.as_uri())
            page.wait_for_function("document.body.dataset.rendered === 'yes'", timeout=60_000)
            load_ms = page.evaluate("performance.getEntriesByType('navigation')[0].loadEventStart")
            drawn_ms = float(page.evaluate("document.body.dataset.renderedMs"))
            if errors:
                raise SystemExit(f"page errors: {errors}")
            out.append((load_ms, drawn_ms))
            page.close()
        browser.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--kernels-per-step", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="build the run folder here instead of a temporary one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = (args.keep or Path(tmp)) / "run"
        t = time.perf_counter()
        run_dir, synthetic = write_run(run_dir, num_steps=args.steps, kernels_per_step=args.kernels_per_step)
        build_s = time.perf_counter() - t
        try:
            from asyncbatch_prof.analysis import analyze  # noqa: F401

            analysis, source = None, "analyze() of trace.json.gz"
        except ImportError:
            analysis, source = synthetic, "synthetic frames (asyncbatch_prof.analysis.analyze not available)"
        t = time.perf_counter()
        path = write_report(run_dir, analysis=analysis)
        render_s = time.perf_counter() - t
        size = path.stat().st_size
        times = open_times(path, args.repeats)
    kernels = args.steps * args.kernels_per_step
    load_ms = statistics.median(t[0] for t in times)
    drawn_ms = statistics.median(t[1] for t in times)
    ok = size < MAX_BYTES and drawn_ms < MAX_OPEN_S * 1e3
    print(f"| kernels in trace | {kernels:,} |")
    print(f"| analysis | {source} |")
    print(f"| run folder built | {build_s:.1f} s |")
    print(f"| report rendered (Python) | {render_s:.2f} s |")
    print(f"| report.html size | {size / 1e6:.2f} MB (budget 10 MiB) |")
    print(f"| browser load event, median of {len(times)} | {load_ms:.0f} ms |")
    print(f"| every figure drawn, median of {len(times)} | {drawn_ms:.0f} ms (budget {MAX_OPEN_S * 1e3:.0f} ms) |")
    print(f"| all runs (load, drawn) ms | {', '.join(f'({a:.0f}, {b:.0f})' for a, b in times)} |")
    print(f"| verdict | {'within budget' if ok else 'OVER BUDGET'} |")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
