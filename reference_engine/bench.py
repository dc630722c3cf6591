"""End-to-end check of one engine mode, for the GPU machine: throughput, tokens, and a profiled window.

    python -m reference_engine.bench --mode sync --out DIR     # one mode per process
    python -m reference_engine.bench --compare DIR             # after both: identical tokens?

The workload runs twice (the first run meets new GEMM shapes; the second is reported), then once more
with a profiled window. Writes DIR/<mode>.json (throughput, the GPU idle share of a profiled window of steps), DIR/tokens-<mode>.json
and DIR/trace-<mode>.json.gz. The idle share here is a plain one: 1 - (union of GPU kernel/copy intervals) /
(the window from the first to the last profiled ``abprof.step``); abprof's analyzer is the real measure.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import time

import numpy as np
import torch

from reference_engine import EngineConfig, LLMEngine, SamplingParams, WorkloadConfig, make_workload


def gpu_idle_share(trace_path: str) -> dict:
    with open(trace_path) as f:
        events = json.load(f)["traceEvents"]
    steps = [e for e in events if e.get("ph") == "X" and e.get("name") == "abprof.step"
             and e.get("cat") == "user_annotation"]
    gpu = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("ph") == "X"
                 and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"))
    if not steps or not gpu:
        return {"idle_pct": None, "reason": "no steps or no GPU events in the trace"}
    lo, hi = min(e["ts"] for e in steps), max(e["ts"] + e["dur"] for e in steps)
    busy, cur_s, cur_e = 0.0, None, None
    for s, e in gpu:
        s, e = max(s, lo), min(e, hi)
        if e <= s:
            continue
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                busy += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        busy += cur_e - cur_s
    window = hi - lo
    return {"idle_pct": 100.0 * (1 - busy / window), "window_us": window, "busy_us": busy, "steps": len(steps),
            "step_ms": window / len(steps) / 1e3}


def run(args) -> dict:
    cfg = EngineConfig(model=args.model, mode=args.mode, cuda_graphs=False if args.no_graphs else None,
                       max_batch_tokens=args.max_batch_tokens, max_seqs=args.max_seqs, seed=args.seed)
    t = time.perf_counter()
    engine = LLMEngine(cfg)
    build_s = time.perf_counter() - t
    engine.warmup()
    wl = WorkloadConfig(num_requests=args.num_requests, prompt_len=args.prompt_len, output_len=args.output_len,
                        seed=args.seed)
    reqs = make_workload(wl, vocab_size=engine.vocab_size)
    first = engine.generate(reqs, sampling=SamplingParams(temperature=0.0))  # new shapes: cuBLAS picks kernels
    stamps: list[float] = []
    result = engine.generate(reqs, sampling=SamplingParams(temperature=0.0),  # the same workload again
                             on_step=lambda i: stamps.append(time.perf_counter()))
    tokens = [r.output_token_ids for r in result.records]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"tokens-{args.mode}.json"), "w") as f:
        json.dump(tokens, f)
    out = {"mode": args.mode, "engine": engine.describe(), "workload": wl.to_dict(), "build_s": build_s,
           "wall_s": result.wall_s, "output_tokens": result.output_tokens, "num_steps": result.num_steps,
           "output_tok_s": result.tokens_per_s, "first_run_output_tok_s": first.tokens_per_s,
           "first_run_tokens_identical": [r.output_token_ids for r in first.records] == tokens,
           "preemptions": sum(r.preemptions for r in result.records),
           # wall time per step over steps 150-300 (decode-only at 256 sequences in the standard workload)
           "median_step_ms_150_300": (1e3 * float(np.median(np.diff(stamps[150:301]))) if len(stamps) > 301
                                      else None),
           "tokens_sha256": hashlib.sha256(json.dumps(tokens).encode()).hexdigest()}
    if args.profile_steps:
        from torch.profiler import ProfilerActivity, profile, schedule

        trace = os.path.join(args.out, f"trace-{args.mode}.json")
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if engine.device.type == "cuda" else [])
        with profile(activities=acts, schedule=schedule(wait=args.profile_from, warmup=2,
                                                        active=args.profile_steps, repeat=1),
                     on_trace_ready=lambda p: p.export_chrome_trace(trace)) as prof:
            profiled = engine.generate(reqs, on_step=lambda i: prof.step())
        out["profiled_run"] = {"wall_s": profiled.wall_s, "output_tok_s": profiled.tokens_per_s,
                               "first_step": args.profile_from + 2, "steps": args.profile_steps}
        out["profiled_tokens_identical"] = [r.output_token_ids for r in profiled.records] == tokens
        if os.path.exists(trace):
            out["profiled_run"].update(gpu_idle_share(trace))
            with open(trace, "rb") as src, gzip.open(trace + ".gz", "wb") as dst:
                dst.write(src.read())
            os.remove(trace)
        else:  # the profiler's schedule never reached its recorded steps
            out["profiled_run"].update(idle_pct=None, reason=(
                f"no trace: the workload ended after {profiled.num_steps} steps, before the profiled window "
                f"(steps {args.profile_from + 2}-{args.profile_from + 1 + args.profile_steps}); "
                "lower --profile-from"))
    engine.close()
    return out


def compare(folder: str) -> dict:
    """Whether the sync and async runs written into ``folder`` gave the same tokens."""
    missing = [m for m in ("sync", "async") if not os.path.isfile(os.path.join(folder, f"tokens-{m}.json"))]
    if missing:
        raise BenchError(f"{folder} has no tokens-{missing[0]}.json: run --mode {missing[0]} --out {folder} first")
    try:
        with open(os.path.join(folder, "tokens-sync.json")) as f:
            a = json.load(f)
        with open(os.path.join(folder, "tokens-async.json")) as f:
            b = json.load(f)
    except (OSError, ValueError) as e:
        raise BenchError(f"cannot read the tokens in {folder}: {e}") from None
    differ = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    return {"requests": len(a), "identical": a == b, "differing_requests": differ[:20], "num_differing": len(differ)}


class BenchError(Exception):
    """Bad input to the bench: printed as one line, exit 2."""


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=["sync", "async"])
    p.add_argument("--compare", metavar="DIR")
    p.add_argument("--out", default="bench-out")
    p.add_argument("--model", default="llama-1b")
    p.add_argument("--num-requests", type=int, default=256)
    p.add_argument("--prompt-len", default="uniform:128:1024")
    p.add_argument("--output-len", default="fixed:256")
    p.add_argument("--max-batch-tokens", type=int, default=2048)
    p.add_argument("--max-seqs", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-graphs", action="store_true")
    p.add_argument("--profile-steps", type=int, default=10)
    p.add_argument("--profile-from", type=int, default=150)
    args = p.parse_args(argv)
    if args.compare:
        try:
            print(json.dumps(compare(args.compare)))
        except BenchError as e:
            p.exit(2, f"error: {e}\n")
        return
    if not args.mode:
        p.error("--mode or --compare is required")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        p.error(f"--out {args.out} is a file, not a folder")
    out = run(args)
    with open(os.path.join(args.out, f"{args.mode}.json"), "w") as f:
        json.dump(out, f, indent=1)
    brief = {k: out[k] for k in ("mode", "build_s", "wall_s", "output_tokens", "num_steps", "output_tok_s",
                                  "median_step_ms_150_300", "first_run_output_tok_s", "first_run_tokens_identical", "preemptions",
                                  "tokens_sha256")}
    brief["profiled"] = out.get("profiled_run")
    print(json.dumps(brief))


if __name__ == "__main__":
    main()
