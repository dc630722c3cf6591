"""Comparing runs of one workload: deltas with direction against the first run, and the figures side by side.

Runs of different workloads are refused (their numbers would not mean what the deltas say) unless
forced; the refusal names the first workload key that differs.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from asyncbatch_prof import runfolder
from asyncbatch_prof.analysis.contract import format_value, lookup, parse_name
from asyncbatch_prof.analysis.repeats import format_spread, noise_between
from asyncbatch_prof.analysis.explain import explain, hardware, hardware_line, tokens_per_step, verdict
from asyncbatch_prof.errors import AbprofError
from asyncbatch_prof.report import cards
from asyncbatch_prof.report.page import Page
from asyncbatch_prof.report.run_report import FIGURES, build_figures, cards_html
from asyncbatch_prof.report.run_view import RunView, load_run
from asyncbatch_prof.report.waterfall import waterfall_figure
from asyncbatch_prof.report.page import FigureSlot

COMPARED = [
    ("gpu_idle_pct.step", "GPU idle (step window)"), ("gpu_idle_pct.kernel", "GPU idle (kernel window)"),
    ("host_bound_pct", "host-bound idle"), ("launch_latency_pct", "launch-latency idle"),
    ("dependency_pct", "dependency idle"), ("overlap_pct", "CPU/GPU overlap"), ("sync_wait_pct", "sync wait"),
    ("tokens_per_s", "output tokens/s"), ("requests_per_s", "requests/s"),
    ("ttft_ms_p50", "TTFT p50"), ("ttft_ms_p99", "TTFT p99"), ("itl_ms_p50", "ITL p50"), ("itl_ms_p99", "ITL p99"),
    ("e2e_ms_p50", "e2e p50"), ("e2e_ms_p99", "e2e p99"),
    ("nvml_util_pct", "NVML util (any kernel running)"), ("joules_per_token", "energy per token"),
    ("comm_pct", "communication (NCCL)"), ("comm_overlap_pct", "communication overlapped"),
    ("gpu_idle_pct_worst_rank", "GPU idle, worst rank"), ("collective_wait_pct", "collective wait"),
]


# Shares of a window: a lower idle share in a run whose step got longer is a share of a longer step, not an
# improvement, so their direction follows the explanation's verdict (see reconcile)
WINDOW_SHARES = frozenset({"gpu_idle_pct.step", "gpu_idle_pct.kernel", "host_bound_pct", "launch_latency_pct",
                           "dependency_pct"})


@dataclass(frozen=True, slots=True)
class Delta:
    """One metric of one run against the baseline: the values, the change in words, and its direction
    ('better', 'worse', 'same', 'neutral' where the plain direction would contradict the verdict, or None
    when either side is absent)."""

    metric: str
    label: str
    base: float | None
    value: float | None
    change: str
    direction: str | None


def delta(metric: str, label: str, base: float | None, value: float | None, slower: bool | None = None) -> Delta:
    """Change from ``base`` to ``value``: percentage points for shares (%), relative % otherwise. ``slower``:
    whether the explanation found the run slower per unit (None: unknown); see reconcile."""
    if base is None or value is None:
        return Delta(metric, label, base, value, "absent", None)
    contract, _ = parse_name(metric)
    diff = value - base
    if contract.unit == "%":
        change, same = f"{diff:+.1f} points", abs(diff) < 0.05
    elif base != 0:
        rel = 100.0 * diff / abs(base)
        change, same = f"{rel:+.0f}%", abs(rel) < 0.5
    else:
        change, same = f"{diff:+g} {contract.unit}", diff == 0
    if same:
        direction = "same"
    else:
        direction = "better" if (diff < 0) == (contract.better == "lower") else "worse"
    return reconcile(Delta(metric, label, base, value, change, direction), slower)


def reconcile(d: Delta, slower: bool | None) -> Delta:
    """A window share's 'better' in a slower run (or 'worse' in a faster one) becomes 'neutral': the share
    moved because the step's length moved, and the label must not contradict the verdict."""
    if slower is None or d.metric not in WINDOW_SHARES or d.direction not in ("better", "worse"):
        return d
    if (d.direction == "better") == slower:
        note = "of a longer step" if slower else "of a shorter step"
        return Delta(d.metric, d.label, d.base, d.value, f"{d.change} {note}", "neutral")
    return d


