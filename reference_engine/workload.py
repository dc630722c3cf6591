"""Workloads: N requests with seeded prompt/output length distributions, or a JSONL file.

Distributions (strings): ``fixed:N``, ``uniform:LO:HI`` (inclusive), ``lognormal:MEAN:SIGMA[:MAX]``
(lengths whose mean is MEAN: ``exp(N(ln MEAN - SIGMA²/2, SIGMA))`` rounded, at least 1, at most MAX).
Arrivals: all at 0 (offline, ``arrival_rate=None``) or a Poisson process of ``arrival_rate`` requests/s.
JSONL lines: ``{"prompt_len": P, "output_len": O}`` or ``{"prompt_token_ids": [...], "output_len": O}``.
Prompt tokens are random ids from the seed.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np

from reference_engine.sequence import Request


@dataclass(slots=True)
class WorkloadConfig:
    num_requests: int = 256
    prompt_len: str = "uniform:128:1024"
    output_len: str = "fixed:256"
    arrival_rate: float | None = None  # None: offline (all at t=0); else Poisson, requests/s
    seed: int = 0
    jsonl: str | None = None  # a JSONL file instead of the distributions (num_requests: 0 = all lines)

    def __post_init__(self) -> None:
        if not isinstance(self.num_requests, int) or self.num_requests < 0 or (
                self.num_requests == 0 and self.jsonl is None):
            raise ValueError(f"num_requests must be a positive integer, got {self.num_requests!r}")
        if self.arrival_rate is not None and not self.arrival_rate > 0:
            raise ValueError(f"arrival_rate must be None (offline) or > 0, got {self.arrival_rate!r}")
        if self.jsonl is None:
            parse_distribution(self.prompt_len)
            parse_distribution(self.output_len)

    def to_dict(self) -> dict:
        return asdict(self)


def parse_distribution(spec: str) -> tuple[str, tuple[float, ...]]:
    try:
        kind, *args = str(spec).split(":")
        values = tuple(float(a) for a in args)
    except ValueError:
        kind, values = "", ()
    ok = ((kind == "fixed" and len(values) == 1 and values[0] >= 1)
          or (kind == "uniform" and len(values) == 2 and 1 <= values[0] <= values[1])
          or (kind == "lognormal" and len(values) in (2, 3) and values[0] >= 1 and values[1] >= 0
              and (len(values) == 2 or values[2] >= 1)))
    if not ok:
        raise ValueError(f"bad length distribution {spec!r}: use fixed:N, uniform:LO:HI or "
                         "lognormal:MEAN:SIGMA[:MAX] with lengths >= 1")
    return kind, values


def sample_lengths(spec: str, n: int, rng: np.random.Generator) -> np.ndarray:
    kind, v = parse_distribution(spec)
    if kind == "fixed":
        return np.full(n, int(v[0]), dtype=np.int64)
    if kind == "uniform":
        return rng.integers(int(v[0]), int(v[1]) + 1, size=n)
    mean, sigma = v[0], v[1]
    lengths = np.rint(np.exp(rng.normal(math.log(mean) - sigma * sigma / 2, sigma, size=n))).astype(np.int64)
    return np.clip(lengths, 1, int(v[2]) if len(v) == 3 else None)


def arrival_times(n: int, rate: float | None, seed: int) -> np.ndarray:
    """Offline (zeros) or Poisson; from its own random stream, so the rate never changes the prompts."""
    if rate is None:
        return np.zeros(n)
    return np.cumsum(np.random.default_rng([seed, 1]).exponential(1.0 / rate, size=n))


def make_workload(cfg: WorkloadConfig, vocab_size: int) -> list[Request]:
    if cfg.jsonl is not None:
        return load_workload_jsonl(cfg.jsonl, vocab_size, arrival_rate=cfg.arrival_rate, seed=cfg.seed,
                                   limit=cfg.num_requests or None)
    rng = np.random.default_rng(cfg.seed)
    n = cfg.num_requests
    prompts = sample_lengths(cfg.prompt_len, n, rng)
    outputs = sample_lengths(cfg.output_len, n, rng)
    arrivals = arrival_times(n, cfg.arrival_rate, cfg.seed)
    return [Request(i, rng.integers(1, vocab_size, size=int(p)).tolist(), int(o), float(a))
            for i, (p, o, a) in enumerate(zip(prompts, outputs, arrivals))]


def load_workload_jsonl(path, vocab_size: int, arrival_rate: float | None = None, seed: int = 0,
                        limit: int | None = None) -> list[Request]:
    rng = np.random.default_rng(seed)
    specs = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                output_len = int(row["output_len"])
                if "prompt_token_ids" in row:
                    ids = [int(t) for t in row["prompt_token_ids"]]
                else:
                    ids = int(row["prompt_len"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{lineno}: expected {{prompt_len|prompt_token_ids, output_len}}: {exc}") from None
            specs.append((ids, output_len))
            if limit is not None and len(specs) >= limit:
                break
    arrivals = arrival_times(len(specs), arrival_rate, seed)
    requests = []
    for i, ((ids, output_len), arrival) in enumerate(zip(specs, arrivals)):
        if isinstance(ids, int):
            ids = rng.integers(1, vocab_size, size=max(ids, 0)).tolist()
        requests.append(Request(i, ids, output_len, float(arrival)))
    return requests
