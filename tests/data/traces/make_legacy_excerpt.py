"""Cut the committed legacy-Kineto excerpt from Kineto's resnet50 sample (torch 1.9-era trace format).

    git -C KINETO cat-file -p 769c3eb7843639ac114d183e07304b6d44931452 > worker0.1623143089861.pt.trace.json.gz
    python tests/data/traces/make_legacy_excerpt.py worker0.1623143089861.pt.trace.json.gz \
        tests/data/traces/kineto-resnet50-legacy-excerpt.json.gz

The blob is tb_plugin/samples/resnet50_num_workers_0/worker0.1623143089861.pt.trace.json.gz of
github.com/pytorch/kineto before commit 94979607 removed tb_plugin. Kept: every event that starts in
the window [first ts + START_US, + WINDOW_US), plus all metadata rows; dropped: the "Call stack" and
"Input Dims" args of Operator rows (the analysis reads neither), to stay small.
"""

from __future__ import annotations

import gzip
import json
import sys

START_US, WINDOW_US = 300_000, 300_000


def main(src: str, dst: str) -> None:
    doc = json.load(gzip.open(src))
    events = doc["traceEvents"]
    t0 = min(e["ts"] for e in events if "ts" in e and e.get("ph") == "X")
    lo, hi = t0 + START_US, t0 + START_US + WINDOW_US
    kept = []
    for e in events:
        if e.get("ph") == "M" or lo <= e.get("ts", -1) < hi:
            if e.get("cat") == "Operator":
                e["args"] = {k: v for k, v in e.get("args", {}).items() if k not in ("Call stack", "Input Dims")}
            kept.append(e)
    doc["traceEvents"] = kept
    with gzip.open(dst, "wt", compresslevel=9) as f:
        json.dump(doc, f, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:3])
