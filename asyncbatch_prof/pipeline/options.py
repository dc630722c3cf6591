"""``abprof run``'s options, declared once: each field carries its command-line metadata, from which the
CLI builds its command and :func:`reproduce_command` spells a run back out.

``RunMode``'s ``sync``/``async`` are the values of ``reference_engine.config.LoopMode`` (a test holds
them together); it is not imported here because the engine package imports torch, and ``abprof --help``
must answer without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

from asyncbatch_prof.engines import EngineName

WORKLOAD, ENGINE, PROFILING = "Workload", "Engine", "Profiling"


class RunMode(str, Enum):
    """What ``abprof run`` runs: one loop, or both of one workload and their comparison."""

    SYNC = "sync"
    ASYNC = "async"
    BOTH = "both"

    def __str__(self) -> str:  # the value, as a plain str would print
        return self.value

    @property
    def loops(self) -> tuple[str, ...]:
        """The engine loop modes (LoopMode values) this run mode runs, in order."""
        return ("sync", "async") if self is RunMode.BOTH else (self.value,)


@dataclass(frozen=True)
class Flag:
    """Command-line metadata of one option: help text, explicit names (a ``--x/--no-x`` pair, a lone
    ``--flag``), metavar and help panel."""

    help: str
    names: tuple[str, ...] = ()
    metavar: str | None = None
    panel: str | None = None
    show_default: bool = True


def option(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field that is also an ``abprof run`` option."""
    return field(default=default, metadata={"cli": Flag(help, **kw)})


@dataclass
class RunOptions:
    """The command line's values, as typed (None: the machine's default)."""

    mode: RunMode = option(RunMode.BOTH, "sync, async, or both (two runs of one workload, and a comparison).")
    engine: EngineName = option(EngineName.REFERENCE, "reference (the bundled engine) or transformers (its own "
                                "continuous batching, generate_batch).")
    model: str | None = option(None, "Preset (tiny, llama-1b) or a checkpoint folder. Default: llama-1b on CUDA, "
                               "tiny on the CPU.", show_default=False)
    requests: int | None = option(None, "Number of requests. Default: 256 on CUDA, 32 on the CPU (with "
                                  "--workload-jsonl: the file's).", show_default=False, panel=WORKLOAD)
    prompt_len: str | None = option(None, "Prompt lengths: fixed:N, uniform:LO:HI or lognormal:MEAN:SIGMA[:MAX]. "
                                    "Default: uniform:128:1024 on CUDA, uniform:16:64 on the CPU.", metavar="DIST",
                                    show_default=False, panel=WORKLOAD)
    output_len: str | None = option(None, "Output lengths (same forms). Default: fixed:256 on CUDA, fixed:32 on "
                                    "the CPU.", metavar="DIST", show_default=False, panel=WORKLOAD)
    arrival_rate: float | None = option(None, "Poisson arrivals, requests/s. Default: all requests at t=0 "
                                        "(offline).", show_default=False, panel=WORKLOAD)
    seed: int = option(0, "Seed of the workload, the weights and sampling.", panel=WORKLOAD)
    workload_jsonl: Path | None = option(None, 'JSONL workload: lines {"prompt_len": P, "output_len": O} (or '
                                         '"prompt_token_ids").', show_default=False, panel=WORKLOAD)
    max_batch_tokens: int = option(2048, "Token budget of one step.", panel=ENGINE)
    max_seqs: int = option(256, "Sequences in one step at most.", panel=ENGINE)
    block_size: int = option(16, "KV cache block size, tokens.", panel=ENGINE)
    cuda_graphs: bool | None = option(None, "Decode under CUDA graphs. Default: on with CUDA.",
                                      names=("--cuda-graphs/--no-cuda-graphs",), show_default=False, panel=ENGINE)
    one_graph: bool = option(False, "Reference engine: each decode CUDA graph in one piece. Default: three pieces "
                             "over the layers, launched in turn, so that the GPU starts on the first while the host "
                             "launches the rest (the profiler's cost per recorded sync step: +3.1% against +5.3%, "
                             "reports/h200/overhead-arms.md).", names=("--one-graph",), panel=ENGINE)
    split_prefill_decode: bool = option(False, "Reference engine: run a step's decodes and prefill chunks as two "
                                        "batches on two CUDA streams, so their kernels overlap (same tokens).",
                                        names=("--split-prefill-decode",), panel=ENGINE)
    tp: int | None = option(None, "Reference engine: tensor-parallel size, one process and one GPU per rank (gloo on "
                            "the CPU); a trace and an NVML sampler per rank. --tp 1 runs through the same launcher.",
                            show_default=False, panel=ENGINE)
    tp_overlap: bool = option(False, "Reference engine with --tp: hide the all-reduces under computation (when the "
                              "engine has it: EngineConfig.tp_overlap).", names=("--tp-overlap",), panel=ENGINE)
    profile_steps: str | None = option(None, "Engine steps recorded: N steps from the default start, an inclusive "
                                       "window, or all. Default: 64 steps a quarter into the decode-dominated part "
                                       "of the workload (from an estimate of its steps).", metavar="N|FIRST:LAST|all",
                                       show_default=False, panel=PROFILING)
    warmup_steps: int = option(2, "Profiler warm-up steps before the window (profiler on, discarded; >= 1).",
                               panel=PROFILING)
    engine_warmup_steps: int = option(8, "Unrecorded engine warm-up steps before the workload.", panel=PROFILING)
    warmup_runs: int = option(1, "Unprofiled passes over the whole workload before measuring (compiles kernels "
                              "for its shapes).", panel=PROFILING)
    with_stack: bool = option(False, "Record Python stacks (costs time).", names=("--with-stack",), panel=PROFILING)
    measure_overhead: bool = option(False, "Run the workload unprofiled first and report tokens/s with and "
                                    "without the profiler, and the profiled window's steps against the same "
                                    "steps unprofiled.", names=("--measure-overhead",), panel=PROFILING)
    repeats: int = option(1, "Measured (profiled) passes per mode; with --mode both the modes alternate. "
                          "metrics.json holds the medians and their spread.", panel=PROFILING)
    nvml: bool = option(True, "Sample the GPU with NVML.", names=("--nvml/--no-nvml",), panel=PROFILING)
    out: Path | None = option(None, "Output folder (new or empty). Default: reports/<timestamp>-<mode>.",
                              show_default=False)
    cuda: bool | None = None  # not an option: None asks torch (tests set it)


def cli_fields() -> list:
    """The dataclass fields of RunOptions that are command-line options, in declaration order."""
    return [f for f in fields(RunOptions) if "cli" in f.metadata]


def flag_name(f) -> str:
    """``--max-batch-tokens`` for the field ``max_batch_tokens``."""
    return "--" + f.name.replace("_", "-")


def reproduce_command(opts: RunOptions, mode: str, out: Path, repeats: int | None = None) -> list[str]:
    """An ``abprof run`` command line that repeats one run exactly: every option that has a value, from
    the declaration above (``mode``, ``out`` and, for one repeat of several, ``repeats`` are the run's own)."""
    cmd = ["abprof", "run"]
    own = {"mode": mode, "out": out, "repeats": opts.repeats if repeats is None else repeats}
    for f in cli_fields():
        value = own.get(f.name, getattr(opts, f.name))
        names = f.metadata["cli"].names
        if value is None:
            continue
        if isinstance(value, bool):
            on, _, off = (names[0] if names else flag_name(f)).partition("/")
            if value or off:
                cmd.append(on if value else off)
            continue
        cmd += [flag_name(f), str(value)]
    return cmd
