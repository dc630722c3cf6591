"""`abprof analyze TRACE`: the metric contract of one torch.profiler trace, printed and written as metrics.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from asyncbatch_prof.cli.errors import cli_errors
from asyncbatch_prof.errors import AbprofError
from asyncbatch_prof.textsafe import markup_safe, printable

# Labels of the trace metrics (contract.TRACE_METRICS, in its order); the idle classes indented under idle.
_LABELS = {"gpu_idle_pct": "GPU idle", "host_bound_pct": "  host-bound", "launch_latency_pct": "  launch latency",
           "dependency_pct": "  dependency", "overlap_pct": "CPU/GPU overlap", "sync_wait_pct": "sync wait",
           "stream_concurrency_pct": "stream concurrency", "comm_pct": "communication (NCCL)",
           "comm_overlap_pct": "  overlapped by compute", "gpu_busy_us": "GPU busy", "window_us": "window"}


def analyze(
    trace: Annotated[Path, typer.Argument(help="torch.profiler trace (.json or .json.gz), a run folder, or a folder "
                                               "of per-rank traces.", show_default=False)],
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="Folder for metrics.json (default: beside the trace).", show_default=False),
    ] = None,
    threshold_us: Annotated[
        float, typer.Option("--threshold-us", help="Gaps shorter than this (µs) with the next op already launched "
                                                    "are launch latency; longer ones are dependency.")
    ] = 30.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print metrics.json to stdout instead of the summary.")] = False,
    steps_config: Annotated[
        Optional[Path],
        typer.Option("--steps-config", metavar="FILE", help="TOML mapping range names to steps and phases for an "
                     "engine abprof does not know: [steps] (abprof.toml) or [tool.abprof.steps] (pyproject.toml), "
                     "each entry 'name pattern' = \"step\" or a phase label. Default: ./abprof.toml, or "
                     "./pyproject.toml when it has that table.", show_default=False),
    ] = None,
    jobs: Annotated[
        Optional[int], typer.Option("--jobs", "-j", min=1, help="Worker processes for a rank set (default: one per "
                                                                "trace, up to the usable cores).", show_default=False)
    ] = None,
    max_trace_bytes: Annotated[
        Optional[str],
        typer.Option("--max-trace-bytes", help="Refuse a trace larger than this once decompressed (bytes, or "
                                               "512M, 8G); default $ABPROF_MAX_TRACE_BYTES, else 8G.",
                     show_default=False),
    ] = None,
) -> None:
    """Why was the GPU idle? GPU idle share, gap classes, CPU/GPU overlap and per-step statistics of a trace;
    for a rank set (a folder of per-rank traces, a TP run folder, a trace with several devices) also per-rank
    figures, communication, collective wait vs transfer and the straggler.

    A trace inside a run folder is analyzed but its metrics.json is not replaced (the run's holds serving,
    NVML and run sections): give --out DIR to write one elsewhere. A trace without GPU activity still
    gets its CPU-side numbers, with the GPU metrics absent (exit 0).
    """
    with cli_errors():
        from asyncbatch_prof import __version__
        from asyncbatch_prof.analysis.result import analyze_with_events
        from asyncbatch_prof.analysis.ranks import find_rank_traces
        from asyncbatch_prof.runfolder import atomic_write_json
        from asyncbatch_prof.analysis.reader import parse_size
        from asyncbatch_prof.analysis.step_sources import find_steps_config, load_steps_config

        rank_set = None
        if trace.is_dir():
            source = find_rank_traces(trace)
            if source.kind != "run":
                return _analyze_rank_set(trace, out, threshold_us, jobs, as_json)
            trace = source.files[0]
        if steps_config is None:
            steps_config = find_steps_config(Path.cwd())
        config = load_steps_config(steps_config) if steps_config is not None else None
        cap = None if max_trace_bytes is None else parse_size(max_trace_bytes, "--max-trace-bytes")
        target = _target(trace, out)
        ta, events = analyze_with_events(trace, launch_latency_threshold_us=threshold_us, steps_config=config,
                                         max_trace_bytes=cap, tool_version=__version__)
        if len(ta.devices) > 1:  # several devices in one file: a rank set, from the same parse
            from asyncbatch_prof.analysis.rankset import rank_set_of_file
            from asyncbatch_prof.cli.ranks import write_rank_set

            rank_set = rank_set_of_file(find_rank_traces(trace), ta, events)
            if target is not None:
                write_rank_set(rank_set, target.parent, base_doc=ta.doc)
        elif target is not None:
            atomic_write_json(target, ta.doc)
        del events  # the trace's arrays: not needed past the rank set
        if as_json:
            typer.echo(json.dumps(ta.doc if rank_set is None or target is None else json.loads(target.read_text()),
                                  indent=2))
            warning = integrity_warning(ta.doc)
            if warning:
                typer.echo(warning, err=True)
        else:
            _print_summary(ta, target, rank_set)
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


def integrity_warning(doc: dict) -> str | None:
    """One line saying that the trace is incomplete and why, or None when it is complete."""
    integrity = doc.get("trace_integrity") or {}
    if integrity.get("verdict") != "incomplete":
        return None
    reasons = integrity.get("reasons") or ["no reason recorded"]
    more = f" (+{len(reasons) - 1} more in metrics.json trace_integrity)" if len(reasons) > 1 else ""
    return (f"warning: trace incomplete ({', '.join(integrity.get('codes', []))}), its GPU idle numbers are not "
            f"evidence: {reasons[0]}{more}")


def _analyze_rank_set(path: Path, out: Path | None, threshold_us: float, jobs: int | None, as_json: bool) -> None:
    """A folder of per-rank traces or a TP run folder; a run folder's own metrics.json is never replaced."""
    from rich.console import Console

    from asyncbatch_prof import __version__, runfolder
    from asyncbatch_prof.analysis.rankset import analyze_rank_set
    from asyncbatch_prof.cli.ranks import print_rank_set, write_rank_set

    in_run = (path / runfolder.RUN_JSON).exists()
    if out is not None and ((out / runfolder.RUN_JSON).exists() or (out / runfolder.INCOMPLETE).exists()):
        raise AbprofError(f"--out {out} is a run folder: abprof analyze never replaces a run's metrics.json")
    out = out if out is not None else (None if in_run else path)
    rs = analyze_rank_set(path, threshold_us, jobs, tool_version=__version__)
    target = write_rank_set(rs, out) if out is not None else None
    if as_json:
        typer.echo(json.dumps(rs.doc, indent=2))
    else:
        console = Console()
        console.print(f"[bold]{markup_safe(path)}[/bold]")
        print_rank_set(console, rs.doc)
        if target is not None:
            console.print(f"wrote {markup_safe(target)} and {len(rs.ranks)} per-rank metrics.json under "
                          f"{markup_safe(out / 'ranks')}")
    if target is None:
        typer.echo(f"abprof: note: {printable(path)} is a run folder: its metrics.json was left as it is (give "
                   "--out DIR to write this analysis)", err=True)


