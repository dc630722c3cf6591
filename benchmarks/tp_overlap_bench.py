"""tp_overlap on GPUs: TP=N with and without the micro-batch overlap, tokens/s and how much NCCL time is hidden.

    python benchmarks/tp_overlap_bench.py --tp 2 [--model llama-1b] [--dtype bfloat16] [--out DIR]

Per mode (sync, async) and overlap (off, on): one warm run of the workload (discarded: new GEMM shapes),
then a measured run whose rank 0 prints wall seconds, output tokens/s, the median step time (ms) and the
tokens digest; a profiled window of steps per rank (torch.profiler, CUDA) gives the share of NCCL kernel
time that ran while another kernel ran on the same GPU (``nccl_hidden_pct``: |nccl ∩ other kernels| /
|nccl|, per rank, from the exported trace). Without overlap that share is near 0 (a row-parallel GEMM
and its all-reduce are serial); with overlap it should rise. ``--device cpu`` runs the same on gloo
(the tiny model shows nothing; it checks the script). bf16 tokens may differ between overlap on and
off (GEMMs on half the rows round differently); ``--dtype float32`` for the equality check.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
from dataclasses import dataclass

from reference_engine import EngineConfig, WorkloadConfig, make_workload
from reference_engine.config import PRESETS
from reference_engine.distributed import run_tp


@dataclass
class TraceHook:
    """A rank hook: profile steps ``first .. first+count-1`` and write ``out/trace-<tag>-rank<R>.json.gz``."""

    out: str
    tag: str
    first: int = 20
    count: int = 16

    def __call__(self, rank, engine):
        self.rank, self.prof, self.seen = rank, None, 0
        return self

    def start(self) -> None:
        pass

    def on_step(self, step: int) -> None:
        import torch.profiler as tp

        self.seen += 1
        if self.seen == self.first:
            self.prof = tp.profile(activities=[tp.ProfilerActivity.CPU, tp.ProfilerActivity.CUDA])
            self.prof.__enter__()
        elif self.prof is not None and self.seen == self.first + self.count:
            self.prof.__exit__(None, None, None)
            path = os.path.join(self.out, f"trace-{self.tag}-rank{self.rank}.json")
            self.prof.export_chrome_trace(path)
            with open(path, "rb") as f, gzip.open(path + ".gz", "wb") as g:
                g.write(f.read())
            os.remove(path)
            self.prof = None

    def stop(self):
        if self.prof is not None:
            self.prof.__exit__(None, None, None)
            return None
        path = os.path.join(self.out, f"trace-{self.tag}-rank{self.rank}.json.gz")
        return nccl_hidden_pct(path) if os.path.exists(path) else None


def _union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for s, e in sorted(spans):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def nccl_hidden_pct(path: str) -> float | None:
    """% of NCCL kernel time (µs union) during which a non-NCCL kernel also ran, from a chrome trace."""
    with gzip.open(path, "rt") as f:
        events = json.load(f)["traceEvents"]
    kernels = [e for e in events if e.get("ph") == "X" and e.get("cat") == "kernel"]
    nccl = _union([(e["ts"], e["ts"] + e["dur"]) for e in kernels if "nccl" in e["name"].lower()])
    other = _union([(e["ts"], e["ts"] + e["dur"]) for e in kernels if "nccl" not in e["name"].lower()])
    total = sum(e - s for s, e in nccl)
    if not total:
        return None
    hidden, j = 0.0, 0
    for s, e in nccl:
        while j < len(other) and other[j][1] <= s:
            j += 1
        k = j
        while k < len(other) and other[k][0] < e:
            hidden += min(e, other[k][1]) - max(s, other[k][0])
            k += 1
    return 100.0 * hidden / total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--model", default="llama-1b")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--prompt-len", default="uniform:64:512")
    ap.add_argument("--output-len", default="fixed:128")
    ap.add_argument("--max-seqs", type=int, default=64)
    ap.add_argument("--max-batch-tokens", type=int, default=2048)
    ap.add_argument("--out", default="tp_overlap_out")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    reqs = make_workload(WorkloadConfig(num_requests=args.requests, prompt_len=args.prompt_len,
                                        output_len=args.output_len, seed=3), PRESETS[args.model]["vocab_size"])
    rows = []
    for mode in ("sync", "async"):
        for overlap in (False, True):
            cfg = EngineConfig(model=args.model, mode=mode, device=args.device, dtype=args.dtype,
                               tp_size=args.tp, tp_overlap=overlap, max_batch_tokens=args.max_batch_tokens, max_seqs=args.max_seqs)
            run_tp(cfg, reqs)  # warm: first use of the step shapes
            tag = f"{mode}-{'overlap' if overlap else 'plain'}"
            hook = TraceHook(args.out, tag) if args.device == "cuda" else None
            runs = run_tp(cfg, reqs, rank_hook=hook)
            r, ends = runs[0].result, runs[0].step_end_s
            steps_ms = [1e3 * (b - a) for a, b in zip(ends, ends[1:])]
            row = dict(mode=mode, tp_overlap=overlap, wall_s=round(r.wall_s, 3), output_tok_s=round(r.tokens_per_s, 1),
                       median_step_ms=round(statistics.median(steps_ms), 3) if steps_ms else None,
                       steps=r.num_steps, tokens_sha256=r.tokens_sha256,
                       nccl_hidden_pct=[None if x.hook_result is None else round(x.hook_result, 1) for x in runs])
            rows.append(row)
            print(json.dumps(row), flush=True)
    with open(os.path.join(args.out, "tp_overlap.json"), "w") as f:
        json.dump(rows, f, indent=1)
    same = {m: len({x["tokens_sha256"] for x in rows if x["mode"] == m}) == 1 for m in ("sync", "async")}
    print(f"tokens equal with and without overlap: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
