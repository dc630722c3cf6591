"""benchmarks/overhead.py's page: overhead.md from the document it writes to overhead.json."""

from __future__ import annotations


def fmt_ci(ci) -> str:
    return "-" if ci is None else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


def _f(x, fmt=".1f") -> str:
    return "-" if x is None else format(x, fmt)


def markdown(doc: dict, method: str, profiler_arms: tuple[str, ...]) -> str:
    """overhead.md from overhead.json's document; ``method``: the page's method text (overhead.py's docstring)."""
    env = doc["environment"]
    lines = ["# The cost of measuring: profiler and NVML overhead per profiled step", "",
             f"- GPU: {env['gpu']}, driver {env['driver']}, CUDA {env['cuda']}, torch {env['torch']}, "
             f"Python {env['python']}; {env['date_utc']}" + (" — DRY RUN (CPU, tiny preset)" if env["dry_run"] else ""),
             f"- Command: `{doc['command']}`"] + _sources(doc) + ["", method, "",
             "| loop | arm | overhead per recorded step (mean) | 95% CI | per repeat | start/stop ms (max) |",
             "|---|---|---|---|---|---|"]
    modes = list(doc.get("summary", ("sync", "async")))
    parts = [(m, doc[m]) for m in modes if "arms" in doc.get(m, {})]
    for mode in modes:
        part = doc.get(mode)
        if not part or "arms" not in part:
            lines.append(f"| {mode} | - | failed: {part.get('error') if part else 'not run'} | | | |")
            continue
        for arm, a in part["arms"].items():
            reps = ", ".join(f"{x:+.1f}" for x in a["per_repeat_pct"])
            lines.append(f"| {mode} | {arm} | {a['overhead_pct']:+.2f}% | {fmt_ci(a['ci95'])} | {reps} | "
                         f"{_f(a['switch_ms_max'], '.0f')} |")
    lines += _delta_table(parts)
    lines += ["", "Steps: " + "; ".join(f"{m}: steady steps {p['steady_steps'][0]}-{p['steady_steps'][1]}, blocks "
                                         f"off/warm/on {'/'.join(map(str, p['blocks_off_warm_on']))}, abprof run's "
                                         f"window {p['abprof_window']['first']}-{p['abprof_window']['last']}, "
                                         f"decode graph pieces at layers {p['engine'].get('graph_piece_layers')}, "
                                         f"idle decode steps' copy in the first piece (graph_copy): "
                                         f"{_yes(p['engine'].get('graph_copy'))}"
                                         for m, p in parts), "",
              "Host time of one replay of the engine's largest decode CUDA graph (median of 200, us): before any "
              "profiler started in the process, just after the first one stopped, under each arm, and with nothing "
              "recording at the end:", "",
              "| loop | before any profiler | after the first | " + " | ".join(profiler_arms) + " | off, at the end |",
              "|---|---|---|" + "---|" * len(profiler_arms) + "---|"]
    for m, p in parts:
        g, ling = p["graph_replay_us"], p["lingering"]
        lines.append(f"| {m} | {_f(ling['graph_replay_us_before_any_profiler'])} | "
                     f"{_f(ling['graph_replay_us_after_first_profiler'])} | "
                     + " | ".join(_f(g.get(a)) for a in profiler_arms) + f" | {_f(ling['graph_replay_us_after_everything'])} |")
    lines += ["", "Unprofiled whole passes (median steady step, ms) before and after one pass recorded as abprof run "
              "records it:", "", "| loop | before | after | first profiler start + stop s | window start/stop ms (max) | stop + export s |",
              "|---|---|---|---|---|---|"]
    for m, p in parts:
        ling, a = p["lingering"], p["lingering"]["abprof_like_pass"]
        lines.append(f"| {m} | {', '.join(_f(x, '.3f') for x in ling['passes_before_ms'])} | "
                     f"{', '.join(_f(x, '.3f') for x in ling['passes_after_ms'])} | "
                     f"{_f(ling['first_profiler_start_stop_s'], '.2f')} | {_f(a['window_start_stop_ms_max'], '.0f')} | "
                     f"{_f(a['stop_and_export_s'], '.2f')} |")
    return "\n".join(lines) + "\n"


def _sources(doc: dict) -> list[str]:
    """A pooled document's runs (``overhead.py --pool``): each one's file, time and own figures."""
    out = []
    for src in doc.get("sources", []):
        loops = "; ".join(f"{m} {v['overhead_pct']:+.2f}% {fmt_ci(v['ci95'])} ({v['repeats']} repeats)"
                          for m, v in src["loops"].items())
        out.append(f"- Pooled: `{src['file']}`, {src['date_utc']}, `{src['command']}`: {loops}")
    if out:
        out.append("- The first table pools every repeat of these runs; the tables after it are each loop's first run's")
    return out


def _delta_table(parts) -> list[str]:
    """Where a recorded step's extra time goes: per arm, the step's and each phase's change, us per step."""
    names = ["step", "prepare", "enqueue", "wait", "rest", "gpu"]
    rows = [(m, arm, a["delta_us"]) for m, p in parts for arm, a in p["arms"].items() if a.get("delta_us")]
    if not rows:
        return []
    shown = [n for n in names if any(n in d for _, _, d in rows)]
    out = ["", "Where a recorded step's extra time goes (us per step, recorded block's median less the unrecorded "
           "blocks' beside it, median over a pass's blocks, mean over the repeats): `prepare` (the step's inputs "
           "into a host buffer), `enqueue` (the device side's launch: copies, graph replays, sampling), `wait` "
           "(blocked on tokens), `rest` (schedule, update, annotations)"
           + (", `gpu` (the step's device time, two timing CUDA events, --gpu-time)" if "gpu" in shown else "")
           + ":", "", "| loop | arm | " + " | ".join(shown) + " |", "|---|---|" + "---|" * len(shown)]
    for m, arm, d in rows:
        out.append(f"| {m} | {arm} | " + " | ".join(_f(d.get(n), "+.1f") for n in shown) + " |")
    return out


def _yes(flag) -> str:
    return "unknown" if flag is None else "yes" if flag else "no"
