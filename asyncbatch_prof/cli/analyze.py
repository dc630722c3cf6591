"""`abprof analyze TRACE`: the metric contract of one torch.profiler trace, printed and written as metrics.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from asyncbatch_prof.cli.errors import cli_errors
from asyncbatch_prof.errors import AbprofError
from asyncbatch_prof.textsafe import markup_safe, printable

_ROWS = (
    ("gpu_idle_pct", "GPU idle", "%"),
    ("host_bound_pct", "  host-bound", "%"),
    ("launch_latency_pct", "  launch latency", "%"),
    ("dependency_pct", "  dependency", "%"),
    ("overlap_pct", "CPU/GPU overlap", "%"),
    ("sync_wait_pct", "sync wait", "%"),
    ("stream_concurrency_pct", "stream concurrency", "%"),
    ("gpu_busy_us", "GPU busy", "ms"),
    ("window_us", "window", "ms"),
)


def analyze(
    trace: Annotated[Path, typer.Argument(help="torch.profiler trace (.json or .json.gz).", show_default=False)],
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="Folder for metrics.json (default: beside the trace).", show_default=False),
    ] = None,
    threshold_us: Annotated[
        float, typer.Option("--threshold-us", help="Gaps shorter than this (µs) with the next op already launched "
                                                    "are launch latency; longer ones are dependency.")
    ] = 30.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print metrics.json to stdout instead of the summary.")] = False,
) -> None:
    """Why was the GPU idle? GPU idle share, gap classes, CPU/GPU overlap and per-step statistics of a trace.

    A trace inside a run folder is analyzed but its metrics.json is not replaced (the run's holds serving,
    NVML and run sections): give --out DIR to write one elsewhere. A trace without GPU activity still
    gets its CPU-side numbers, with the GPU metrics absent (exit 0).
    """
    with cli_errors():
        from asyncbatch_prof.analysis import analyze as run_analysis

        target = _target(trace, out)
        ta = run_analysis(trace, launch_latency_threshold_us=threshold_us)
        if target is not None:
            ta.write_metrics(target)
        if as_json:
            typer.echo(json.dumps(ta.doc, indent=2))
        else:
            _print_summary(ta, target)
        if not ta.has_gpu:
            typer.echo(f"abprof: note: no GPU activity in {printable(trace)}: GPU metrics are absent", err=True)
        if target is None:
            typer.echo(f"abprof: note: {printable(trace.parent)} is a run folder: its metrics.json was left as it "
                       "is (give --out DIR to write this analysis)", err=True)


def _target(trace: Path, out: Path | None) -> Path | None:
    """Where metrics.json goes (None: nowhere, the trace is a run's); refuses what must not be written."""
    from asyncbatch_prof import runfolder

    folder = trace.parent
    in_run = (folder / runfolder.RUN_JSON).exists() or (folder / runfolder.INCOMPLETE).exists()
    if in_run:
        runfolder.check_complete(folder)  # a trace of an interrupted run is not evidence
    if out is None:
        return None if in_run else folder / "metrics.json"
    if out.exists() and not out.is_dir():
        raise AbprofError(f"--out must be a folder, and {out} is an existing file")
    if (out / runfolder.RUN_JSON).exists() or (out / runfolder.INCOMPLETE).exists():
        raise AbprofError(f"--out {out} is a run folder: abprof analyze never replaces a run's metrics.json")
    return out / "metrics.json"


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    return f"{value / 1e3:,.3f} ms" if unit == "ms" else f"{value:.2f} %"


def _print_summary(ta, target: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table

    from asyncbatch_prof.analysis.contract import lookup

    console = Console()
    doc = ta.doc
    engine = doc["trace"]["engine_thread"]
    console.print(f"[bold]{markup_safe(ta.path)}[/bold]")
    if engine:
        line = f"engine thread {engine['tid']} (chosen by {engine['chosen_by']})"
        console.print(markup_safe(line + (f"; {engine['note']}" if engine.get("note") else "")))
    if ta.has_gpu:
        table = Table(title=f"device {ta.device}", title_justify="left")
        table.add_column("metric")
        for window in ("step", "kernel"):
            table.add_column(f"{window} window", justify="right")
        for name, label, unit in _ROWS:
            cells = [_fmt(lookup(doc, f"{name}.{w}")[0], unit) for w in ("step", "kernel")]
            table.add_row(label, *cells)
        console.print(table)
        for why, names in _absent_by_reason(doc["absent"]).items():
            console.print(markup_safe(f"absent ({why}): {', '.join(names)}"), style="dim")
        if len(ta.phases):
            console.print(f"host-bound idle by CPU phase ({ta.window} window):")
            for row in ta.phases.head(8).itertuples():
                console.print(f"  {row.host_bound_pct:6.2f} %  {markup_safe(str(row.phase)[:100])}")
        steps = doc.get("steps", {})
        if steps.get("count"):
            console.print(f"{steps['count']} profiled steps: wall p50 {steps['wall_us_p50'] / 1e3:.3f} ms, "
                          f"kernels p50 {steps['kernels_p50']:.0f}, launches p50 {steps['launches_p50']:.0f}")
        launches = doc.get("launches", {})
        if launches.get("count"):
            console.print(f"{launches['count']} launches: delay p50 {launches['launch_delay_us_p50']:.1f} µs, "
                          f"p99 {launches['launch_delay_us_p99']:.1f} µs; queue depth p50 "
                          f"{launches['queue_depth_p50']:.0f}")
    else:
        _print_host(console, doc.get("host"))
    if target is not None:
        console.print(f"wrote {markup_safe(target)}")


def _absent_by_reason(absent: dict[str, str]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for name, why in sorted(absent.items()):
        grouped.setdefault(why, []).append(name)
    return grouped


def _print_host(console, host: dict | None) -> None:
    """CPU-side numbers for a trace without GPU ops."""
    if not host or not host.get("span"):
        console.print("no engine thread activity recorded")
        return
    console.print(f"over {markup_safe(host['span'])} ({host['span_us'] / 1e3:,.3f} ms): host work "
                  f"{host['host_work_us'] / 1e3:,.3f} ms, blocked in sync calls {host['sync_wait_us'] / 1e3:,.3f} ms")
    if host.get("profiled_steps"):
        console.print(f"{host['profiled_steps']} profiled steps, CPU length p50 {host['step_cpu_us_p50'] / 1e3:.3f} ms")
