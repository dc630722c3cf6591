"""Tensor-parallel check on GPUs: TP=1 through the launcher, and TP=2 (NCCL) against TP=1.

    python benchmarks/tp_check.py --tp 2 [--model tiny] [--dtype float32]

Prints, per mode (sync, async) and tp size (1, then --tp), the wall seconds, steps, output tokens and
tokens_sha256; exits 1 if a TP>1 digest differs from TP=1's. bf16 may differ in a few greedy tokens
(the all-reduce sums in a different order): run with --dtype float32 for the equality check.
"""

from __future__ import annotations

import argparse
import sys

from reference_engine import EngineConfig, WorkloadConfig, make_workload
from reference_engine.config import PRESETS
from reference_engine.distributed import run_tp


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--requests", type=int, default=32)
    args = ap.parse_args()
    reqs = make_workload(WorkloadConfig(num_requests=args.requests, prompt_len="uniform:16:256",
                                        output_len="uniform:8:64", seed=3), PRESETS[args.model]["vocab_size"])
    bad = 0
    for mode in ("sync", "async"):
        digests = {}
        for tp in (1, args.tp):
            cfg = EngineConfig(model=args.model, mode=mode, device="cuda", dtype=args.dtype, tp_size=tp,
                               max_batch_tokens=512, max_seqs=32)
            runs = run_tp(cfg, reqs)
            r = runs[0].result
            digests[tp] = r.tokens_sha256
            print(f"{mode:5s} tp={tp} wall={r.wall_s:.3f}s steps={r.num_steps} tokens={r.output_tokens} "
                  f"sha256={r.tokens_sha256[:16]} graphs={runs[0].describe['cuda_graphs']}")
        bad += digests[1] != digests[args.tp]
    print("tokens equal across tp sizes" if not bad else f"tokens differ in {bad} mode(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
