"""``abprof run``'s options → a plan of runs, validated before any folder is made (bad input: exit 2).

Defaults depend on the machine: with CUDA the standard workload on the ``llama-1b`` shape, without
it the ``tiny`` preset on the CPU with a small workload (and the plan says so).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from asyncbatch_prof.capture.engines import engine_config, workload_config
from asyncbatch_prof.capture.profiler import ProfileWindow
from asyncbatch_prof.capture.runner import ENGINES, RunSpec, timestamp
from asyncbatch_prof.errors import AbprofError

MODES = ("sync", "async", "both")
CUDA_DEFAULTS = dict(model="llama-1b", requests=256, prompt_len="uniform:128:1024", output_len="fixed:256")
CPU_DEFAULTS = dict(model="tiny", requests=16, prompt_len="uniform:16:64", output_len="fixed:16")
DEFAULT_ACTIVE = 64  # steps recorded by default: enough for percentiles, a trace of a few MB
ALL_STEPS = 10**9  # "all": a window longer than any run


@dataclass
class RunOptions:
    """The command line's values, as typed (None: the machine's default)."""

    mode: str = "both"
    engine: str = "reference"
    model: str | None = None
    requests: int | None = None
    prompt_len: str | None = None
    output_len: str | None = None
    arrival_rate: float | None = None
    seed: int = 0
    workload_jsonl: Path | None = None
    max_batch_tokens: int = 2048
    max_seqs: int = 256
    block_size: int = 16
    cuda_graphs: bool | None = None
    split_prefill_decode: bool = False
    profile_steps: str | None = None
    warmup_steps: int = 2
    engine_warmup_steps: int = 8
    warmup_runs: int = 1
    with_stack: bool = False
    measure_overhead: bool = False
    nvml: bool = True
    out: Path | None = None
    cuda: bool | None = None  # None: ask torch


@dataclass
class RunPlan:
    """The runs to make (label, spec, folder), where they go, and what the user should be told first."""

    mode: str
    out: Path
    runs: list[tuple[str, RunSpec, Path]] = field(default_factory=list)
    compare_path: Path | None = None
    notes: list[str] = field(default_factory=list)


def estimate_steps(workload: dict, max_batch_tokens: int, max_seqs: int) -> tuple[int, int]:
    """Rough ``(prefill_steps, total_steps)`` of an offline run: prompts share each step's token budget
    with the running decodes, then the longest output finishes alone."""
    from asyncbatch_prof.capture.engines import make_requests

    requests = make_requests(workload, vocab_size=2**31 - 1)  # lengths do not depend on the vocabulary
    running = min(max_seqs, len(requests))
    prompt_tokens = sum(r.prompt_len for r in requests)
    prefill = -(-prompt_tokens // max(1, max_batch_tokens - running))
    return prefill, prefill + max(r.max_new_tokens for r in requests)


def default_window(workload: dict, max_batch_tokens: int, max_seqs: int, warmup: int) -> tuple[int, int]:
    """``(first, active)``: a window a quarter into the decode-dominated part of the run, where the
    steady-state bubble is (prefill-heavy steps run outside CUDA graphs and cost the profiler most)."""
    prefill, total = estimate_steps(workload, max_batch_tokens, max_seqs)
    first = max(warmup, prefill + (total - prefill) // 4)
    return first, max(1, min(DEFAULT_ACTIVE, total - first - 1))


def parse_window(text: str | None, default: tuple[int, int], warmup: int) -> ProfileWindow:
    """``N`` | ``FIRST:LAST`` | ``all`` (engine step indices, inclusive) → the profiler schedule."""
    if warmup < 1:
        raise AbprofError(f"--warmup-steps must be >= 1 (the profiler's warm-up keeps its start-up out of the "
                          f"trace), got {warmup}")
    first, active = default
    if text is not None:
        value = text.strip().lower()
        try:
            if value == "all":
                first, active = warmup, ALL_STEPS
            elif ":" in value or "-" in value:
                a, b = (int(x) for x in value.replace("-", ":").split(":"))
                if a < 0 or b < a:
                    raise ValueError
                first, active = a, b - a + 1
            else:
                active = int(value)
                if active < 1:
                    raise ValueError
        except ValueError:
            raise AbprofError(f"--profile-steps must be N (> 0), FIRST:LAST (0 <= FIRST <= LAST) or all, "
                              f"got {text!r}") from None
    if first < warmup:
        raise AbprofError(f"the profiled window starts at step {first}, but {warmup} profiler warm-up steps "
                          f"must come before it: start at {warmup} or later, or lower --warmup-steps")
    return ProfileWindow(wait=first - warmup, warmup=warmup, active=active)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def plan_runs(opts: RunOptions, command: list[str] | None = None) -> RunPlan:
    """Validate the options and resolve the machine's defaults into one or two RunSpecs."""
    if opts.mode not in MODES:
        raise AbprofError(f"--mode must be sync, async or both, got {opts.mode!r}")
    if opts.engine not in ENGINES:
        raise AbprofError(f"--engine must be reference or transformers, got {opts.engine!r}")
    cuda = _has_cuda() if opts.cuda is None else opts.cuda
    defaults = CUDA_DEFAULTS if cuda else CPU_DEFAULTS
    notes = [] if cuda else [f"no CUDA device: running the {opts.model or 'tiny'} model on the CPU"
                             + ("" if opts.requests or opts.workload_jsonl else " with a small workload")
                             + "; GPU metrics will be absent"]
    if opts.engine == "transformers":
        if opts.mode != "sync" and not cuda:
            raise AbprofError("transformers' async batching needs a CUDA device; use --mode sync on the CPU")
        if opts.arrival_rate is not None:
            raise AbprofError("--arrival-rate is not supported with --engine transformers (offline workloads only)")
    if opts.split_prefill_decode and opts.engine != "reference":
        raise AbprofError("--split-prefill-decode is an option of the reference engine")
    if opts.cuda_graphs and not cuda:
        raise AbprofError("--cuda-graphs needs a CUDA device")
    if opts.requests is not None and opts.requests < 1:
        raise AbprofError(f"--requests must be >= 1, got {opts.requests}")
    if opts.warmup_runs < 0:
        raise AbprofError(f"--warmup-runs must be >= 0, got {opts.warmup_runs}")
    if opts.engine_warmup_steps < 0:
        raise AbprofError(f"--engine-warmup-steps must be >= 0, got {opts.engine_warmup_steps}")
    if opts.workload_jsonl is not None and not Path(opts.workload_jsonl).is_file():
        raise AbprofError(f"--workload-jsonl: file not found: {opts.workload_jsonl}")
    workload = dict(num_requests=opts.requests if opts.requests is not None else
                    (0 if opts.workload_jsonl else defaults["requests"]),
                    prompt_len=opts.prompt_len or defaults["prompt_len"],
                    output_len=opts.output_len or defaults["output_len"], arrival_rate=opts.arrival_rate,
                    seed=opts.seed, jsonl=str(opts.workload_jsonl) if opts.workload_jsonl else None)
    workload = workload_config(workload).to_dict()  # validates the distributions
    window = parse_window(opts.profile_steps,
                          default_window(workload, opts.max_batch_tokens, opts.max_seqs, opts.warmup_steps),
                          opts.warmup_steps)
    engine = dict(model=opts.model or defaults["model"], max_batch_tokens=opts.max_batch_tokens,
                  max_seqs=opts.max_seqs, block_size=opts.block_size, cuda_graphs=opts.cuda_graphs, seed=opts.seed)
    if opts.split_prefill_decode:  # only when asked: the transformers engine's config has no such field
        engine["split_prefill_decode"] = True
    base = RunSpec(mode="sync", engine=opts.engine, engine_config=engine, workload=workload, window=window,
                   engine_warmup_steps=opts.engine_warmup_steps, warmup_runs=opts.warmup_runs,
                   with_stack=opts.with_stack, measure_overhead=opts.measure_overhead, nvml=opts.nvml, notes=list(notes))
    engine_config(base)  # validates the engine options
    out = Path(opts.out) if opts.out is not None else Path("reports") / f"{timestamp()}-{opts.mode}"
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AbprofError(f"output folder {out} already exists and is not empty; choose another --out")
    plan = RunPlan(mode=opts.mode, out=out, notes=notes)
    modes = ("sync", "async") if opts.mode == "both" else (opts.mode,)
    for m in modes:
        spec = replace(base, mode=m, notes=list(notes))
        spec.command = reproduce_command(opts, m, out / m if opts.mode == "both" else out)
        spec.argv = list(command or [])
        plan.runs.append((m, spec, out / m if opts.mode == "both" else out))
    if opts.mode == "both":
        plan.compare_path = out / "compare.html"
    return plan


