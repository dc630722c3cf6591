"""Launch a tensor-parallel engine: one process per rank (torch.multiprocessing, spawn), SPMD.

``launch(n, fn, args)`` runs ``fn(rank, *args)`` in ``n`` processes with ``torch.distributed``
initialized (NCCL when ``device_type="cuda"``, one GPU per rank; gloo on the CPU) and returns what
each returned, by rank. ``run_workload`` is the usual ``fn``: every rank builds ``LLMEngine`` with
the same config, warms up, and calls ``generate`` with the same requests; rank 0 schedules and the
others follow (``follow_loop``). A per-rank hook (e.g. a profiler per rank) sees every step.
"""

from __future__ import annotations

import os
import queue
import socket
import time
import traceback
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from reference_engine.config import EngineConfig
from reference_engine.records import GenerateResult

# Set in every rank before init: NVLink multicast (NVLS / symmetric memory) stays off on the lent machines.
RANK_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for the rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(n: int, fn, args: tuple = (), *, device_type: str = "cpu", timeout_s: float = 600.0) -> list:
    """Run ``fn(rank, *args)`` in ``n`` spawned processes; → their return values, by rank.

    ``fn`` and ``args`` must be picklable (``fn`` a module-level function), as must its return value.
    ``device_type``: "cuda" (NCCL, rank r on ``cuda:r``) or "cpu" (gloo). A rank that raises makes this
    raise ``RuntimeError("rank R: <error>")`` after the other ranks are stopped; ``timeout_s`` (seconds)
    bounds the whole run and each collective.
    """
    if device_type == "cuda" and torch.cuda.device_count() < n:
        raise ValueError(f"tp_size={n} needs {n} GPUs, torch sees {torch.cuda.device_count()}")
    ctx = mp.get_context("spawn")
    results: queue.Queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank_main, args=(rank, n, port, device_type, timeout_s, fn, args, results),
                         daemon=True) for rank in range(n)]
    for p in procs:
        p.start()
    out, deadline = {}, time.monotonic() + timeout_s
    try:
        while len(out) < n:
            try:
                rank, ok, value = results.get(timeout=1.0)
            except queue.Empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0) and r not in out]
                if dead:
                    raise RuntimeError(f"rank {dead[0]}: process died (exit code {procs[dead[0]].exitcode})") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"tensor-parallel run exceeded {timeout_s:.0f} s") from None
                continue
            if not ok:
                raise RuntimeError(f"rank {rank}: {value}")
            out[rank] = value
    finally:
        for p in procs:
            p.join(timeout=5.0 if len(out) == n else 0.1)
            if p.is_alive():
                p.terminate()
                p.join()
    return [out[r] for r in range(n)]


def _rank_main(rank, n, port, device_type, timeout_s, fn, args, results) -> None:
    os.environ.update(RANK_ENV)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(n))
    try:
        if device_type == "cuda":
            torch.cuda.set_device(rank)
        else:  # ranks share the cores: idle intra-op threads spinning in one rank starve the other's collectives
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // n))
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", rank=rank, world_size=n,
                                timeout=timedelta(seconds=timeout_s))
        value = fn(rank, *args)
        results.put((rank, True, value))
    except BaseException as exc:  # reported to the parent in one line, the traceback on stderr
        traceback.print_exc()
        results.put((rank, False, f"{type(exc).__name__}: {exc}"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@dataclass
class RankRun:
    """What one rank hands back from ``run_workload``."""

    rank: int
    result: GenerateResult  # rank 0: the records and tokens_sha256; other ranks: no records
    step_end_s: list[float] = field(default_factory=list)  # perf_counter seconds since generate() began
    describe: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    hook_result: object = None  # what the rank hook's stop() returned


def run_tp(cfg: EngineConfig, requests: list, *, sampling=None, warmup_steps: int = 8, rank_hook=None,
           timeout_s: float = 600.0) -> list[RankRun]:
    """Run ``requests`` on an engine of ``cfg.tp_size`` ranks; → one ``RankRun`` per rank, by rank.

    ``rank_hook``: None, or a picklable callable ``rank_hook(rank, engine)`` called on every rank after
    warm-up, returning an object with ``start()``, ``on_step(step)`` and ``stop() -> picklable``
    (``stop``'s value comes back as ``RankRun.hook_result``). ``cfg.device`` None or "cuda" uses one GPU
    per rank when CUDA is available.
    """
    cuda = cfg.device is None and torch.cuda.is_available() or str(cfg.device).startswith("cuda")
    return launch(cfg.tp_size, run_workload, (cfg, requests, sampling, warmup_steps, rank_hook),
                  device_type="cuda" if cuda else "cpu", timeout_s=timeout_s)


def run_workload(rank: int, cfg: EngineConfig, requests: list, sampling=None, warmup_steps: int = 8,
                 rank_hook=None) -> RankRun:
    """One rank's part of ``run_tp`` (SPMD: every rank runs this with the same arguments)."""
    from reference_engine.engine import LLMEngine

    engine = LLMEngine(cfg)
    try:
        if warmup_steps:
            engine.warmup(warmup_steps)
        hook = rank_hook(rank, engine) if rank_hook is not None else None
        times: list[float] = []
        t0 = time.perf_counter()

        def on_step(step: int) -> None:
            times.append(time.perf_counter() - t0)
            if hook is not None:
                hook.on_step(step)

        if hook is not None:
            hook.start()
        t0 = time.perf_counter()
        result = engine.generate(requests, sampling, on_step)
        hook_result = hook.stop() if hook is not None else None
        return RankRun(rank, result, times, engine.describe(), list(engine.notes), hook_result)
    finally:
        engine.close()
