"""What CUPTI kernel tracing costs a CUDA graph launch, and whether when the graph was captured matters (issue 19).

    python3 benchmarks/graph_cupti.py --out /tmp/gc          # GPU only

The sync loop's profiled step is dominated by one ``cudaGraphLaunch`` of the decode graph (167 kernel nodes):
65 us with CPU-only profiling, 210-330 us with CUDA activity. This measures, in one process, the host time
of ``graph.replay()`` and of replay + synchronize (median of 200) for graphs of 16, 64 and 256 kernel nodes:

- ``before``: graphs captured before the profiler ever started in the process;
- ``after-init``: graphs captured after ``warm_up_profiler`` (CUPTI initialised, then the profiler stopped);
- ``inside``: graphs captured while a CUDA-activity profiler is recording;

each replayed with the profiler off, and under CUDA-only and CPU+CUDA profiling; every profiled phase
also counts the kernels the trace holds (a graph whose kernels the profiler does not see would be cheap
for the wrong reason).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SIZES = (16, 64, 256)


def capture(n: int):
    import torch

    x = torch.zeros(1024, device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            x.add_(1)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(n):
            x.add_(1)
    torch.cuda.synchronize()
    return g


def timed(g, reps: int = 200) -> dict:
    import torch

    host, total = [], []
    for _ in range(reps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        g.replay()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        host.append(1e6 * (t1 - t))
        total.append(1e6 * (t2 - t))
    return {"replay_us": statistics.median(host), "replay_sync_us": statistics.median(total)}


def profiled(graphs: dict, cpu: bool) -> dict:
    from torch.profiler import ProfilerActivity, profile

    acts = ([ProfilerActivity.CPU] if cpu else []) + [ProfilerActivity.CUDA]
    res = {}
    with profile(activities=acts) as prof:
        for n, g in graphs.items():
            res[n] = timed(g)
    kernels = sum(1 for e in prof.events() if e.device_type.name == "CUDA")
    return {"per_size": res, "gpu_events_in_trace": kernels}


def measure(graphs: dict) -> dict:
    return {"off": {n: timed(g) for n, g in graphs.items()}, "cuda-only": profiled(graphs, cpu=False),
            "cpu+cuda": profiled(graphs, cpu=True)}


PHASES = (("before", "captured before any profiler"), ("after-init", "captured after the first profiler stopped"),
          ("inside", "captured while a profiler records"), ("before_again", "the first graphs, again at the end"))


def markdown(docs: list[dict]) -> str:
    """One table per run: host time of replay() and replay+synchronize, and the GPU records each profiled
    phase got."""
    lines = ["# CUPTI and CUDA graph launches (benchmarks/graph_cupti.py)", "",
             "Commands: `python3 benchmarks/graph_cupti.py --out DIR`, for the TEARDOWN_CUPTI=1 table with that "
             "variable in the environment; this page: `python3 benchmarks/graph_cupti.py --out DIR --render JSON...`.",
             ""]
    for doc in docs:
        lines += [f"## {doc['gpu']}, torch {doc['torch']}, CUDA {doc['cuda']}, TEARDOWN_CUPTI="
                  f"{doc.get('teardown_cupti_env') or 'unset'}", "",
                  "Host time of `graph.replay()` / of replay + synchronize, us (median of 200), by kernel nodes:", "",
                  "| graphs | profiler | " + " | ".join(f"{n} nodes" for n in SIZES) + " | GPU records in the trace |",
                  "|---|---|" + "---|" * len(SIZES) + "---|"]

        def row(label, prof, per, records="-"):
            cells = " | ".join(f"{per[str(n)]['replay_us']:.1f} / {per[str(n)]['replay_sync_us']:.1f}" for n in SIZES)
            lines.append(f"| {label} | {prof} | {cells} | {records} |")

        row("captured before any profiler", "never started", doc["before_never_profiled_off"])
        for key, label in PHASES:
            row(label, "off (after one ran)", doc[key]["off"])
            for prof in ("cuda-only", "cpu+cuda"):
                row(label, prof, doc[key][prof]["per_size"], doc[key][prof]["gpu_events_in_trace"])
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--render", nargs="+", metavar="JSON", help="only write graph-cupti.md from these results")
    args = ap.parse_args(argv)
    if args.render:
        docs = [json.loads(Path(p).read_text()) for p in args.render]
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "graph-cupti.md").write_text(markdown(docs))
        return 0
    if not torch.cuda.is_available():
        print("graph_cupti.py needs a CUDA GPU", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"torch": torch.__version__, "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0)}
    before = {n: capture(n) for n in SIZES}
    doc["before_never_profiled_off"] = {n: timed(g) for n, g in before.items()}
    from asyncbatch_prof.capture.profiler import warm_up_profiler
    warm_up_profiler(True)
    doc["teardown_cupti_env"] = os.environ.get("TEARDOWN_CUPTI")
    doc["before"] = measure(before)
    after = {n: capture(n) for n in SIZES}
    doc["after-init"] = measure(after)
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]):
        inside = {n: capture(n) for n in SIZES}
    doc["inside"] = measure(inside)
    doc["before_again"] = measure(before)
    (out / "graph-cupti.json").write_text(json.dumps(doc, indent=1))
    (out / "graph-cupti.md").write_text(markdown([doc]))
    print(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
