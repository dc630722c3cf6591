"""Hugging Face transformers' own continuous batching behind the engine interface of INTERFACES §1.

The model is the reference engine's shape with the reference engine's random weights (same preset,
same seed: the fused reference weights are split into transformers' names), or the same checkpoint.
Requests go through the manager API that ``model.generate_batch`` is built on
(``init_continuous_batching`` → ``warmup`` → ``start`` → ``add_request`` → ``get_result``), so that
the KV cache allocation and CUDA graph capture happen before the measured window rather than
inside it, and each request keeps its own ``max_new_tokens``. ``ContinuousBatchingConfig
(use_async_batching=...)`` picks transformers' sync or async loop.

The batching loop runs on transformers' background thread. ``on_step`` is called there after each
``_generation_step`` (one engine step); the profiler records every thread's CPU ops where torch can
(``profile_all_threads``), and the run says so in ``notes``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import torch

from reference_engine.records import GenerateResult, RequestRecord



def thread_note(all_threads: bool) -> str:
    """What the trace holds of transformers' background batching thread, given how the profiler ran."""
    head = ("transformers runs its batching loop on a background thread, without abprof.* annotations: the "
            "analyzer takes the thread that issued the most GPU launches as the engine thread and the kernel "
            "window instead of the step window; ")
    if all_threads:
        return head + "its CPU ops (cpu_op rows) and CUDA runtime calls are in the trace (profile_all_threads)"
    return head + ("this torch cannot profile all threads, so only its CUDA runtime/driver calls (recorded "
                   "by CUPTI for every thread) are in the trace: its host work is a lower bound")


def hf_state_dict(model) -> dict[str, torch.Tensor]:
    """transformers-named tensors from a reference ``CausalLM`` (the inverse of ``load_hf_weights``)."""
    out: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        parts = name.split(".")
        if parts[-2] == "qkv_proj":
            attn = model.layers[int(parts[1])].self_attn
            sizes = {"q_proj": attn.q_size, "k_proj": attn.kv_size, "v_proj": attn.kv_size}
        elif parts[-2] == "gate_up_proj":
            n = model.layers[int(parts[1])].mlp.intermediate
            sizes = {"gate_proj": n, "up_proj": n}
        else:
            out[name if name.startswith("lm_head") else "model." + name] = p.detach()
            continue
        prefix = "model." + ".".join(parts[:-2])
        for (sub, tensor) in zip(sizes, torch.split(p.detach(), list(sizes.values()), dim=0)):
            out[f"{prefix}.{sub}.{parts[-1]}"] = tensor
    return out