def reproduce_command(opts: RunOptions, mode: str, out: Path) -> list[str]:
    """An ``abprof run`` command line that repeats one run exactly (every option spelled out)."""
    cmd = ["abprof", "run", "--mode", mode, "--engine", opts.engine]
    for flag, value in (("--model", opts.model), ("--requests", opts.requests), ("--prompt-len", opts.prompt_len),
                        ("--output-len", opts.output_len), ("--arrival-rate", opts.arrival_rate),
                        ("--workload-jsonl", opts.workload_jsonl), ("--profile-steps", opts.profile_steps)):
        if value is not None:
            cmd += [flag, str(value)]
    cmd += ["--seed", str(opts.seed), "--max-batch-tokens", str(opts.max_batch_tokens), "--max-seqs",
            str(opts.max_seqs), "--block-size", str(opts.block_size), "--warmup-steps", str(opts.warmup_steps),
            "--engine-warmup-steps", str(opts.engine_warmup_steps), "--warmup-runs", str(opts.warmup_runs)]
    if opts.cuda_graphs is not None:
        cmd.append("--cuda-graphs" if opts.cuda_graphs else "--no-cuda-graphs")
    cmd += [f for f, on in (("--split-prefill-decode", opts.split_prefill_decode),
                            ("--with-stack", opts.with_stack), ("--measure-overhead", opts.measure_overhead),
                            ("--no-nvml", not opts.nvml)) if on]
    return cmd + ["--out", str(out)]