def deltas(base_doc: dict, doc: dict, slower: bool | None = None) -> list[Delta]:
    """Every compared metric of ``doc`` against ``base_doc`` (metrics.json documents)."""
    return [delta(m, label, lookup(base_doc, m)[0], lookup(doc, m)[0], slower) for m, label in COMPARED]


def step_time_of(view: RunView) -> dict:
    """The run's step_time section: from the fresh analysis when there is one (older metrics.json lack it)."""
    fresh = getattr(view.analysis, "doc", None) or {}
    if "step_time" in fresh:
        return fresh["step_time"]
    return view.doc.get("step_time") or {"absent": view.analysis_absent or "metrics.json has no step_time"}


def explanations(views: Sequence[RunView]) -> list[dict]:
    """The explanation of every run against the first (analysis.explain), with the run names."""
    names = run_names(views)
    base = views[0]
    out = []
    for name, view in zip(names[1:], views[1:]):
        ex = explain(step_time_of(base), step_time_of(view), (tokens_per_step(base.doc), tokens_per_step(view.doc)))
        hw = {"a": hardware(base.doc), "b": hardware(view.doc)}
        ex.update(a=names[0], b=name, verdict=verdict(ex, name), hardware=hw,
                  hardware_line=hardware_line(hw["a"], hw["b"]))
        out.append(ex)
    return out


def is_slower(ex: dict) -> bool | None:
    """Whether the explanation found B slower per unit (None when absent or unchanged)."""
    total = ex.get("total_delta_ms")
    if total is None or abs(total) <= 0.005 * max(ex.get("a_ms") or 0.0, 1e-12):
        return None
    return total > 0


def comparison_json(views: Sequence[RunView], warning: str | None = None) -> dict:
    """``compare --json``: runs, the explanation of the second run against the first (all in
    ``explanations``), and the metric deltas with directions consistent with the verdicts, each with its
    noise verdict (None without repeats)."""
    names = run_names(views)
    exs = explanations(views)
    rows = []
    for name, view, ex in zip(names[1:], views[1:], exs):
        for d in deltas(views[0].doc, view.doc, is_slower(ex)):
            rows.append({"run": name, "metric": d.metric, "label": d.label, "base": d.base, "value": d.value,
                         "change": d.change, "direction": d.direction,
                         "noise": noise_between(views[0].doc, view.doc, d.metric)})
    return {"runs": names, "baseline": names[0], "workload_warning": warning, "explanation": exs[0],
            "explanations": exs, "deltas": rows, "tokens": tokens_comparison(views)}


def tokens_comparison(views: Sequence[RunView]) -> dict:
    """Whether the runs generated the same tokens, from run.json's ``tokens_sha256``: ``tokens_identical``
    (None when a run has no digest), the digests by run name, and a one-line ``line`` for the terminal."""
    names = run_names(views)
    digests = {name: view.run.get("tokens_sha256") for name, view in zip(names, views)}
    missing = [name for name, d in digests.items() if not d]
    if missing:
        same, line = None, f"tokens: not compared: {missing[0]} has no tokens_sha256 in its run.json"
    elif len(set(digests.values())) == 1:
        same = True
        line = f"tokens: identical in all {len(names)} runs (tokens_sha256 {next(iter(digests.values()))[:12]})"
    else:
        same = False
        line = "tokens: differ (" + ", ".join(f"{n} {d[:12]}" for n, d in digests.items()) + ")"
    return {"tokens_identical": same, "tokens_sha256": digests, "line": line}


