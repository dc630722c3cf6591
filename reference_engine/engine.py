"""LLMEngine: builds the model, the paged KV cache and the runner; ``generate`` runs a workload."""

from __future__ import annotations

import time

import torch
from torch.profiler import record_function

from reference_engine.async_loop import run_async
from reference_engine.attention import _triton_backend
from reference_engine.block_manager import BlockManager
from reference_engine.config import PRESETS, EngineConfig, preset_config
from reference_engine.cpu_device import set_cpu_threads, usable_cores
from reference_engine.cpu_process import can_fork
from reference_engine.follow_loop import run_follower
from reference_engine.model import (CausalLM, init_random_weights, load_checkpoint_config,
                                    load_checkpoint_weights)
from reference_engine.model_runner import ModelRunner
from reference_engine.records import GenerateResult, RequestRecord
from reference_engine.sampler import SamplingParams
from reference_engine.scheduler import Scheduler
from reference_engine.sequence import Request, Sequence
from reference_engine.sync_loop import run_sync
from reference_engine.tensor_parallel import check_divisible, shard_model, tp_group

DEFAULT_KV_GB = {"cuda": 16.0, "cpu": 0.125}


class LLMEngine:
    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        self.tp = tp_group(cfg.tp_size) if cfg.tp_size > 1 else None
        self.rank = self.tp.rank if self.tp else 0
        device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' but torch sees no CUDA device")
        if self.tp and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", self.rank)  # one GPU per rank
        self.device = device
        # the CPU's device work in a forked child (cpu_process) unless asked otherwise; that child computes on one
        # thread (GNU OpenMP cannot start threads in a process forked from one that has used them), so an
        # explicit cpu_threads > 1 keeps the device work in this process
        worker_process = (device.type == "cpu" and not self.tp and can_fork() and (
            cfg.cpu_worker_process or (cfg.cpu_worker_process is None and (cfg.cpu_threads or 1) == 1)))
        # set before the model is built: the same compute threads in both loops, none on the loops' cores
        self.cpu_threads = set_cpu_threads(1 if worker_process else cfg.cpu_threads) if device.type == "cpu" else None
        self.dtype = getattr(torch, cfg.dtype) if cfg.dtype else (torch.bfloat16 if device.type == "cuda"
                                                                  else torch.float32)
        self.preset = cfg.model if cfg.model in PRESETS else None
        self.model_config = preset_config(cfg.model) if self.preset else load_checkpoint_config(cfg.model)
        mc = self.model_config
        if self.tp:
            check_divisible(mc, cfg.tp_size)
        self.max_model_len = cfg.max_model_len or mc.max_position_embeddings
        if self.max_model_len > mc.max_position_embeddings:
            raise ValueError(f"max_model_len {self.max_model_len} exceeds the model's max_position_embeddings "
                             f"({mc.max_position_embeddings})")
        if cfg.cuda_graphs and device.type != "cuda":
            raise ValueError("cuda_graphs=True needs a CUDA device")
        if cfg.cpu_graphs and device.type != "cpu":
            raise ValueError("cpu_graphs=True needs the CPU (CUDA steps use CUDA graphs)")
        if cfg.cpu_worker_process and device.type != "cpu":
            raise ValueError("cpu_worker_process=True needs the CPU (on CUDA the GPU is the device)")
        with torch.device(device):
            model = CausalLM(mc)
        model.to(self.dtype)
        if self.preset:
            init_random_weights(model, cfg.seed)
        else:
            load_checkpoint_weights(model, cfg.model)
        if self.tp:  # every rank built the same full model: keep this rank's shard
            shard_model(model, self.tp)
        self.model = model.eval().requires_grad_(False)
        self.vocab_size = mc.vocab_size
        self.eos_token_id = _first(mc.eos_token_id) if cfg.enable_eos else None
        if cfg.enable_eos and self.eos_token_id is None:
            raise ValueError("enable_eos=True but the model config has no eos_token_id")
        self.num_blocks = self._num_blocks()
        if self.tp:  # rank 0 schedules for every rank: the smallest cache bounds them all
            blocks = torch.tensor([self.num_blocks])
            torch.distributed.all_reduce(blocks, op=torch.distributed.ReduceOp.MIN, group=self.tp.cpu_group)
            self.num_blocks = int(blocks)
        attn = model.layers[0].self_attn
        self.kv_cache = torch.zeros(2, mc.num_hidden_layers, self.num_blocks, cfg.block_size, attn.num_kv_heads,
                                    attn.head_dim, dtype=self.dtype, device=device)
        # default off at TP > 1: capturing the collectives is untested here
        graphs = cfg.cuda_graphs if cfg.cuda_graphs is not None else (device.type == "cuda" and not self.tp)
        cpu_graphs = cfg.cpu_graphs if cfg.cpu_graphs is not None else (device.type == "cpu" and not self.tp)
        self.runner = ModelRunner(model, self.kv_cache, max_batch_tokens=cfg.max_batch_tokens,
                                  max_seqs=cfg.max_seqs, block_size=cfg.block_size,
                                  max_model_len=self.max_model_len, device=device, cuda_graphs=graphs,
                                  worker_thread=cfg.mode == "async", split_prefill_decode=cfg.split_prefill_decode,
                                  tp=self.tp, tp_overlap=cfg.tp_overlap, piecewise_graphs=cfg.piecewise_graphs,
                                  cpu_graphs=cpu_graphs, worker_process=worker_process, graph_copy=cfg.graph_copy)
        self.cpu_worker_process = worker_process
        self.cuda_graphs = bool(self.runner.graphs)
        self.cpu_graphs = cpu_graphs
        self.notes: list[str] = []  # facts a report should mention
        if device.type == "cpu":
            worker = ("; a child process runs the steps' device work" if worker_process else
                      "; the async loop's device work runs on a worker thread" if cfg.mode == "async" else "")
            traced = "; decode steps through a traced forward" if cpu_graphs else ""
            self.notes.append(f"running on the CPU with {self.cpu_threads} torch compute thread(s) of "
                              f"{usable_cores()} usable core(s){worker}{traced}")
        if cfg.split_prefill_decode and device.type == "cpu":
            self.notes.append("split_prefill_decode on the CPU: a mixed step's decode and prefill batches run "
                              "one after the other (no second stream)")
        if self.tp:
            self.notes.append(f"tensor parallel: rank {self.rank} of {cfg.tp_size}"
                              + ("" if cfg.cuda_graphs else ", CUDA graphs off" if device.type == "cuda" else ""))
        if cfg.tp_overlap:
            self.notes.append("tp_overlap: steps of two or more sequences run as two micro-batches, each one's "
                              "all-reduces under the other's computation")
        if graphs and not self.cuda_graphs:
            self.notes.append("CUDA graphs off: Triton is not available, and the reference attention "
                              "cannot be captured")

    def _num_blocks(self) -> int:
        cfg, mc = self.cfg, self.model_config
        attn = self.model.layers[0].self_attn
        bytes_per_block = (2 * mc.num_hidden_layers * cfg.block_size * attn.num_kv_heads * attn.head_dim
                           * torch.finfo(self.dtype).bits // 8)
        if cfg.num_blocks is not None:
            return cfg.num_blocks
        useful = cfg.max_seqs * -(-self.max_model_len // cfg.block_size)  # more could never be used
        if cfg.kv_cache_memory_gb is not None:
            budget = cfg.kv_cache_memory_gb * 1e9
        else:
            budget = DEFAULT_KV_GB[self.device.type] * 1e9
            if self.device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(self.device)
                budget = min(budget, 0.5 * free)
            budget = min(budget, useful * bytes_per_block)
        blocks = int(budget // bytes_per_block)
        if blocks < 1:
            raise ValueError(f"KV cache budget {budget / 1e9:.3g} GB holds no block of {bytes_per_block} bytes")
        return blocks

    # ---- running -----------------------------------------------------------------------------
    def generate(self, requests: list[Request], sampling: SamplingParams | None = None,
                 on_step=None) -> GenerateResult:
        """Run ``requests`` to completion; ``on_step(step)`` after each step. At tensor parallelism every
        rank calls this with the same arguments: rank 0 schedules, the others follow its steps (their
        ``requests`` are not used) and return a result without records."""
        cfg = self.cfg
        runner = self.runner
        runner.configure_sampling(sampling or SamplingParams(), cfg.seed)
        if self.rank != 0:
            return self._follow(on_step)
        records = [RequestRecord(r.request_id, r.prompt_len, r.max_new_tokens, r.arrival_s) for r in requests]
        seqs = [Sequence(r, rec) for r, rec in zip(requests, records)]
        scheduler = Scheduler(BlockManager(self.num_blocks, cfg.block_size), cfg.max_batch_tokens, cfg.max_seqs,
                              self.max_model_len, self.eos_token_id)
        scheduler.add(seqs, self.vocab_size)
        loop = run_async if cfg.mode == "async" else run_sync
        spans_kept = getattr(runner.device_side, "spans", None)  # CPU device sides time their steps: per generate
        if spans_kept is not None:
            spans_kept.clear()
        start_epoch_ns = time.time_ns()
        t0 = time.perf_counter()

        def clock() -> float:
            return time.perf_counter() - t0

        spans = loop(scheduler, runner, clock, on_step, _idle)
        if self.tp:
            runner.stop_followers()
        wall = clock()
        if self.device.type == "cuda":
            with record_function("abprof.sync_wait"):  # the last step's copies are done, wait already read its tokens
                torch.cuda.synchronize(self.device)
        self.last_scheduler = scheduler
        return GenerateResult(records, wall, sum(len(r.output_token_ids) for r in records), len(spans),
                              start_epoch_ns, step_spans_s=spans,
                              device_spans_ns=list(getattr(runner.device_side, "device_spans", None) or []))

    def _follow(self, on_step) -> GenerateResult:
        start_epoch_ns, t0 = time.time_ns(), time.perf_counter()
        steps = run_follower(self.runner, on_step)
        if self.device.type == "cuda":
            with record_function("abprof.sync_wait"):
                torch.cuda.synchronize(self.device)
        return GenerateResult([], time.perf_counter() - t0, 0, steps, start_epoch_ns, rank=self.rank)

    def warmup(self, num_steps: int = 8) -> None:
        """Unrecorded work so that first-use costs stay out of a profile: one forward per padded step shape
        (CUDA), then a few steps (full-budget prefill chunks, then decodes)."""
        self.runner.warmup_shapes()
        cfg = self.cfg
        n = max(1, min(cfg.max_seqs, 32))
        prompt = max(1, min(2 * cfg.max_batch_tokens // n, self.max_model_len - num_steps - 1))
        reqs = [Request(i, [(7 * i + j) % self.vocab_size for j in range(prompt)], max(1, num_steps))
                for i in range(n)]
        self.generate(reqs)

    def close(self) -> None:
        self.runner.close()

    def describe(self) -> dict:
        mc, cfg = self.model_config, self.cfg
        attn = self.model.layers[0].self_attn
        return {
            "model": cfg.model, "preset": self.preset, "model_type": mc.model_type,
            "layers": mc.num_hidden_layers, "hidden": mc.hidden_size, "heads": attn.num_heads * cfg.tp_size,
            "kv_heads": attn.num_kv_heads * cfg.tp_size, "head_dim": attn.head_dim, "intermediate": mc.intermediate_size,
            "vocab": mc.vocab_size, "max_model_len": self.max_model_len,
            "params": sum(p.numel() for p in self.model.parameters()),  # this rank's shard at TP > 1
            "dtype": str(self.dtype).removeprefix("torch."), "device": str(self.device),
            "mode": cfg.mode, "max_batch_tokens": cfg.max_batch_tokens, "max_seqs": cfg.max_seqs,
            "block_size": cfg.block_size, "num_blocks": self.num_blocks,
            "kv_cache_gb": self.kv_cache.numel() * self.kv_cache.element_size() / 1e9,
            "cuda_graphs": self.cuda_graphs, "cpu_graphs": self.cpu_graphs,
            "cpu_worker_process": self.cpu_worker_process, "graph_batch_sizes": list(self.runner.graph_sizes),
            "graph_piece_layers": self.runner.piece_bounds,
            "graph_copy": self.runner.copy_graphs,
            "attention_backend": "triton" if (self.device.type == "cuda" and _triton_backend()) else "torch",
            "split_prefill_decode": cfg.split_prefill_decode, "tp_size": cfg.tp_size, "tp_overlap": cfg.tp_overlap,
            "rank": self.rank,
            "seed": cfg.seed, "enable_eos": cfg.enable_eos, "eos_token_id": self.eos_token_id,
            "cpu_threads": self.cpu_threads, "usable_cores": usable_cores() if self.cpu_threads else None,
        }


def _first(value):
    if isinstance(value, (list, tuple)):
        return value[0] if value else None
    return value


def _idle(scheduler: Scheduler, clock) -> None:
    """Sleep until the next request arrives (nothing is running)."""
    nxt = scheduler.next_arrival_s()
    if nxt is None:
        raise RuntimeError("engine stalled: unfinished requests but nothing to schedule")
    time.sleep(max(0.0, min(nxt - clock(), 0.05)))
