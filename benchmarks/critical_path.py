"""What the host does in a recorded step of the reference engine before the GPU can start: per step, from the
step's start (``abprof.step``) to its first graph launch, the medians of each CPU op, annotation and CUDA
runtime call on the engine thread, the host time of each graph launch, and when the first kernel starts.

    python3 benchmarks/critical_path.py TRACE.json.gz

In the synchronous loop this is the critical path that the profiler lengthens: every microsecond here is
a microsecond the GPU waits (reports/h200/README.md, "The cost of measuring"). Steps with another number of
graph launches than the most common one (prefill steps, eager) are left out.
"""

from __future__ import annotations

import argparse
import bisect
import gzip
import json
import statistics
import sys
from collections import Counter, defaultdict


def breakdown(events: list[dict]) -> dict:
    """{"steps": n, "graph_launches_per_step": g, "rows": {name: median µs}} over the steps with g launches."""
    ev = [e for e in events if e.get("ph") == "X"]
    steps = sorted((e for e in ev if e.get("name") == "abprof.step" and e.get("cat") == "user_annotation"),
                   key=lambda e: e["ts"])
    if not steps:
        raise ValueError("no abprof.step annotations: not a trace of the reference engine")
    tid = steps[0]["tid"]
    host = sorted((e for e in ev if e.get("tid") == tid and e.get("cat") in ("cpu_op", "user_annotation", "cuda_runtime")),
                  key=lambda e: e["ts"])
    starts = [e["ts"] for e in host]
    first_kernel = {}
    for k in ev:
        if k.get("cat") == "kernel":
            c = k.get("args", {}).get("correlation")
            if c is not None and (c not in first_kernel or k["ts"] < first_kernel[c]):
                first_kernel[c] = k["ts"]
    per_step = []
    for s in steps:
        inside = host[bisect.bisect_left(starts, s["ts"]):bisect.bisect_right(starts, s["ts"] + s["dur"])]
        per_step.append((s, inside, [e for e in inside if e["name"] in ("cudaGraphLaunch", "cuGraphLaunch")]))
    counts = Counter(len(g) for _, _, g in per_step if g)
    if not counts:
        raise ValueError("no graph launches inside the recorded steps")
    n_graphs = counts.most_common(1)[0][0]
    rows: dict[str, list[float]] = defaultdict(list)
    for s, inside, graphs in per_step:
        if len(graphs) != n_graphs:
            continue
        rows["step"].append(s["dur"])
        g0 = graphs[0]
        rows["step start to first graph launch returned"].append(g0["ts"] + g0["dur"] - s["ts"])
        corr = g0.get("args", {}).get("correlation")
        if corr in first_kernel:
            rows["step start to first kernel"].append(first_kernel[corr] - s["ts"])
        for i, g in enumerate(graphs):
            rows[f"graph launch {i + 1} (host)"].append(g["dur"])
        for e in inside:
            if e["ts"] + e["dur"] <= g0["ts"] and e["name"] != "abprof.step":  # ended before it
                rows[f"before the first graph: {e['cat']} {e['name']}"].append(e["dur"])
    n = len(rows["step"])
    return {"steps": n, "graph_launches_per_step": n_graphs,
            "rows": {k: {"median_us": statistics.median(v), "per_step": len(v) / n}
                     for k, v in rows.items() if len(v) >= n}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trace")
    args = p.parse_args(argv)
    opener = gzip.open if args.trace.endswith(".gz") else open
    try:
        with opener(args.trace, "rt") as f:
            doc = json.load(f)
        out = breakdown(doc.get("traceEvents", []) if isinstance(doc, dict) else doc)
    except (OSError, ValueError) as exc:
        print(f"critical_path: {args.trace}: {exc}", file=sys.stderr)
        return 2
    print(f"{out['steps']} steps with {out['graph_launches_per_step']} graph launches each (medians, us):")
    for name, r in out["rows"].items():
        print(f"  {name:70s} {r['median_us']:9.1f}  x{r['per_step']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