def summary_line(d: Delta) -> str:
    """``GPU idle (step window) 24.1% -> 1.8%, -22.3 points (better)`` for one delta."""
    if d.direction is None:
        return f"{d.label}: absent in one run"
    fmt = lambda v: format_value(d.metric, v)  # noqa: E731
    return f"{d.label} {fmt(d.base)} → {fmt(d.value)}, {d.change} ({d.direction})"


def check_same_workload(runs: Sequence[tuple[Path, dict]], force: bool) -> str | None:
    """Raise AbprofError unless every run.json has the first run's workload; with force, return the
    difference as a warning instead. None when the workloads match."""
    base_dir, base_run = runs[0]
    base = base_run.get("workload")
    for run_dir, run in runs[1:]:
        other = run.get("workload")
        if other == base:
            continue
        if base is None or other is None:
            why = f"{base_dir if base is None else run_dir} has no workload in run.json"
        else:
            key = next(k for k in sorted(set(base) | set(other)) if base.get(k) != other.get(k))
            why = f"workload {key!r} is {base.get(key)!r} in {base_dir} but {other.get(key)!r} in {run_dir}"
        if not force:
            raise AbprofError(f"runs have different workloads, so their numbers do not compare: {why} (--force to compare anyway)")
        return why
    return None


def load_comparison(run_dirs: Sequence[Path], force: bool = False,
                    analyses: Sequence[Any] | None = None) -> tuple[list[RunView], str | None]:
    """Load the runs after checking their workloads (before any trace is parsed); returns the views and
    the forced workload difference, if any."""
    if len(run_dirs) < 2:
        raise AbprofError("compare needs at least two run folders")
    runs = []
    for run_dir in map(Path, run_dirs):
        runfolder.check_complete(run_dir)
        runs.append((run_dir, runfolder.read_json(run_dir / runfolder.RUN_JSON)))
    warning = check_same_workload(runs, force)
    analyses = list(analyses) if analyses is not None else [None] * len(runs)
    return [load_run(d, a) for (d, _), a in zip(runs, analyses)], warning


def run_names(views: Sequence[RunView]) -> list[str]:
    """Column names: the run folders' names, with their parents' where two are the same."""
    names = [v.run_dir.name for v in views]
    if len(set(names)) < len(names):
        names = [f"{v.run_dir.parent.name}/{v.run_dir.name}" for v in views]
    return names


NOISE_CHECKED = ("tokens_per_s", "gpu_idle_pct.step", "gpu_idle_pct.kernel")


def noise_lines(views: Sequence[RunView], names: Sequence[str]) -> list[str]:
    """What the noise verdicts of the deltas mean, and the headline metrics' verdicts in words."""
    lines = []
    for view, name in zip(views[1:], names[1:]):
        for metric, label in COMPARED:
            if metric not in NOISE_CHECKED:
                continue
            noise = noise_between(views[0].doc, view.doc, metric)
            if noise is not None:
                lines.append(f"{label}, {name} against {names[0]}: {noise['verdict']} ({noise['reason']})")
    if lines:
        lines.append("noise: two-sided Mann-Whitney U on the repeats' values, alpha 0.05 (the gate's test); "
                     "without repeats on both sides compare cannot tell a difference from noise")
    elif len(views) > 1:
        lines.append("noise: no repeats in these runs, so compare cannot tell a difference from run-to-run "
                     "noise (abprof run --repeats N)")
    return lines


