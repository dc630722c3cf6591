"""Count trace parses and files written by one CPU ``abprof run --mode both`` (issue 14's before/after).

Trace parses: calls of the analysis' trace loader. Files written: files opened for writing (``open`` audit
events with a write mode or write flags), hard links, and the distinct final paths they end up at.

    PYTHONPATH=$PWD python benchmarks/run_io_count.py [OUT]
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT


def main(out: Path) -> None:
    opened: list[str] = []
    read: list[str] = []
    links: list[str] = []

    def hook(event: str, args) -> None:
        if event == "open" and args[0] is not None and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1], args[2]
            if (mode and any(c in mode for c in "wax+")) or (mode is None and flags & WRITE_FLAGS):
                opened.append(os.fsdecode(args[0]))
            elif not os.fsdecode(args[0]).endswith(".py"):
                read.append(os.fsdecode(args[0]))
        elif event == "os.link":
            links.append(os.fsdecode(args[1]))

    import asyncbatch_prof.analysis.loader as loader
    import asyncbatch_prof.analysis.result as result

    parses = []
    original = loader.load_trace

    def counted(path, *a, **k):
        parses.append(str(path))
        return original(path, *a, **k)

    result.load_trace = counted
    from typer.testing import CliRunner

    from asyncbatch_prof.cli import app

    sys.addaudithook(hook)
    res = CliRunner().invoke(app, ["run", "--mode", "both", "--no-nvml", "--out", str(out), "--requests", "4",
                                   "--prompt-len", "uniform:8:24", "--output-len", "fixed:6",
                                   "--engine-warmup-steps", "1", "--max-batch-tokens", "64", "--warmup-runs", "0"])
    assert res.exit_code == 0, res.output
    inside = [p for p in opened if str(out.parent) in p]
    print(f"trace parses: {len(parses)}")
    for p in parses:
        print(f"  {Path(p).relative_to(out.parent)}")
    print(f"files opened for writing under the output's parent: {len(inside)}; hard links: {len(links)}")
    back = [p for p in read if str(out) in p and not p.endswith(".gz")]  # trace reads are the parses above
    print(f"reads of the run's own files (besides trace parses): {len(back)}")
    for p in sorted(set(back)):
        print(f"  {Path(p).relative_to(out.parent)} x{back.count(p)}")
    final = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    print(f"files in the finished folder: {len(final)}: {', '.join(final)}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()) / "out")