def build_hf_model(cfg, device: torch.device, dtype: torch.dtype):
    """A transformers causal LM with the reference engine's weights for ``cfg`` (preset + seed, or checkpoint)."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from reference_engine.config import PRESETS, preset_config
    from reference_engine.model import CausalLM, init_random_weights

    if cfg.model not in PRESETS:
        return AutoModelForCausalLM.from_pretrained(cfg.model, dtype=dtype).to(device).eval()
    config = preset_config(cfg.model)
    with torch.device(device):
        ref = CausalLM(config)
    ref.to(dtype)
    init_random_weights(ref, cfg.seed)  # the exact values LLMEngine gives this preset and seed
    with torch.device(device):
        hf = LlamaForCausalLM(config)
    hf.to(dtype)
    missing, unexpected = hf.load_state_dict(hf_state_dict(ref), strict=False)
    missing = [m for m in missing if "rotary" not in m]
    if missing or unexpected:
        raise RuntimeError(f"weight names do not match transformers: missing {missing[:3]}, unexpected {unexpected[:3]}")
    del ref
    return hf.eval()


CUDNN_NOTE = ("SDPA's cuDNN backend is disabled for transformers (torch.backends.cuda.enable_cudnn_sdp(False)): "
              "with torch 2.11+cu130 on an H100 it fails mid-run in transformers' paged SDPA; SDPA picks its "
              "flash or memory-efficient kernels instead")


class TransformersCBEngine:
    """transformers' continuous batching (sync or async loop) with the reference engine's interface."""

    def __init__(self, cfg):
        import transformers

        if not hasattr(transformers, "ContinuousBatchingConfig"):
            raise RuntimeError(f"transformers {transformers.__version__} has no ContinuousBatchingConfig")
        self.cfg = cfg
        self.device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = getattr(torch, cfg.dtype) if cfg.dtype else (
            torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.model = build_hf_model(cfg, self.device, self.dtype)
        self.vocab_size = self.model.config.vocab_size
        self.manager = None
        self.notes: list[str] = []
        if self.device.type == "cuda" and torch.backends.cuda.cudnn_sdp_enabled():  # CUDNN_NOTE says why
            torch.backends.cuda.enable_cudnn_sdp(False)
            self.notes.append(CUDNN_NOTE)
        self._lock = threading.Lock()

    # ---- configuration ---------------------------------------------------------------------------
    def _configs(self, max_new_tokens: int):
        from transformers import ContinuousBatchingConfig, GenerationConfig

        cfg = self.cfg
        gen = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=None, pad_token_id=0)
        cb = dict(use_async_batching=cfg.mode == "async", max_batch_tokens=cfg.max_batch_tokens,
                  max_requests_per_batch=cfg.max_seqs, seed=cfg.seed)
        if cfg.cuda_graphs is not None:
            cb["use_cuda_graph"] = cfg.cuda_graphs
        return gen, ContinuousBatchingConfig(**cb)

    def _start(self, requests: list) -> None:
        """Create, warm up (CUDA graphs) and start the manager, sized for ``requests``; outside the timing."""
        from transformers.generation.continuous_batching.utils import WorkloadHints

        longest = max(r.max_new_tokens for r in requests)
        gen, cb = self._configs(longest)
        hints = WorkloadHints(max_prompt_length=max(r.prompt_len for r in requests),
                              max_generated_length=longest, num_requests=len(requests))
        self.manager = self.model.init_continuous_batching(generation_config=gen, continuous_batching_config=cb,
                                                           workload_hints=hints)
        if not getattr(self.manager, "warmed_up", False):  # 5.17 has no warmed_up flag: warm up once here
            self.manager.warmup()
        self.manager.start()

    thread_note = staticmethod(thread_note)

    def warmup(self, num_steps: int = 8) -> None:
        """Nothing to do before the requests are known; the manager is built and warmed up by ``generate``."""

    # ---- running ---------------------------------------------------------------------------------
    def generate(self, requests: list, sampling=None, on_step=None) -> GenerateResult:
        """Run ``requests`` (all arrive at t=0) and return records like the reference engine's (s since start).

        transformers logs a loop exception with its traceback (through a handler bound to the stderr of
        its import), then fails the requests; the run reports that failure in one line, so its batching
        logger is quiet meanwhile."""
        cb_logger = logging.getLogger("ContinuousBatchingLogger")
        level = cb_logger.level
        cb_logger.setLevel(logging.CRITICAL)
        try:
            return self._generate(requests, on_step)
        finally:
            cb_logger.setLevel(level)

    def _generate(self, requests: list, on_step) -> GenerateResult:
        if any(r.arrival_s for r in requests):
            raise ValueError("the transformers engine runs offline workloads only (all requests at t=0)")
        if self.manager is None:
            self._start(requests)
        manager = self.manager
        steps = {"n": 0}
        original = type(manager)._generation_step

        def step_and_report(this) -> None:
            original(this)
            if on_step is not None and this is manager:
                steps["n"] += 1
                on_step(steps["n"] - 1)

        type(manager)._generation_step = step_and_report  # called on transformers' loop thread
        try:
            start_epoch_ns = time.time_ns()
            t0 = time.perf_counter()
            results = self._submit_and_collect(manager, requests)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            wall = time.perf_counter() - t0
        finally:
            type(manager)._generation_step = original
        records = [_record(r, results.get(rid), t0) for r, rid in zip(requests, self._ids)]
        failed = [r for r in records if r.finish_reason == "rejected"]
        if failed:  # transformers' loop reports its exceptions per request; a run that lost requests is not a run
            reason = (failed[0].rejected_reason or "").strip().splitlines()
            raise RuntimeError(f"transformers' continuous batching failed {len(failed)} of {len(records)} "
                               f"requests: {reason[0] if reason else 'no reason given'}")
        return GenerateResult(records, wall, sum(len(r.output_token_ids) for r in records), steps["n"],
                              start_epoch_ns)

    def _submit_and_collect(self, manager, requests: list) -> dict[str, Any]:
        self._ids = [manager.add_request(list(r.prompt_token_ids), max_new_tokens=r.max_new_tokens,
                                         record_timestamps=True) for r in requests]
        pending, results = set(self._ids), {}
        while pending:
            out = manager.get_result(timeout=1)
            if out is None:
                if not manager.is_running():
                    raise RuntimeError("transformers' generation thread stopped before all requests finished")
                continue
            if out.is_finished() and out.request_id in pending:
                results[out.request_id] = out
                pending.discard(out.request_id)
        return results

    def close(self) -> None:
        """Stop transformers' loop thread and free its cache."""
        if self.manager is not None:
            self.manager.stop(block=True, timeout=30)
            destroy = getattr(self.manager, "destroy", None)
            if destroy is not None:
                destroy()
            self.manager = None

    def describe(self) -> dict:
        """Model and batching configuration for run.json."""
        import transformers

        mc, cb = self.model.config, getattr(self.manager, "continuous_batching_config", None)
        return {
            "model": self.cfg.model, "engine": f"transformers {transformers.__version__} continuous batching",
            "layers": mc.num_hidden_layers, "hidden": mc.hidden_size, "heads": mc.num_attention_heads,
            "kv_heads": mc.num_key_value_heads, "vocab": mc.vocab_size, "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device), "mode": self.cfg.mode, "use_async_batching": self.cfg.mode == "async",
            "max_batch_tokens": self.cfg.max_batch_tokens, "max_requests_per_batch": self.cfg.max_seqs,
            "attn_implementation": getattr(mc, "_attn_implementation", None), "seed": self.cfg.seed,
            "cb_config": repr(cb) if cb is not None else None,
        }


def _record(request, out, t0: float) -> RequestRecord:
    """A RequestRecord from transformers' GenerationOutput (perf_counter times → s since ``t0``)."""
    rec = RequestRecord(request.request_id, request.prompt_len, request.max_new_tokens, request.arrival_s)
    if out is None:
        rec.finish_reason = "rejected"
        rec.rejected_reason = "transformers returned no result"
        return rec
    if out.error is not None:
        rec.finish_reason, rec.rejected_reason = "rejected", str(out.error)
    rec.output_token_ids = list(out.generated_tokens)
    times = [t - t0 for t in (out.timestamps or [])]
    rec.token_times_s = times
    rec.first_token_s = times[0] if times else None
    start, finish = out.lifespan
    rec.scheduled_s = start - t0 if start and start > 0 else None
    rec.finish_s = finish - t0 if finish and finish > 0 else (times[-1] if times else None)
    if rec.finish_reason is None:
        rec.finish_reason = "length" if len(rec.output_token_ids) >= request.max_new_tokens else "eos"
    return rec