def _delta_table(views: Sequence[RunView], names: list[str], exs: Sequence[dict] = ()) -> str:
    head = "<tr><th>metric</th>" + "".join(f"<th>{html.escape(n)}</th>" for n in names) + "</tr>"
    rows = []
    for m, label in COMPARED:
        cells = [f"<td>{html.escape(label)} <code>{m}</code></td>"]
        base = lookup(views[0].doc, m)[0]
        for i, view in enumerate(views):
            value, reason = lookup(view.doc, m)
            if value is None:
                cells.append(f'<td class="same" title="{html.escape(reason or "")}">absent</td>')
                continue
            text = html.escape(format_spread(view.doc, m))
            if view is not views[0]:
                d = delta(m, label, base, value, is_slower(exs[i - 1]) if i - 1 < len(exs) else None)
                if d.direction:
                    text += f' <span class="{d.direction}">{html.escape(d.change)}</span>'
                noise = noise_between(views[0].doc, view.doc, m) if d.direction not in (None, "same") else None
                if noise is not None:
                    text += (f' <span class="noise" title="{html.escape(noise["reason"])}">'
                             f'{html.escape(noise["verdict"])}</span>')
            cells.append(f'<td data-metric="{m}" data-value="{value!r}">{text}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="deltas">{head}{"".join(rows)}</table>'


def render_comparison(views: Sequence[RunView], warning: str | None = None, plotly_src: str | None = None) -> str:
    """The comparison page: deltas against the first run, then each figure with the runs side by side."""
    names = run_names(views)
    page = Page("abprof compare · " + " vs ".join(names), plotly_src)
    page.add(f"<h1>abprof compare · {html.escape(' vs '.join(names))}</h1>"
             f'<p class="sub">deltas against {html.escape(names[0])}; shares change in percentage points</p>')
    if warning:
        page.add(f'<p class="banner">Compared with --force although the workloads differ: {html.escape(warning)}</p>')
    exs = explanations(views)
    page.add("<h2>Why the time per step differs</h2>")
    for ex in exs:
        page.add(f'<p class="verdict">{html.escape(ex["verdict"])}</p>')
        if ex.get("hardware_line"):
            page.add(f'<p class="sub">{html.escape(ex["hardware_line"])} (sampled over the whole run)</p>')
        slot = FigureSlot("waterfall", "Explanation", waterfall_figure(ex, (ex["a"], ex["b"])), ex.get("absent"))
        page.add(page.figure(slot))
    page.add("<h2>Deltas</h2>" + _delta_table(views, names, exs)
             + "".join(f'<p class="sub noise-line">{html.escape(line)}</p>' for line in noise_lines(views, names)))
    grid = f'<div class="grid" style="grid-template-columns:repeat({len(views)},minmax(0,1fr))">'
    page.add("<h2>Headline numbers</h2>" + grid + "".join(
        f'<div class="run" data-run="{html.escape(n)}"><h3>{html.escape(n)}</h3>{cards_html(v.doc)}</div>'
        for n, v in zip(names, views)) + "</div>")
    slots = [build_figures(v) for v in views]
    for index, (_, title) in enumerate(FIGURES):
        cells = "".join(f"<div><h3>{html.escape(n)}</h3>{page.figure(s[index])}</div>" for n, s in zip(names, slots))
        page.add(f"<h2>{html.escape(title)}</h2>{grid}{cells}</div>")
    page.add("<h2>Configuration and environment</h2>" + grid + "".join(
        f"<div><h3>{html.escape(n)}</h3>{cards.config_html(v.run)}</div>" for n, v in zip(names, views)) + "</div>")
    return page.render()


def write_view_comparison(views: Sequence[RunView], out_path: Path, force: bool = False) -> Path:
    """Write the comparison page of runs already in memory (their views, analyses included) to ``out_path``
    atomically, after the same workload check as :func:`load_comparison`."""
    warning = check_same_workload([(v.run_dir, v.run) for v in views], force)
    runfolder.atomic_write_text(Path(out_path), render_comparison(views, warning))
    return Path(out_path)


def write_comparison(run_dirs: Sequence[Path], out_path: Path, force: bool = False,
                     analyses: Sequence[Any] | None = None) -> Path:
    """Write the comparison page of ``run_dirs`` to ``out_path`` atomically; refuses different workloads
    unless ``force`` (AbprofError). ``analyses``: TraceAnalysis per run, or None to re-analyze."""
    views, warning = load_comparison(run_dirs, force, analyses)
    runfolder.atomic_write_text(Path(out_path), render_comparison(views, warning))
    return Path(out_path)
