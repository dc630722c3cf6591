"""``abprof run``'s options → a plan of runs, validated before any folder is made (bad input: exit 2).

Defaults depend on the machine: with CUDA the standard workload on the ``llama-1b`` shape, without
it the ``tiny`` preset on the CPU with a small workload (and the plan says so).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncbatch_prof.capture.profiler import ProfileWindow
from asyncbatch_prof.capture.recorder import RecordSettings
from asyncbatch_prof.engines import (ENGINES, EngineName, engine_config, engine_has_option, make_requests,
                                     workload_config)
from asyncbatch_prof.errors import AbprofError
from asyncbatch_prof.pipeline.options import RunMode, RunOptions, reproduce_command

MODES = tuple(m.value for m in RunMode)
CUDA_DEFAULTS = dict(model="llama-1b", requests=256, prompt_len="uniform:128:1024", output_len="fixed:256")
# 1,024 output tokens: a second or two per loop on a 2-core machine, enough steps that one preempted step
# does not decide the run's tokens/s (16 x 16 gave sync 300 and 526 tok/s in two runs on a loaded machine).
CPU_DEFAULTS = dict(model="tiny", requests=32, prompt_len="uniform:16:64", output_len="fixed:32")
# Presets too large for a CPU: llama-1b's 1.2 B fp32 parameters did not finish 2 requests x 4 tokens in
# 5 minutes on a 2-core machine (issue 19); refused in one line rather than a silent wait.
GPU_ONLY_MODELS = ("llama-1b",)
DEFAULT_ACTIVE = 64  # steps recorded by default: enough for percentiles, a trace of a few MB
ALL_STEPS = 10**9  # "all": a window longer than any run


@dataclass
class RunSpec:
    """Everything one run needs; ``engine_config`` and ``workload`` are the engine's own config fields."""

    mode: str = "sync"  # a LoopMode value
    engine: str = EngineName.REFERENCE.value
    engine_config: dict[str, Any] = field(default_factory=dict)
    workload: dict[str, Any] = field(default_factory=dict)
    settings: RecordSettings = field(default_factory=RecordSettings)  # how the capture records it
    command: list[str] = field(default_factory=list)  # an abprof run command that repeats this run
    argv: list[str] = field(default_factory=list)  # the command line as typed
    notes: list[str] = field(default_factory=list)
    tp: int | None = None  # tensor-parallel size through the launcher (None: the engine in this process)

    @property
    def window(self) -> ProfileWindow:
        """The engine steps the profiler records."""
        return self.settings.window


@dataclass
class RunPlan:
    """The runs to make (label, spec, folder), where they go, and what the user should be told first."""

    mode: str
    out: Path
    runs: list[tuple[str, RunSpec, Path]] = field(default_factory=list)
    compare_path: Path | None = None
    notes: list[str] = field(default_factory=list)
    repeats: int = 1
    # with repeats > 1: every measured pass in the order it runs (modes alternating): (label, k, spec, folder)
    passes: list[tuple[str, int, RunSpec, Path]] = field(default_factory=list)


