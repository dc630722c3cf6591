"""The reference engine at tensor-parallel size N: one process per rank (``reference_engine.distributed``),
each rank recorded by its own torch.profiler and NVML sampler.

:class:`RankCapture` is the launcher's ``rank_hook``: a picklable factory that every rank calls after its
engine warm-up. It runs the unrecorded warm-up passes over the workload (SPMD: every rank calls it at the
same point, so the ranks' collectives line up), then hands back a :class:`_RankRecorder` that writes
``traces/rank{r}.json.gz`` and samples rank r's GPU. Rank 0 forwards its step indices to the parent
through a queue, for the progress bar.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from asyncbatch_prof.capture.environment import environment
from asyncbatch_prof.capture.nvml import NvmlSampler
from asyncbatch_prof.capture.profiler import ProfileWindow, StepProfiler, warm_up_profiler

TRACES_DIR = "traces"


def rank_trace_name(rank: int) -> str:
    """The trace of rank ``rank`` inside a TP run folder (the layout analysis/ranks.py reads)."""
    return f"{TRACES_DIR}/rank{rank}.json.gz"


@dataclass
class RankCapture:
    """``rank_hook`` of ``run_tp``: the settings every rank records with (picklable: plain values only)."""

    run_dir: str
    window: ProfileWindow
    requests: list
    warmup_runs: int = 1
    with_stack: bool = False
    nvml: bool = True
    steps: Any = None  # a spawn-context Queue: rank 0's step indices for the parent's progress bar

    def __call__(self, rank: int, engine) -> "_RankRecorder":
        for _ in range(self.warmup_runs):  # compiles kernels for the workload's shapes, unrecorded
            engine.generate(self.requests)
        return _RankRecorder(self, rank, str(getattr(engine, "device", "cpu")).startswith("cuda"))


class _RankRecorder:
    """One rank's profiler and NVML sampler over its ``generate`` call."""

    def __init__(self, settings: RankCapture, rank: int, cuda: bool):
        self.settings, self.rank, self.cuda = settings, rank, cuda
        self.sampler = (NvmlSampler(device_index=rank if cuda else 0) if settings.nvml
                        else NvmlSampler(reason="NVML sampling turned off"))
        self.profiler = StepProfiler(Path(settings.run_dir) / rank_trace_name(rank), settings.window,
                                     with_stack=settings.with_stack, cuda=cuda)
        self.env: dict[str, Any] = {}

    def start(self) -> None:
        """Start NVML sampling and the profiler (its one-time start-up paid first, outside the window)."""
        if self.settings.nvml:
            self.sampler.start()
        self.env = environment(driver=self.sampler.driver)
        warm_up_profiler(self.cuda)
        self.profiler.__enter__()
        self.sampler.mark("generate_start")

    def on_step(self, step: int) -> None:
        """Advance the profiler's schedule; rank 0 also reports the step to the parent."""
        self.profiler.step(step)
        if self.rank == 0 and self.settings.steps is not None:
            self.settings.steps.put_nowait(step)

    def stop(self) -> dict[str, Any]:
        """Stop recording; → what the parent needs, as plain values (the trace stays on disk)."""
        self.sampler.mark("generate_end")
        try:
            self.profiler.__exit__(None, None, None)
        finally:
            self.sampler.stop()
        fields = {f.name: getattr(self.sampler, f.name) for f in dataclasses.fields(NvmlSampler)}
        fields["samples"] = self.sampler.snapshot()
        return {"trace_written": self.profiler.trace_written, "profiler": self.profiler.describe(),
                "sampler": fields, "sampler_error": self.sampler.error, "environment": self.env,
                "all_threads": self.profiler.all_threads}


def detached_sampler(fields: dict[str, Any], error: str | None = None) -> NvmlSampler:
    """A stopped NvmlSampler rebuilt from a rank's plain values (for ``nvml_metrics`` in the parent)."""
    sampler = NvmlSampler(**fields)
    sampler.error = error
    return sampler


def model_vocab_size(model: str) -> int:
    """The vocabulary of a preset or checkpoint, without building the model (the ranks build it)."""
    from reference_engine.config import PRESETS

    if model in PRESETS:
        return int(PRESETS[model]["vocab_size"])
    from reference_engine.model import load_checkpoint_config

    return int(load_checkpoint_config(model).vocab_size)


def run_ranks(mode: str, config: dict[str, Any], requests: list, capture: RankCapture, tp: int,
              engine_warmup_steps: int, on_step: Callable[[int], None] | None = None) -> list:
    """Run the workload on ``tp`` ranks, each recorded by ``capture``; → ``RankRun`` per rank, by rank.

    ``on_step`` is called in this process with rank 0's step indices while the ranks run."""
    import torch.multiprocessing as mp

    from asyncbatch_prof.engines import engine_config
    from reference_engine.distributed import run_tp

    cfg = engine_config(mode, {**config, "tp_size": tp})
    steps = mp.get_context("spawn").Queue() if on_step is not None else None
    capture = dataclasses.replace(capture, steps=steps)
    done = threading.Event()

    def forward() -> None:
        while not done.is_set():
            try:
                on_step(steps.get(timeout=0.1))
            except queue.Empty:
                continue

    poller = threading.Thread(target=forward, daemon=True) if steps is not None else None
    if poller is not None:
        poller.start()
    try:
        return run_tp(cfg, requests, warmup_steps=engine_warmup_steps, rank_hook=capture)
    finally:
        done.set()
        if poller is not None:
            poller.join(timeout=1.0)
