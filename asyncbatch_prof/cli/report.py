"""`abprof report` (re-render a run folder's HTML report) and `abprof compare` (runs side by side)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from asyncbatch_prof.cli.errors import cli_errors

PlotlyJs = Annotated[Optional[str], typer.Option(
    "--plotly-js", metavar="SRC", help="Load plotly.js from SRC (a URL, a path relative to the HTML file, or "
    "'cdn' for plotly's CDN) instead of embedding it: ~4.6 MB smaller, but the page then needs SRC (no longer "
    "offline with 'cdn'). A relative path that does not exist yet gets the installed plotly.js written there. "
    "Default: embedded.",
    show_default=False)]


def _printable(text) -> str:
    from asyncbatch_prof.textsafe import printable

    return printable(text)


def check_html_out(path: Path, wanted: str) -> None:
    """Refuse an --out that would replace anything but an HTML page (a run's run.json, a trace, a folder)."""
    from asyncbatch_prof.errors import AbprofError

    if path.is_dir():
        raise AbprofError(f"--out {path} is an existing folder; give a {wanted}")
    if path.exists() and path.suffix.lower() not in (".html", ".htm"):
        raise AbprofError(f"--out {path} is an existing file that is not an HTML page; it is not replaced")
    if path.parent.exists() and not path.parent.is_dir():
        raise AbprofError(f"--out {path}: {path.parent} is a file, not a folder")


def report(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="A complete run folder.", show_default=False)],
    *,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", metavar="FILE", help="Where to write the HTML. Default: RUN/report.html.",
        show_default=False)] = None,
    plotly_js: PlotlyJs = None,
) -> None:
    """Render a run folder's self-contained HTML report (works offline)."""
    with cli_errors():
        from asyncbatch_prof.report import write_report

        from asyncbatch_prof.report.page import provide_plotly_js

        if out is not None:
            check_html_out(out, "FILE")
        path = write_report(run, out=out, plotly_src=plotly_js)
        note = provide_plotly_js(path, plotly_js)
    if note:
        typer.echo(_printable(note))
    typer.echo(f"report: {_printable(path)}")


def _print_table(views, warning: str | None, exs) -> None:
    from rich.console import Console
    from rich.table import Table

    from asyncbatch_prof.analysis.contract import lookup
    from asyncbatch_prof.analysis.repeats import format_spread, noise_between
    from asyncbatch_prof.report.compare import COMPARED, delta, is_slower, noise_lines, run_names

    from rich.text import Text

    from asyncbatch_prof.textsafe import markup_safe, printable

    names = run_names(views)
    table = Table(title=Text(printable(f"abprof compare (deltas against {names[0]})")), title_justify="left")
    table.add_column("metric")
    for name in names:
        table.add_column(Text(printable(name)), justify="right")
    styles = {"better": "green", "worse": "red", "same": "dim", "neutral": "yellow"}
    for metric, label in COMPARED:
        base = lookup(views[0].doc, metric)[0]
        cells = []
        for i, view in enumerate(views):
            value = lookup(view.doc, metric)[0]
            if value is None:
                cells.append("[dim]absent[/dim]")
                continue
            text = markup_safe(format_spread(view.doc, metric))
            if view is not views[0]:
                d = delta(metric, label, base, value, is_slower(exs[i - 1]))
                if d.direction:
                    text += f" [{styles[d.direction]}]{d.change} ({d.direction})[/]"
                noise = noise_between(views[0].doc, view.doc, metric)
                if noise is not None and d.direction not in (None, "same"):
                    text += f" [dim]{noise['verdict']}[/]"
            cells.append(text)
        table.add_row(label, *cells)
    console = Console()
    if warning:
        console.print(f"[yellow]warning:[/yellow] workloads differ (--force): {markup_safe(warning)}", highlight=False)
    for ex in exs:
        console.print(Text(printable(ex["verdict"]), style="bold"))
        if "unit_reason" in ex:
            console.print(Text(printable(f"  (per {ex['unit']}: {ex['unit_reason']})"), style="dim"))
        if ex.get("hardware_line"):
            console.print(Text(printable(f"  {ex['hardware_line']} (sampled over the whole run)"), style="dim"))
    from asyncbatch_prof.report.compare import tokens_comparison

    console.print(Text(printable(tokens_comparison(views)["line"])))
    console.print(table)
    for line in noise_lines(views, names):
        console.print(Text(printable(line), style="dim"))


def compare(
    runs: Annotated[list[Path], typer.Argument(metavar="RUN", help="Two or more run folders of one workload; "
                                               "the first is the baseline.", show_default=False)],
    *,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", metavar="DIR", help="Folder for compare.html (or a path ending in .html). "
        "Default: the first run's parent folder.", show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Compare runs of different workloads anyway.")] = False,
    plotly_js: PlotlyJs = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the explanation and deltas as JSON on stdout "
                                          "(explanation.total_delta_ms, explanation.components[]).")] = False,
) -> None:
    """Compare runs: why the step time differs (a ranked verdict), a table of deltas with direction here,
    and the waterfall and figures side by side in compare.html."""
    with cli_errors():
        import json

        from asyncbatch_prof import runfolder
        from asyncbatch_prof.report.compare import comparison_json, explanations, load_comparison, render_comparison

        target = out if out is not None else Path(runs[0]).resolve().parent
        path = target if target.suffix == ".html" else target / "compare.html"
        if out is not None:
            check_html_out(path, "DIR or FILE.html")
        views, warning = load_comparison(runs, force)
        if as_json:
            doc = comparison_json(views, warning)
            typer.echo(json.dumps(doc, indent=2))
        else:
            _print_table(views, warning, explanations(views))
        from asyncbatch_prof.report.page import provide_plotly_js

        runfolder.atomic_write_text(path, render_comparison(views, warning, plotly_js))
        note = provide_plotly_js(path, plotly_js)
    if note:
        typer.echo(_printable(note), err=as_json)
    typer.echo(f"comparison: {_printable(path)}", err=as_json)
