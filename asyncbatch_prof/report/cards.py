"""Headline cards and the run's configuration: numbers straight from metrics.json, by contract name.

Each card carries its metric name and the unrounded value in data attributes (``data-metric``,
``data-value``), so a test, a script or a curious reader can check the page against metrics.json.
An absent metric is shown as absent with its reason, never as 0.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from typing import Any, Mapping

from asyncbatch_prof.analysis.contract import format_value, lookup
from asyncbatch_prof.analysis.repeats import format_range, repeat_stats, spread_warnings


@dataclass(frozen=True, slots=True)
class Card:
    """One headline number: its qualified contract name, its label, and a line saying what it means."""

    metric: str
    label: str
    note: str


HEADLINE = [
    Card("gpu_idle_pct.step", "GPU idle · step window", "no GPU op running, profiled steps"),
    Card("gpu_idle_pct.kernel", "GPU idle · kernel window", "first GPU op to last, as HTA counts it"),
    Card("overlap_pct", "CPU/GPU overlap", "host work done while the GPU was busy"),
    Card("sync_wait_pct", "sync wait", "engine thread blocked on the GPU"),
    Card("tokens_per_s", "output tokens/s", "over measured wall time"),
    Card("ttft_ms_p50", "TTFT p50", "time to first token"),
    Card("ttft_ms_p99", "TTFT p99", "time to first token"),
    Card("itl_ms_p50", "ITL p50", "inter-token latency"),
    Card("itl_ms_p99", "ITL p99", "inter-token latency"),
    Card("joules_per_token", "energy per token", "GPU energy / output tokens"),
]

IDLE_CAUSES = [
    Card("host_bound_pct", "host-bound", "next op launched after the gap began"),
    Card("launch_latency_pct", "launch latency", "short gap, next op already launched"),
    Card("dependency_pct", "dependency", "long gap, next op already launched"),
]

NVML_CARD = Card("nvml_util_pct", "NVML util", "any kernel running in the ~200 ms sample; not SM utilization")


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def card_html(doc: Mapping[str, Any], card: Card) -> str:
    """One card's HTML: the formatted value, or 'absent' with the reason from metrics.json."""
    value, reason = lookup(doc, card.metric)
    if value is None:
        return (
            f'<div class="card absent" data-metric="{_esc(card.metric)}" data-absent="{_esc(reason)}">'
            f'<div class="label">{_esc(card.label)}</div><div class="value">absent</div>'
            f'<div class="note">{_esc(reason)}</div></div>'
        )
    stats = repeat_stats(doc, card.metric)
    spread = ""
    if stats and "min" in stats:  # repeats: the median, then the range and the interval of the median
        ci = stats.get("ci95") or [stats["min"], stats["max"]]
        spread = (f'<div class="note spread" data-n="{stats["n"]}" data-min="{stats["min"]!r}" '
                  f'data-max="{stats["max"]!r}">median of {stats["n"]} repeats, range '
                  f'{_esc(format_range(doc, card.metric))}; interval of the median '
                  f'{_esc(format_value(card.metric, ci[0]))} to {_esc(format_value(card.metric, ci[1]))} '
                  f'({_esc(stats.get("ci_method", ""))}, coverage {stats.get("ci_coverage", 0):.0%})</div>')
    return (
        f'<div class="card" data-metric="{_esc(card.metric)}" data-value="{value!r}">'
        f'<div class="label">{_esc(card.label)}</div><div class="value">{_esc(format_value(card.metric, value))}</div>'
        f'{spread}<div class="note">{_esc(card.note)} · <code>{_esc(card.metric)}</code></div></div>'
    )


def spread_banner(doc: Mapping[str, Any]) -> str:
    """A warning line per metric whose repeats spread wide (analysis.repeats.WIDE_SPREAD)."""
    return "".join(f'<p class="banner" data-warning="spread">{_esc(line)}</p>' for line in spread_warnings(doc))