def _print_summary(ta, target: Path | None, rank_set=None) -> None:
    from rich.console import Console
    from rich.table import Table

    from asyncbatch_prof.analysis.contract import TRACE_METRICS, format_value, lookup
    from asyncbatch_prof.analysis.step_time import one_line

    console = Console()
    doc = ta.doc
    line = one_line(doc)
    if line:
        console.print(f"[bold]{line}[/bold]", highlight=False)
    engine = doc["trace"]["engine_thread"]
    console.print(f"[bold]{markup_safe(ta.path)}[/bold]")
    steps = doc.get("steps", {})
    console.print(markup_safe(f"steps from: {steps.get('source_detail')}"), highlight=False)
    if engine and len(ta.devices) <= 1:
        line = f"engine thread {engine['tid']} (chosen by {engine['chosen_by']})"
        console.print(markup_safe(line + (f"; {engine['note']}" if engine.get("note") else "")))
    warning = integrity_warning(doc)
    if warning:
        console.print(warning, style="bold yellow", markup=False, highlight=False, soft_wrap=True)
    threads = doc["trace"].get("device_engine_threads", {})
    for dev in sorted(ta.devices, key=lambda d: (d != ta.device, d)):
        if len(ta.devices) > 1:
            t = threads.get(str(dev))
            console.print(f"device {dev}: engine thread " + (f"{t['tid']} (pid {t['pid']}, chosen by {t['chosen_by']})"
                                                             if t else "none recorded"))
        table = Table(title=f"device {dev}" + (" (headline)" if len(ta.devices) > 1 and dev == ta.device else ""),
                      title_justify="left")
        table.add_column("metric")
        for window in ("step", "kernel"):
            table.add_column(f"{window} window", justify="right")
        per = doc["devices"].get(str(dev), {})
        for name in sorted(TRACE_METRICS, key=lambda n: list(_LABELS).index(n) if n in _LABELS else len(_LABELS)):
            cells = [format_value(f"{name}.{w}", per.get(w, {}).get("metrics", {}).get(name)) for w in ("step", "kernel")]
            table.add_row(_LABELS.get(name, name), *cells)
        console.print(table)
    if rank_set is not None:
        from asyncbatch_prof.cli.ranks import print_rank_set

        print_rank_set(console, rank_set.doc)
    if ta.has_gpu:
        for why, names in _absent_by_reason(doc["absent"]).items():
            console.print(markup_safe(f"absent ({why}): {', '.join(names)}"), style="dim")
        if doc["phases"]:
            console.print(f"host-bound idle by CPU phase ({ta.window} window):")
            for row in doc["phases"][:8]:
                console.print(f"  {row['host_bound_pct']:6.2f} %  {markup_safe(str(row['phase'])[:100])}")
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
