"""Time `abprof analyze` on a rank set of N copies of one trace: 1 rank, N ranks with 1 worker, N with N.

    python benchmarks/rank_set_scaling.py [--trace PATH] [--ranks 8]

The committed default trace is small (start-up dominates); for a meaningful figure pass a large one,
e.g. one written by ``benchmarks/trace_speed.py --keep DIR``.

With as many usable cores as ranks, N ranks with N workers should take about the time of one rank plus
process start-up; with one worker about N times that. Copies are named rank<k>.json.gz (the rank comes
from the name; a trace carrying distributedInfo.rank would collide, so pick one without it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from asyncbatch_prof.analysis.rankset import analyze_rank_set

DEFAULT = Path(__file__).resolve().parents[1] / "tests" / "data" / "traces" / "transformers-cb-async-slice.json.gz"


def _timed(folder: Path, jobs: int) -> float:
    t0 = time.perf_counter()
    analyze_rank_set(folder, jobs=jobs)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", type=Path, default=DEFAULT)
    parser.add_argument("--ranks", type=int, default=8)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        one, many = Path(tmp) / "one", Path(tmp) / "many"
        one.mkdir()
        many.mkdir()
        shutil.copy(args.trace, one / "rank0.json.gz")
        for r in range(args.ranks):
            shutil.copy(args.trace, many / f"rank{r}.json.gz")
        single = _timed(one, 1)
        serial = _timed(many, 1)
        parallel = _timed(many, args.ranks)
    print(f"trace {args.trace} ({args.trace.stat().st_size / 1e6:.1f} MB), {cores} usable cores")
    print(f"1 rank:                      {single:7.2f} s")
    print(f"{args.ranks} ranks, 1 worker:          {serial:7.2f} s  ({serial / single:.1f}x one rank)")
    print(f"{args.ranks} ranks, {args.ranks} worker processes: {parallel:7.2f} s  ({parallel / single:.1f}x one rank)")


if __name__ == "__main__":
    main()
