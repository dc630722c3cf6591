"""`abprof run`: profile a workload on an engine (sync, async or both) and write run folders."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from asyncbatch_prof.cli.errors import cli_errors, fail

_W = "Workload"
_E = "Engine"
_P = "Profiling"


def _typed_command() -> list[str]:
    """The command line as typed, when abprof was started from a shell (not when a test invokes it)."""
    prog = Path(sys.argv[0]).name if sys.argv else ""
    return list(sys.argv) if prog in ("abprof", "__main__.py") else []


def run(
    *,
    mode: Annotated[str, typer.Option(help="sync, async, or both (two runs of one workload, and a comparison).",
                                      metavar="sync|async|both")] = "both",
    engine: Annotated[str, typer.Option(help="reference (the bundled engine) or transformers (its own "
                                        "continuous batching, generate_batch).", metavar="reference|transformers")]
    = "reference",
    model: Annotated[Optional[str], typer.Option(
        help="Preset (tiny, llama-1b) or a checkpoint folder. Default: llama-1b on CUDA, tiny on the CPU.",
        show_default=False)] = None,
    requests: Annotated[Optional[int], typer.Option(
        help="Number of requests. Default: 256 on CUDA, 16 on the CPU.", show_default=False, rich_help_panel=_W)]
    = None,
    prompt_len: Annotated[Optional[str], typer.Option(
        metavar="DIST", help="Prompt lengths: fixed:N, uniform:LO:HI or lognormal:MEAN:SIGMA[:MAX]. "
        "Default: uniform:128:1024 on CUDA, uniform:16:64 on the CPU.", show_default=False, rich_help_panel=_W)]
    = None,
    output_len: Annotated[Optional[str], typer.Option(
        metavar="DIST", help="Output lengths (same forms). Default: fixed:256 on CUDA, fixed:16 on the CPU.",
        show_default=False, rich_help_panel=_W)] = None,
    arrival_rate: Annotated[Optional[float], typer.Option(
        help="Poisson arrivals, requests/s. Default: all requests at t=0 (offline).", show_default=False,
        rich_help_panel=_W)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the workload, the weights and sampling.", rich_help_panel=_W)]
    = 0,
    workload_jsonl: Annotated[Optional[Path], typer.Option(
        help='JSONL workload: lines {"prompt_len": P, "output_len": O} (or "prompt_token_ids").',
        show_default=False, rich_help_panel=_W)] = None,
    max_batch_tokens: Annotated[int, typer.Option(help="Token budget of one step.", rich_help_panel=_E)] = 2048,
    max_seqs: Annotated[int, typer.Option(help="Sequences in one step at most.", rich_help_panel=_E)] = 256,
    block_size: Annotated[int, typer.Option(help="KV cache block size, tokens.", rich_help_panel=_E)] = 16,
    split_prefill_decode: Annotated[bool, typer.Option(
        "--split-prefill-decode", help="Reference engine: run a step's decodes and prefill chunks as two "
        "batches on two CUDA streams, so their kernels overlap (same tokens).", rich_help_panel=_E)] = False,
    cuda_graphs: Annotated[Optional[bool], typer.Option(
        "--cuda-graphs/--no-cuda-graphs", help="Decode under CUDA graphs. Default: on with CUDA.",
        show_default=False, rich_help_panel=_E)] = None,
    profile_steps: Annotated[Optional[str], typer.Option(
        metavar="N|FIRST:LAST|all", help="Engine steps recorded: N steps from the default start, an inclusive "
        "window, or all. Default: 64 steps a quarter into the decode-dominated part of the workload (from an "
        "estimate of its steps).", show_default=False, rich_help_panel=_P)]
    = None,
    warmup_steps: Annotated[int, typer.Option(
        help="Profiler warm-up steps before the window (profiler on, discarded; >= 1).", rich_help_panel=_P)] = 2,
    engine_warmup_steps: Annotated[int, typer.Option(
        help="Unrecorded engine warm-up steps before the workload.", rich_help_panel=_P)] = 8,
    warmup_runs: Annotated[int, typer.Option(
        help="Unprofiled passes over the whole workload before measuring (compiles kernels for its shapes).",
        rich_help_panel=_P)] = 1,
    with_stack: Annotated[bool, typer.Option("--with-stack", help="Record Python stacks (costs time).",
                                             rich_help_panel=_P)] = False,
    measure_overhead: Annotated[bool, typer.Option(
        "--measure-overhead", help="Run the workload unprofiled first and report tokens/s with and without "
        "the profiler.", rich_help_panel=_P)] = False,
    nvml: Annotated[bool, typer.Option("--nvml/--no-nvml", help="Sample the GPU with NVML.",
                                       rich_help_panel=_P)] = True,
    out: Annotated[Optional[Path], typer.Option(
        help="Output folder (new or empty). Default: reports/<timestamp>-<mode>.", show_default=False)] = None,
) -> None:
    """Run a workload under torch.profiler and NVML, analyze it, and write a run folder.

    With no options: on CUDA the [bold]llama-1b[/] shape and the standard workload (256 requests, prompts
    uniform 128-1024, 256 output tokens, greedy), sync and async; without CUDA the [bold]tiny[/] preset on
    the CPU with a small workload.

    A folder holds trace.json.gz, nvml.csv, requests.csv, run.json, metrics.json and report.html;
    [cyan]--mode both[/] writes OUT/sync, OUT/async and OUT/compare.html.
    """
    from asyncbatch_prof.capture.options import RunOptions, plan_runs

    with cli_errors():
        opts = RunOptions(mode=mode, engine=engine, model=model, requests=requests, prompt_len=prompt_len,
                          output_len=output_len, arrival_rate=arrival_rate, seed=seed,
                          workload_jsonl=workload_jsonl, max_batch_tokens=max_batch_tokens, max_seqs=max_seqs,
                          block_size=block_size, cuda_graphs=cuda_graphs,
                          split_prefill_decode=split_prefill_decode, profile_steps=profile_steps,
                          warmup_steps=warmup_steps, engine_warmup_steps=engine_warmup_steps,
                          warmup_runs=warmup_runs, with_stack=with_stack, measure_overhead=measure_overhead,
                          nvml=nvml, out=out)
        plan = plan_runs(opts, command=_typed_command())
    from asyncbatch_prof.capture.session import execute

    code = execute(plan)
    if code:
        raise typer.Exit(code)