def busy_beside_nvml_html(doc: Mapping[str, Any]) -> str:
    """NVML's util next to the trace-derived busy share (100 − gpu_idle_pct, kernel window), labelled apart:
    NVML counts a whole ~200 ms sample as busy if any kernel ran in it, so it overstates short kernels."""
    idle, reason = lookup(doc, "gpu_idle_pct.kernel")
    if idle is None:
        busy = f'<div class="card absent" data-metric="trace_busy_pct" data-absent="{_esc(reason)}">'
        busy += f'<div class="label">trace busy</div><div class="value">absent</div><div class="note">{_esc(reason)}</div></div>'
    else:
        busy_pct = 100.0 - idle
        busy = (
            f'<div class="card" data-metric="trace_busy_pct" data-value="{busy_pct!r}">'
            f'<div class="label">trace busy · kernel window</div><div class="value">{busy_pct:.1f}%</div>'
            '<div class="note">any GPU op running, from the trace (100 − gpu_idle_pct.kernel)</div></div>'
        )
    return card_html(doc, NVML_CARD) + busy


def throttle_banner(doc: Mapping[str, Any]) -> str:
    """A warning line when the GPU's clocks throttled during the run (numbers may not be comparable)."""
    value, _ = lookup(doc, "clock_throttled")
    if value:
        return '<p class="banner" data-metric="clock_throttled" data-value="1">The GPU\'s clocks throttled during ' \
               "this run: compare its numbers with care.</p>"
    return ""


def integrity_banner(doc: Mapping[str, Any]) -> str:
    """A banner when the trace is incomplete (metrics.json trace_integrity): its idle numbers are not evidence."""
    integrity = doc.get("trace_integrity")
    if not isinstance(integrity, Mapping) or integrity.get("verdict") != "incomplete":
        return ""
    codes = integrity.get("codes") if isinstance(integrity.get("codes"), list) else []
    reasons = integrity.get("reasons") if isinstance(integrity.get("reasons"), list) else []
    items = "".join(f"<li>{_esc(r)}</li>" for r in reasons)
    return (f'<div class="banner" data-metric="trace_complete" data-value="0" data-codes="{_esc(" ".join(map(str, codes)))}">'
            "<b>This trace is incomplete</b>: GPU records are missing or the window holds work that never ran, so "
            "the GPU idle numbers taken from it are not evidence (<code>abprof gate</code> refuses them)."
            f"<ul>{items}</ul></div>")


def _rows(mapping: Mapping[str, Any]) -> str:
    out = []
    for key, value in mapping.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value, sort_keys=True)
        out.append(f"<tr><th>{_esc(key)}</th><td>{_esc(value)}</td></tr>")
    return "".join(out)


def config_html(run: Mapping[str, Any]) -> str:
    """Run configuration, workload and environment from run.json as three small tables."""
    summary = {k: run.get(k) for k in ("mode", "engine", "seed", "started_at", "finished_at", "profiled_steps")
               if run.get(k) is not None}
    if run.get("command"):
        summary["command"] = " ".join(map(str, run["command"]))
    repeats = run.get("repeats")
    if isinstance(repeats, Mapping) and repeats.get("folders"):
        summary["repeats"] = (f"{repeats.get('n')} measured passes ({', '.join(map(str, repeats['folders']))}); "
                              f"numbers are their medians, files and figures are {repeats.get('representative')}'s; "
                              f"{repeats.get('engine_reuse', '')}")
    nvml = run.get("nvml") or {}
    if nvml:
        summary["nvml"] = "available" if nvml.get("available") else f"unavailable: {nvml.get('reason', 'no reason')}"
    parts = []
    for title, mapping in (("run", summary), ("engine config", run.get("config") or {}),
                           ("workload", run.get("workload") or {}), ("environment", run.get("environment") or {})):
        body = _rows(mapping) if mapping else '<tr><td class="absent">not recorded in run.json</td></tr>'
        parts.append(f'<div class="cfg"><h3>{_esc(title)}</h3><table>{body}</table></div>')
    return '<div class="cfgs">' + "".join(parts) + "</div>"
