"""Issue 18: the reference engine at TP=1 and TP=2, sync vs async, with and without communication overlap.

    python benchmarks/tp_h200x2.py --out reports/h200x2            # on nvidia-h200-x2, one device call
    python benchmarks/tp_h200x2.py --dry-run --out /tmp/tp-dry      # CPU (gloo), tiny model, seconds per row

Each row is one ``abprof run --tp N --mode M`` (its own run folder under OUT/runs/); on the GPU the
``llama-8b`` shape (bf16, random weights) on the standard workload (256 requests, prompts uniform 128-1024,
256 output tokens, greedy). The async-with-overlap row at TP=2 runs only when the engine has
``EngineConfig.tp_overlap`` (``--tp-overlap``). Writes OUT/tp.md (the table), OUT/tp.json (``rows[]`` and
``tokens_identical``: every row's ``tokens_sha256`` equal) and OUT/env.json (GPUs, driver, NCCL, torch,
the GPUs' links). NVLink multicast stays off in every process (the launcher sets it per rank too).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
GPU_WORKLOAD = ["--model", "llama-8b", "--requests", "256", "--prompt-len", "uniform:128:1024",
                "--output-len", "fixed:256"]
DRY_WORKLOAD = ["--model", "tiny", "--requests", "3", "--prompt-len", "uniform:8:16", "--output-len", "fixed:6",
                "--max-batch-tokens", "64", "--engine-warmup-steps", "1", "--warmup-runs", "0",
                "--warmup-steps", "1", "--profile-steps", "1:4", "--no-nvml"]


def has_tp_overlap() -> bool:
    """Whether the reference engine has the communication overlap (another change adds it)."""
    from reference_engine.config import EngineConfig

    return "tp_overlap" in {f.name for f in dataclasses.fields(EngineConfig)}


def rows_to_run(max_tp: int = 2) -> list[tuple[int, str, bool]]:
    """``(tp, mode, overlap)`` of every row, in order."""
    rows = [(tp, mode, False) for tp in (1, max_tp) for mode in ("sync", "async")]
    return rows + ([(max_tp, "async", True)] if has_tp_overlap() else [])


def _window_value(value):
    """A per-window metric (``{"step": .., "kernel": ..}``) → the step window's value, else the kernel one's."""
    if isinstance(value, dict):
        return value.get("step", value.get("kernel"))
    return value


def row_of(run_dir: Path, tp: int, mode: str, overlap: bool) -> dict:
    """One table row from a finished run folder's run.json and metrics.json."""
    run = json.loads((run_dir / "run.json").read_text())
    doc = json.loads((run_dir / "metrics.json").read_text())
    m, absent = doc["metrics"], doc.get("absent", {})
    coll = doc.get("collectives") or {}
    row = {"tp": tp, "mode": mode, "tp_overlap": overlap, "run": str(run_dir),
           "tokens_per_s": m.get("tokens_per_s"), "gpu_idle_pct": m.get("gpu_idle_pct_worst_rank"),
           "comm_pct": _window_value(m.get("comm_pct")), "comm_overlap_pct": _window_value(m.get("comm_overlap_pct")),
           "collective_wait_pct": m.get("collective_wait_pct"), "collective_wait_us": coll.get("wait_us"),
           "collective_transfer_us": coll.get("transfer_us"), "worst_idle_rank": doc.get("rank_set", {}).get(
               "worst_idle_rank"), "tokens_sha256": run.get("tokens_sha256")}
    for name in ("ttft_ms_p50", "ttft_ms_p99", "itl_ms_p50", "itl_ms_p99", "joules_per_token"):
        row[name] = m.get(name)
    row["absent"] = {k: absent[k] for k in ("gpu_idle_pct_worst_rank", "comm_pct", "comm_overlap_pct",
                                            "collective_wait_pct", "joules_per_token") if k in absent}
    return row


def _cell(value, digits: int = 2) -> str:
    return "—" if value is None else f"{value:,.{digits}f}" if isinstance(value, float) else str(value)


