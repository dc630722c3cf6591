"""Serving metrics from the engine's per-request records (not from the trace).

Records follow INTERFACES §1: times in seconds since ``generate()`` started. TTFT = first token −
arrival, ITL = gaps between consecutive output tokens of one request (pooled over requests), E2E =
finish − arrival; percentiles are numpy's linear interpolation, reported in ms.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

import numpy as np

PERCENTILES = (50, 90, 99)

def _ms(later: float | None, earlier: float | None) -> float | None:
    if later is None or earlier is None:
        return None
    return (later - earlier) * 1e3


def latencies_ms(records: Iterable[Any]) -> dict[str, list[float]]:
    """TTFT, ITL and E2E samples in ms (requests that never reached a point are left out)."""
    ttft, itl, e2e = [], [], []
    for r in records:
        if (v := _ms(r.first_token_s, r.arrival_s)) is not None:
            ttft.append(v)
        if (v := _ms(r.finish_s, r.arrival_s)) is not None and r.finish_reason != "rejected":
            e2e.append(v)
        times = list(r.token_times_s or ())
        itl.extend((b - a) * 1e3 for a, b in zip(times, times[1:]))
    return {"ttft": ttft, "itl": itl, "e2e": e2e}


def serving_metrics(records: list[Any], wall_s: float,
                    output_tokens: int) -> tuple[dict[str, Any], dict[str, str], dict[str, Any]]:
    """Contract metrics ``(metrics, absent, section)``: tokens/s and requests/s over ``wall_s`` (s), latencies in ms."""
    metrics: dict[str, Any] = {}
    absent: dict[str, str] = {}
    finished = [r for r in records if r.finish_s is not None and r.finish_reason != "rejected"]
    rejected = [r for r in records if r.finish_reason == "rejected" or r.rejected_reason]
    if wall_s > 0:
        metrics["tokens_per_s"] = round(output_tokens / wall_s, 3)
        metrics["requests_per_s"] = round(len(finished) / wall_s, 4)
    else:
        absent["tokens_per_s"] = absent["requests_per_s"] = "measured wall time is 0"
    samples = latencies_ms(records)
    for key, values in samples.items():
        for p in PERCENTILES:
            name = f"{key}_ms_p{p}"
            if values:
                metrics[name] = round(float(np.percentile(values, p)), 4)
            else:
                absent[name] = {"ttft": "no request produced a first token",
                                "itl": "no request produced two or more tokens",
                                "e2e": "no request finished"}[key]
    metrics["preemptions"] = int(sum(r.preemptions for r in records))
    section = {
        "requests": len(records), "finished": len(finished), "rejected": len(rejected),
        "rejected_reasons": dict(Counter(r.rejected_reason or "unspecified" for r in rejected)),
        "output_tokens": int(output_tokens), "prompt_tokens": int(sum(r.prompt_len for r in records)),
        "wall_s": round(wall_s, 6), "preempted_requests": sum(1 for r in records if r.preemptions),
        "finish_reasons": dict(Counter(str(r.finish_reason) for r in records)),
        "samples": {k: len(v) for k, v in samples.items()},
    }
    return metrics, absent, section
