"""`abprof analyze TRACE`: the metric contract of one torch.profiler trace, printed and written as metrics.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from asyncbatch_prof.cli.errors import cli_errors, fail

# Labels of the trace metrics (contract.TRACE_METRICS, in its order); the idle classes indented under idle.
_LABELS = {"gpu_idle_pct": "GPU idle", "host_bound_pct": "  host-bound", "launch_latency_pct": "  launch latency",
           "dependency_pct": "  dependency", "overlap_pct": "CPU/GPU overlap", "sync_wait_pct": "sync wait",
           "stream_concurrency_pct": "stream concurrency", "gpu_busy_us": "GPU busy", "window_us": "window"}


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
    """Why was the GPU idle? GPU idle share, gap classes, CPU/GPU overlap and per-step statistics of a trace."""
    with cli_errors():
        from asyncbatch_prof import __version__
        from asyncbatch_prof.analysis import analyze as run_analysis
        from asyncbatch_prof.runfolder import atomic_write_json

        if not threshold_us >= 0:
            raise fail(f"--threshold-us must be a non-negative number of µs, not {threshold_us}")
        ta = run_analysis(trace, launch_latency_threshold_us=threshold_us, tool_version=__version__)
        target = (out if out is not None else trace.parent) / "metrics.json"
        atomic_write_json(target, ta.doc)
        if as_json:
            typer.echo(json.dumps(ta.doc, indent=2))
        else:
            _print_summary(ta, target)
    if not ta.has_gpu:
        raise fail(f"no GPU activity in trace {trace} (CPU-side numbers written to {target})")


def _print_summary(ta, target: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from asyncbatch_prof.analysis.contract import TRACE_METRICS, format_value, lookup

    console = Console()
    doc = ta.doc
    engine = doc["trace"]["engine_thread"]
    console.print(f"[bold]{ta.path}[/bold]")
    if engine:
        line = f"engine thread {engine['tid']} (chosen by {engine['chosen_by']})"
        console.print(line + (f"; {engine['note']}" if engine.get("note") else ""))
    if ta.has_gpu:
        table = Table(title=f"device {ta.device}", title_justify="left")
        table.add_column("metric")
        for window in ("step", "kernel"):
            table.add_column(f"{window} window", justify="right")
        for name in sorted(TRACE_METRICS, key=lambda n: list(_LABELS).index(n) if n in _LABELS else len(_LABELS)):
            cells = [format_value(f"{name}.{w}", lookup(doc, f"{name}.{w}")[0]) for w in ("step", "kernel")]
            table.add_row(_LABELS.get(name, name), *cells)
        console.print(table)
        for why, names in _absent_by_reason(doc["absent"]).items():
            console.print(f"absent ({why}): {', '.join(names)}", style="dim")
        if len(ta.phases):
            console.print(f"host-bound idle by CPU phase ({ta.window} window):")
            for row in ta.phases.head(8).itertuples():
                console.print(f"  {row.host_bound_pct:6.2f} %  {row.phase[:100]}")
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
    console.print(f"wrote {target}")


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
    console.print(f"over {host['span']} ({host['span_us'] / 1e3:,.3f} ms): host work "
                  f"{host['host_work_us'] / 1e3:,.3f} ms, blocked in sync calls {host['sync_wait_us'] / 1e3:,.3f} ms")
    if host.get("profiled_steps"):
        console.print(f"{host['profiled_steps']} profiled steps, CPU length p50 {host['step_cpu_us_p50'] / 1e3:.3f} ms")