def table_md(rows: list[dict], identical: bool | None) -> str:
    """The markdown table of the rows."""
    cols = [("tp", "TP"), ("mode", "loop"), ("tp_overlap", "comm overlap"), ("tokens_per_s", "tokens/s"),
            ("gpu_idle_pct", "GPU idle % (worst rank)"), ("comm_pct", "comm %"),
            ("comm_overlap_pct", "comm overlapped %"), ("collective_wait_pct", "collective wait % (vs transfer)"),
            ("ttft_ms_p50", "TTFT p50 ms"), ("ttft_ms_p99", "TTFT p99 ms"), ("itl_ms_p50", "ITL p50 ms"),
            ("itl_ms_p99", "ITL p99 ms"), ("joules_per_token", "J/token")]
    lines = ["| " + " | ".join(label for _, label in cols) + " |", "|" + " --- |" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[key], 4 if key == "joules_per_token" else 2) for key, _ in cols)
                     + " |")
    verdict = {True: "identical in every row", False: "NOT identical across rows", None: "not comparable"}[identical]
    return "\n".join(lines) + f"\n\nTokens (run.json tokens_sha256): {verdict}.\n"


def environment() -> dict:
    """GPUs, driver, NCCL and torch versions and the GPUs' links (nvidia-smi topo -m), where there are GPUs."""
    import torch

    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "gpus": torch.cuda.device_count()}
    if torch.cuda.is_available():
        env["gpu_names"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        env["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        for key, cmd in (("driver", ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
                         ("topology", ["nvidia-smi", "topo", "-m"])):
            try:
                env[key] = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
            except (OSError, subprocess.SubprocessError) as exc:
                env[key] = f"unavailable: {exc}"
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("reports/h200x2"))
    ap.add_argument("--dry-run", action="store_true", help="tiny model on the CPU (gloo), small workload")
    ap.add_argument("--tp", type=int, default=2, help="the larger TP size (default 2)")
    ap.add_argument("--extra", default="", help="more abprof run options, one string (e.g. '--warmup-runs 0')")
    args = ap.parse_args(argv)
    os.environ.update(NO_MULTICAST)
    if args.out.exists() and any(args.out.iterdir()):
        print(f"tp_h200x2: {args.out} exists and is not empty; choose another --out", file=sys.stderr)
        return 2
    workload = DRY_WORKLOAD if args.dry_run else GPU_WORKLOAD
    rows, commands = [], []
    for tp, mode, overlap in rows_to_run(args.tp):
        run_dir = args.out / "runs" / f"tp{tp}-{mode}{'-overlap' if overlap else ''}"
        cmd = [sys.executable, "-m", "asyncbatch_prof", "run", "--tp", str(tp), "--mode", mode, "--out", str(run_dir),
               *workload, *(["--tp-overlap"] if overlap else []), *args.extra.split()]
        commands.append(" ".join(["abprof", *cmd[3:]]))
        print(f"tp_h200x2: {commands[-1]}", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, env={**os.environ, **NO_MULTICAST})
        if proc.returncode:
            print(f"tp_h200x2: row tp={tp} {mode} failed (exit {proc.returncode}); see {run_dir}/run.json",
                  file=sys.stderr)
            return 1
        rows.append(row_of(run_dir, tp, mode, overlap))
    digests = [r["tokens_sha256"] for r in rows]
    identical = None if not all(digests) else len(set(digests)) == 1
    doc = {"rows": rows, "tokens_identical": identical, "commands": commands, "dry_run": args.dry_run,
           "tp_overlap_available": has_tp_overlap(), "environment": environment()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tp.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.out / "env.json").write_text(json.dumps(doc["environment"], indent=2) + "\n")
    (args.out / "tp.md").write_text(table_md(rows, identical))
    print(table_md(rows, identical))
    return 0


if __name__ == "__main__":
    sys.exit(main())