def estimate_steps(workload: dict, max_batch_tokens: int, max_seqs: int, requests: list | None = None) -> tuple[int, int]:
    """Rough ``(prefill_steps, total_steps)`` of an offline run: prompts share each step's token budget
    with the running decodes, then the longest output finishes alone."""
    if requests is None:
        requests = make_requests(workload, vocab_size=2**31 - 1)  # lengths do not depend on the vocabulary
    running = min(max_seqs, len(requests))
    prompt_tokens = sum(r.prompt_len for r in requests)
    prefill = -(-prompt_tokens // max(1, max_batch_tokens - running))
    return prefill, prefill + max(r.max_new_tokens for r in requests)


def default_window(workload: dict, max_batch_tokens: int, max_seqs: int, warmup: int,
                   requests: list | None = None) -> tuple[int, int]:
    """``(first, active)``: a window a quarter into the decode-dominated part of the run, where the
    steady-state bubble is (prefill-heavy steps run outside CUDA graphs and cost the profiler most)."""
    prefill, total = estimate_steps(workload, max_batch_tokens, max_seqs, requests)
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


def _choice(enum, value, flag: str):
    try:
        return enum(value)
    except ValueError:
        names = [m.value for m in enum]
        raise AbprofError(f"{flag} must be {', '.join(names[:-1])} or {names[-1]}, got {str(value)!r}") from None


def _check_options(opts: RunOptions, mode: RunMode, engine: EngineName, cuda: bool) -> None:
    if engine is EngineName.TRANSFORMERS:
        if mode is not RunMode.SYNC and not cuda:
            raise AbprofError("transformers' async batching needs a CUDA device; use --mode sync on the CPU")
        if opts.arrival_rate is not None:
            raise AbprofError("--arrival-rate is not supported with --engine transformers (offline workloads only)")
    if opts.split_prefill_decode and engine is not EngineName.REFERENCE:
        raise AbprofError("--split-prefill-decode is an option of the reference engine")
    if opts.one_graph and engine is not EngineName.REFERENCE:
        raise AbprofError("--one-graph is an option of the reference engine")
    _check_tp(opts, engine, cuda)
    if opts.cuda_graphs and not cuda:
        raise AbprofError("--cuda-graphs needs a CUDA device")
    if opts.model in GPU_ONLY_MODELS and not cuda:
        raise AbprofError(f"--model {opts.model} needs a CUDA device (on the CPU it does not finish a few tokens in "
                          "minutes); use --model tiny on the CPU")
    if opts.requests is not None and opts.requests < 1:
        raise AbprofError(f"--requests must be >= 1, got {opts.requests}")
    if opts.warmup_runs < 0:
        raise AbprofError(f"--warmup-runs must be >= 0, got {opts.warmup_runs}")
    if opts.repeats < 1:
        raise AbprofError(f"--repeats must be >= 1, got {opts.repeats}")
    if opts.engine_warmup_steps < 0:
        raise AbprofError(f"--engine-warmup-steps must be >= 0, got {opts.engine_warmup_steps}")
    if opts.workload_jsonl is not None and not Path(opts.workload_jsonl).is_file():
        raise AbprofError(f"--workload-jsonl: file not found: {opts.workload_jsonl}")


def _check_tp(opts: RunOptions, engine: EngineName, cuda: bool) -> None:
    if opts.tp is None:
        if opts.tp_overlap:
            raise AbprofError("--tp-overlap needs --tp N")
        return
    if engine is not EngineName.REFERENCE:
        raise AbprofError("--tp is an option of the reference engine (transformers runs in one process)")
    if opts.tp < 1:
        raise AbprofError(f"--tp must be >= 1, got {opts.tp}")
    if opts.measure_overhead:
        raise AbprofError("--measure-overhead is not supported with --tp")
    if opts.repeats > 1:  # each TP pass spawns its ranks anew; the repeat path reuses one in-process engine
        raise AbprofError("--repeats is not supported with --tp yet: run the command several times")
    if opts.tp_overlap and not engine_has_option("tp_overlap"):
        raise AbprofError("--tp-overlap: this reference engine has no communication overlap (EngineConfig.tp_overlap)")
    if cuda:
        import torch

        if torch.cuda.device_count() < opts.tp:
            raise AbprofError(f"--tp {opts.tp} needs {opts.tp} GPUs, torch sees {torch.cuda.device_count()}")


def check_requests(requests: list, opts: RunOptions) -> None:
    """Refuse a workload that could not produce a token: no requests, more asked of a JSONL file than it
    holds, or lengths below 1."""
    if not requests:
        raise AbprofError(f"the workload has no requests{f' ({opts.workload_jsonl} is empty)' if opts.workload_jsonl else ''}")
    if opts.workload_jsonl is not None and opts.requests is not None and opts.requests > len(requests):
        raise AbprofError(f"--requests {opts.requests} but {opts.workload_jsonl} holds {len(requests)} requests; "
                          "leave --requests out to run them all")
    for r in requests:
        if r.prompt_len < 1 or r.max_new_tokens < 1:
            raise AbprofError(f"request {r.request_id} has prompt length {r.prompt_len} and output length "
                              f"{r.max_new_tokens}; both must be >= 1")


def check_window(window: ProfileWindow, total_steps: int) -> None:
    """Refuse a window that starts where the workload (by the estimate) has surely ended: past the
    estimate by more than its error (a tenth, at least 2 steps)."""
    if window.first >= total_steps + max(2, total_steps // 10):
        raise AbprofError(f"--profile-steps: the profiled window starts at engine step {window.first}, but this "
                          f"workload runs about {total_steps} steps; choose an earlier window or more requests")


def check_out(out: Path) -> None:
    """Fail before running when ``out`` cannot hold a run folder: a name the filesystem refuses, an
    existing file or used folder, a file on the way, or a place without write permission."""
    try:
        parent = next((p for p in out.parents if p.exists()), Path("."))
        limit = os.pathconf(parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        parent, limit = Path("."), 255
    for part in out.parts:
        if len(os.fsencode(part)) > limit:
            raise AbprofError(f"--out: the name {part[:40]}... ({len(part)} characters) is longer than this "
                              f"filesystem allows ({limit})")
    try:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            what = "a file" if not out.is_dir() else "not empty"
            raise AbprofError(f"output folder {out} already exists and is {what}; choose another --out")
        parent = next((p for p in [out, *out.parents] if p.exists()), Path("."))
    except OSError as exc:
        raise AbprofError(f"--out {out}: {exc.strerror}") from None
    if not parent.is_dir():
        raise AbprofError(f"--out {out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise AbprofError(f"--out {out}: no permission to write in {parent}")


def plan_runs(opts: RunOptions, command: list[str] | None = None) -> RunPlan:
    """Validate the options and resolve the machine's defaults into one or two RunSpecs."""
    mode = _choice(RunMode, opts.mode, "--mode")
    engine = _choice(EngineName, opts.engine, "--engine")
    cuda = _has_cuda() if opts.cuda is None else opts.cuda
    defaults = CUDA_DEFAULTS if cuda else CPU_DEFAULTS
    notes = [] if cuda else [f"no CUDA device: running the {opts.model or 'tiny'} model on the CPU"
                             + ("" if opts.requests or opts.workload_jsonl else " with a small workload")
                             + "; NVML metrics will be absent"]
    _check_options(opts, mode, engine, cuda)
    if not cuda and engine is EngineName.REFERENCE and (opts.tp or 1) == 1:
        # one terminal line (80 columns with "abprof: "); reference_engine/cpu_process.py says why
        notes.append("a child process plays the GPU; abprof adds its steps to the trace")
    if opts.split_prefill_decode and not cuda:
        # one terminal line (80 columns with "abprof: "); run.json's notes say more
        notes.append("--split-prefill-decode falls back on the CPU: both batches run in turn")
    workload = dict(num_requests=opts.requests if opts.requests is not None else
                    (0 if opts.workload_jsonl else defaults["requests"]),
                    prompt_len=opts.prompt_len or defaults["prompt_len"],
                    output_len=opts.output_len or defaults["output_len"], arrival_rate=opts.arrival_rate,
                    seed=opts.seed, jsonl=str(opts.workload_jsonl) if opts.workload_jsonl else None)
    workload = workload_config(workload).to_dict()  # validates the distributions
    requests = make_requests(workload, vocab_size=2**31 - 1)  # lengths do not depend on the vocabulary
    check_requests(requests, opts)
    if workload["jsonl"]:
        workload["num_requests"] = len(requests)  # run.json records what runs
    window = parse_window(opts.profile_steps,
                          default_window(workload, opts.max_batch_tokens, opts.max_seqs, opts.warmup_steps, requests),
                          opts.warmup_steps)
    check_window(window, estimate_steps(workload, opts.max_batch_tokens, opts.max_seqs, requests)[1])
    config = dict(model=opts.model or defaults["model"], max_batch_tokens=opts.max_batch_tokens,
                  max_seqs=opts.max_seqs, block_size=opts.block_size, cuda_graphs=opts.cuda_graphs, seed=opts.seed)
    if opts.split_prefill_decode:  # only when asked: the transformers engine's config has no such field
        config["split_prefill_decode"] = True
    if opts.one_graph:  # only when asked: the field exists from the engine version that has the pieces
        config["piecewise_graphs"] = False
    if opts.tp_overlap:  # only when asked: the field exists from the engine version that has the overlap
        config["tp_overlap"] = True
    engine_config(mode.loops[0], {**config, "tp_size": opts.tp or 1})  # validates the engine options
    out = Path(opts.out) if opts.out is not None else Path("reports") / f"{timestamp()}-{mode}"
    check_out(out)
    plan = RunPlan(mode=mode.value, out=out, notes=notes, repeats=opts.repeats)
    settings = RecordSettings(window=window, engine_warmup_steps=opts.engine_warmup_steps,
                              warmup_runs=opts.warmup_runs, with_stack=opts.with_stack,
                              measure_overhead=opts.measure_overhead, nvml=opts.nvml)

    def spec_of(loop: str, run_dir: Path, repeats: int | None = None) -> RunSpec:
        return RunSpec(mode=loop, engine=engine.value, engine_config=config, workload=workload, settings=settings,
                       command=reproduce_command(opts, loop, run_dir, repeats), argv=list(command or []),
                       notes=list(notes), tp=opts.tp)

    for loop in mode.loops:
        run_dir = out / loop if mode is RunMode.BOTH else out
        plan.runs.append((loop, spec_of(loop, run_dir), run_dir))
    if opts.repeats > 1:  # alternating, so a drift of the machine does not favour one mode
        plan.passes = [(loop, k, spec_of(loop, repeat_dir(run_dir, k), 1), repeat_dir(run_dir, k))
                       for k in range(1, opts.repeats + 1) for loop, _, run_dir in plan.runs]
    if mode is RunMode.BOTH:
        plan.compare_path = out / "compare.html"
    return plan


def repeat_dir(run_dir: Path, k: int) -> Path:
    """The folder of repeat ``k`` (1-based) of a run: ``RUN/r1``, ``RUN/r2``, ..."""
    return run_dir / f"r{k}"


def timestamp() -> str:
    """A folder-name timestamp, local time: ``20261124-031500``."""
    return time.strftime("%Y%m%d-%H%M%S")
