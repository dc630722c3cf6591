"""The cost of measuring (issue 19): how much the profiler and the NVML sampler slow the very steps they record.

    python3 benchmarks/overhead.py --out reports/h200              # GPU: standard workload, llama-1b, 5 repeats
    python3 benchmarks/overhead.py --dry-run --out /tmp/o          # CPU, tiny preset, seconds (CI smoke)

Method. Each loop (sync, async) runs in its own process: one engine, built and warmed up once, then the same
workload is generated again and again. In a pass the recording is switched on and off in blocks across the
steady decode steps (every sequence decoding, no prefill, no finished request): ``off`` steps with nothing
recording, then ``warm`` steps with the recording on but left out (as abprof run's profiler warm-up step),
then ``on`` steps, recorded and measured, and again (the NVML sampler, below, is measured by whole passes). Each step's wall time comes from the engine's own
(start, end) timestamps (``GenerateResult.step_spans_s``, always on); starting and stopping the recording
happens between steps, so it is outside the timed steps and is reported on its own. A pass's overhead is
the median over its ``on`` blocks of the block's median step over the mean of the median ``off`` steps of
the blocks either side of it, minus one (the first ``off`` step after each stop is left out): the recorded
steps are compared with unrecorded steps of the same batch a few steps away. The sync loop's host time
moves between two levels about 0.5 ms apart (0.6 and 1.2 ms of host work per step on the H200), from pass to
pass and within a pass (reports/h200/cupti-lingering.json), which a comparison across passes, or of a whole
pass's medians (``overhead_pct_pass_medians``, kept for comparison), cannot tell from the profiler. Every
*arm* runs once per repeat, in an order rotated from repeat to repeat; over the repeats: the mean and a 95%
t-interval. The engine runs its default piecewise decode graphs (``--one-graph``: one graph per batch size).
Where the extra time goes: each step's host time is also split into phases (``step_phases``: preparing the
inputs, enqueueing the device work, waiting for tokens, the rest), each compared the same way, in us per step;
``--gpu-time`` adds the step's device time from CUDA events (a diagnosis: the events are one more call per step).

Arms. The NVML sampler runs through every pass, as abprof run runs it through the whole run; the profiler
arms switch torch.profiler on in the ``warm`` and ``on`` blocks:

- ``default``: what abprof run records by default: CPU ops of every thread and CUDA activity
  (``capture.profiler.profiler_settings``);
- ``main-thread``: as default, CPU ops of the profiler's own thread only;
- ``cuda-only``: CUDA activity only (runtime calls and GPU records, no CPU ops);
- ``cpu-only``: CPU ops and annotations only, no GPU records (what recording CPU ops alone costs; the
  analysis needs GPU records, so this is a diagnosis, not a candidate default).

``nvml``: the sampler itself (a child process, whose start is too slow to switch it between
steps) is measured by pairs of whole unprofiled passes, one with it and one without, back to back in
alternating order: its overhead is the ratio of the two passes' median steady step, minus one.

Kineto leaves CUPTI attached once a profiler has started in the process (it detaches only with
``TEARDOWN_CUPTI=1``, which on torch 2.11 + CUDA 13.0 loses the GPU records of every other profiler session:
``benchmarks/graph_cupti.py``), and abprof run starts one (its profiler warm-up) before the run; so the ``off``
steps here run as abprof run's unprofiled steps do, with CUPTI attached. What that attachment costs is
measured on its own (``lingering``): the host time of one replay of the engine's largest decode CUDA graph
before any profiler has started and after everything else, the time of the first profiler start and stop
in the process, and whole unprofiled passes before and after one pass recorded as abprof run records it.
``launches`` is the host time of that graph replay under each arm.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # runs from a checkout whether or not the package is installed
    sys.path.insert(0, str(REPO))

from benchmarks.overhead_page import fmt_ci, markdown  # noqa: E402

PRESETS = {
    "full": dict(model="llama-1b", requests=256, prompt="uniform:128:1024", output="fixed:256", max_seqs=256,
                 max_batch_tokens=2048, repeats=5, steady=(80, 250), blocks=(6, 2, 6)),
    "dry": dict(model="tiny", requests=8, prompt="uniform:16:32", output="fixed:32", max_seqs=8,
                max_batch_tokens=128, repeats=2, steady=(6, 30), blocks=(2, 1, 2)),
}
PROFILER_ARMS = ("default", "main-thread", "cuda-only", "cpu-only")
ARMS = ("nvml",) + PROFILER_ARMS
WARMUP_STEPS = 2  # abprof run's --warmup-steps default
# two-sided 97.5% quantiles of Student's t (df 1..10); the normal 1.96 beyond
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def mean_ci95(values: list[float]) -> tuple[float, list[float] | None]:
    """Mean and 95% t-interval of ``values`` (None with fewer than two)."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, None
    t = T975[len(values) - 2] if len(values) - 1 <= len(T975) else 1.96
    half = t * statistics.stdev(values) / math.sqrt(len(values))
    return m, [m - half, m + half]


# ---- one loop, in its own process ---------------------------------------------------------------
def phase_of(k: int, cfg: dict) -> str:
    """``pre`` (before the steady steps), then ``off``, ``warm``, ``on`` blocks in turn."""
    lo, _ = cfg["steady"]
    off, warm, on = cfg["blocks"]
    if k < lo:
        return "pre"
    j = (k - lo) % (off + warm + on)
    return "off" if j < off else "warm" if j < off + warm else "on"


class PhaseClock:
    """Times methods of the engine per step: ``phases`` maps a phase name to ``(object, method name)``; each
    method is wrapped in place (two ``perf_counter`` calls, in every step, recorded or not)."""

    def __init__(self, phases: dict[str, tuple[object, str]]):
        self.names = tuple(phases)
        self.reset()
        for name, (obj, attr) in phases.items():
            setattr(obj, attr, self._timed(name, getattr(obj, attr)))

    def _timed(self, name: str, fn):
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent[name] += time.perf_counter() - t
        return timed

    def reset(self) -> None:
        self.per_step: list[dict[str, float]] = []
        self.spent = dict.fromkeys(self.names, 0.0)

    def on_step(self, i: int) -> None:
        self.per_step.append(self.spent)
        self.spent = dict.fromkeys(self.names, 0.0)


def step_phases(runner) -> PhaseClock:
    """A step's host time in phases: ``prepare`` (inputs into a host buffer), ``enqueue`` (the device side's
    launch: copies, graph replays, sampling), ``wait`` (blocked on a step's tokens); the rest of the step
    (schedule, update, the annotations) is the step's wall time less these."""
    return PhaseClock({"prepare": (runner, "prepare_step"), "enqueue": (runner.device_side, "launch"),
                       "wait": (runner, "wait")})


class GpuClock:
    """Diagnosis (``--gpu-time``): each step's device time from two timing CUDA events, one recorded on the
    compute stream before the step's device work is enqueued, one on the copy-out stream after it (the
    first also lengthens the sync loop's host path, by one event record, in every step)."""

    def __init__(self, runner):
        import torch

        self.torch, self.side = torch, runner.device_side
        self.reset()
        launch = self.side.launch

        def timed(plan):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record(self.side.compute_stream)
            try:
                return launch(plan)
            finally:
                e1.record(self.side.d2h_stream)
                self.pending.append((e0, e1))
        self.side.launch = timed

    def reset(self) -> None:
        self.pending: list = []
        self.per_step: list[float] = []

    def on_step(self, i: int) -> None:
        self.per_step.append(len(self.pending) - 1)  # the step's event pair (-1: none yet)

    def gpu_ms(self) -> list[float | None]:
        self.torch.cuda.synchronize()
        return [self.pending[j][0].elapsed_time(self.pending[j][1]) if j >= 0 else None for j in self.per_step]


class Recording:
    """What a profiler arm switches on for a block: a torch.profiler (no schedule)."""

    def __init__(self, arm: str, cuda: bool):
        self.arm, self.cuda = arm, cuda
        self.prof = None

    def start(self) -> None:
        from torch.profiler import profile

        from asyncbatch_prof.capture.profiler import profiler_quiet, profiler_settings

        options = {"default": {}, "main-thread": {"all_threads": False}, "cuda-only": {"cpu": False},
                   "cpu-only": {"cpu": True}}[self.arm]
        kwargs = profiler_settings(self.cuda and self.arm != "cpu-only", **options)
        kwargs.pop("all_threads")
        self.prof = profile(**kwargs)
        with profiler_quiet(None):
            self.prof.__enter__()

    def stop(self) -> None:
        from asyncbatch_prof.capture.profiler import profiler_quiet

        if self.prof is not None:
            with profiler_quiet(None):
                self.prof.__exit__(None, None, None)
            self.prof = None


class Nvml:
    """The NVML sampler over a whole pass, as abprof run runs it over the whole run (GPU only)."""

    def __init__(self, on: bool):
        self.sampler = None
        if on:
            from asyncbatch_prof.capture.nvml import NvmlSampler
            self.sampler = NvmlSampler()

    def __enter__(self):
        if self.sampler is not None:
            self.sampler.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.sampler is not None:
            self.sampler.stop()


def nvml_pair(engine, requests, cuda: bool, cfg: dict, first_with: bool) -> dict:
    """Two consecutive unprofiled passes, one with the NVML sampler running: its cost per step."""
    medians, sampler = {}, None
    for with_nvml in (first_with, not first_with):
        with Nvml(cuda and with_nvml) as n:
            medians[with_nvml] = steady_median_ms(engine.generate(requests), cfg)
        if n.sampler is not None:  # which sampler ran (a child process, or the thread fallback)
            sampler = n.sampler.sampler
    return {"arm": "nvml", "on_ms_median": medians[True], "off_ms_median": medians[False],
            "overhead_pct": 100 * (medians[True] / medians[False] - 1), "nvml_sampler": sampler,
            "switch_ms_max": None}


def blocks_pass(engine, requests, arm: str, cuda: bool, cfg: dict, clocks: tuple = ()) -> dict:
    """One pass of the workload with the profiler arm switched on in the ``warm`` and ``on`` blocks (the NVML
    sampler runs the whole pass). ``clocks``: a step's phases (``step_phases``) and device time (``GpuClock``),
    each on block's median against the off blocks either side of it, as for the step."""
    rec = Recording(arm, cuda)
    switch_s = []
    active = False
    for c in clocks:
        c.reset()

    def on_step(i: int) -> None:
        nonlocal active
        for c in clocks:
            c.on_step(i)
        t = time.perf_counter()
        if not active and phase_of(i + 1, cfg) == "warm" and i + 1 < cfg["steady"][1]:
            rec.start()
            active = True
        elif active and phase_of(i + 1, cfg) == "off":
            rec.stop()
            active = False
        else:
            return
        switch_s.append(time.perf_counter() - t)

    try:
        with Nvml(cuda):
            result = engine.generate(requests, on_step=on_step)
    finally:
        if active:
            rec.stop()
    lo, hi = cfg["steady"]
    hi = min(hi, result.num_steps - 1)
    step_ms = [1e3 * (e - s) for s, e in result.step_spans_s]
    series = {"step": step_ms}  # per step, ms
    for c in clocks:
        if isinstance(c, GpuClock):
            series["gpu"] = c.gpu_ms()
        else:
            for name in c.names:
                series[name] = [1e3 * p[name] for p in c.per_step]
            series["rest"] = [t - sum(1e3 * p[n] for n in c.names) for t, p in zip(step_ms, c.per_step)]
    cycles: dict[int, dict[str, list[int]]] = {}  # per off/warm/on cycle: its off and on steps
    for k in range(lo, hi):
        c = cycles.setdefault((k - lo) // sum(cfg["blocks"]), {"off": [], "on": []})
        if phase_of(k, cfg) == "on":
            c["on"].append(k)
        elif phase_of(k, cfg) == "off" and phase_of(k - 1, cfg) != "on":
            c["off"].append(k)
    on, off = ([step_ms[k] for c in cycles.values() for k in c[kind]] for kind in ("on", "off"))
    # each on block against the off blocks either side of it (the host's speed drifts within a pass)
    ratios, deltas = [], {name: [] for name in series}
    for i, c in sorted(cycles.items()):
        sides = [x["off"] for x in (c, cycles.get(i + 1)) if x is not None and x["off"]]
        if not (c["on"] and sides):
            continue
        for name, xs in series.items():
            if any(xs[k] is None for k in c["on"] + [k for side in sides for k in side]):
                continue
            base = statistics.fmean(statistics.median(xs[k] for k in side) for side in sides)
            deltas[name].append(1e3 * (statistics.median(xs[k] for k in c["on"]) - base))
            if name == "step":
                ratios.append(statistics.median(xs[k] for k in c["on"]) / base)
    return {"arm": arm, "on_ms_median": statistics.median(on), "off_ms_median": statistics.median(off),
            "on_steps": len(on), "off_steps": len(off), "blocks": len(ratios),
            "overhead_pct": 100 * (statistics.median(ratios) - 1),
            "overhead_pct_pass_medians": 100 * (statistics.median(on) / statistics.median(off) - 1),
            "delta_us": {name: statistics.median(d) for name, d in deltas.items() if d},
            "switch_ms_max": 1e3 * max(switch_s) if switch_s else None,
            "switch_ms_total": 1e3 * sum(switch_s) if switch_s else None}


def steady_median_ms(result, cfg) -> float:
    lo, hi = cfg["steady"]
    return statistics.median(1e3 * (e - s) for s, e in result.step_spans_s[lo:min(hi, result.num_steps - 1)])


def graph_replay_us(engine, cuda: bool, reps: int = 200) -> float | None:
    """Host time (median, us) of one replay of the engine's largest decode CUDA graph."""
    import torch

    graphs = getattr(engine.runner, "graphs", None) if cuda else None
    if not graphs:
        return None
    graph, _ = graphs[max(graphs)]
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        graph.replay()
        times.append(1e6 * (time.perf_counter() - t))
    torch.cuda.synchronize()
    return statistics.median(times)


def abprof_like_pass(engine, requests, window, cuda: bool, tmp: Path) -> dict:
    """One pass as abprof run records it: profiler warm-up, NVML, the default window, export."""
    from asyncbatch_prof.capture.nvml import NvmlSampler
    from asyncbatch_prof.capture.profiler import StepProfiler, warm_up_profiler

    sampler = NvmlSampler() if cuda else None
    if sampler is not None:
        sampler.start()
    calls = []
    try:
        warm_up_profiler(cuda)
        profiler = StepProfiler(tmp / "abprof-like.json.gz", window, cuda=cuda)
        with profiler:
            def step(i: int) -> None:
                t = time.perf_counter()
                profiler.step(i)
                calls.append(time.perf_counter() - t)
            engine.generate(requests, on_step=step)
            t_exit = time.perf_counter()
        export_s = time.perf_counter() - t_exit
    finally:
        if sampler is not None:
            sampler.stop()
    (tmp / "abprof-like.json.gz").unlink(missing_ok=True)
    return {"window_start_stop_ms_max": 1e3 * max(calls), "stop_and_export_s": export_s}


def warmed_engine(mode: str, cfg: dict, engine_options: dict | None = None):
    """The preset's engine (``engine_options``: more ``EngineConfig`` fields), warmed up as abprof run warms it
    (engine steps, one unprofiled pass), its workload and abprof run's default profile window for it:
    ``(engine, requests, window, cuda)``."""
    from asyncbatch_prof.capture.profiler import ProfileWindow
    from asyncbatch_prof.pipeline.plan import default_window
    from reference_engine import EngineConfig, LLMEngine, WorkloadConfig, make_workload

    workload = dict(num_requests=cfg["requests"], prompt_len=cfg["prompt"], output_len=cfg["output"], seed=0)
    first, active = default_window(workload, cfg["max_batch_tokens"], cfg["max_seqs"], WARMUP_STEPS)
    window = ProfileWindow(wait=first - WARMUP_STEPS, warmup=WARMUP_STEPS, active=active)
    engine = LLMEngine(EngineConfig(model=cfg["model"], mode=mode, max_seqs=cfg["max_seqs"],
                                    max_batch_tokens=cfg["max_batch_tokens"], seed=0, **(engine_options or {})))
    requests = make_workload(WorkloadConfig(**workload), vocab_size=engine.vocab_size)
    engine.warmup()
    engine.generate(requests)  # abprof run's unprofiled warm-up pass
    return engine, requests, window, engine.device.type == "cuda"


def run_part(mode: str, cfg: dict, repeats: int, arms: tuple[str, ...] = ARMS, engine_options: dict | None = None,
             gpu_time: bool = False) -> dict:
    import torch

    engine, requests, window, cuda = warmed_engine(mode, cfg, engine_options)
    lingering = {"graph_replay_us_before_any_profiler": graph_replay_us(engine, cuda),
                 "passes_before_ms": [steady_median_ms(engine.generate(requests), cfg) for _ in range(3)]}
    from asyncbatch_prof.capture.profiler import warm_up_profiler
    t = time.perf_counter()
    warm_up_profiler(cuda)  # the process's first profiler start and stop (CUPTI initialisation)
    lingering["first_profiler_start_stop_s"] = time.perf_counter() - t
    lingering["graph_replay_us_after_first_profiler"] = graph_replay_us(engine, cuda)
    with tempfile.TemporaryDirectory() as tmp:
        lingering["abprof_like_pass"] = abprof_like_pass(engine, requests, window, cuda, Path(tmp))
    lingering["passes_after_ms"] = [steady_median_ms(engine.generate(requests), cfg) for _ in range(3)]
    print(json.dumps(lingering), flush=True)
    passes = []
    clocks = (step_phases(engine.runner),) + ((GpuClock(engine.runner),) if gpu_time and cuda else ())
    for r in range(repeats):
        for arm in arms[r % len(arms):] + arms[:r % len(arms)]:
            one = nvml_pair(engine, requests, cuda, cfg, r % 2 == 0) if arm == "nvml" else \
                blocks_pass(engine, requests, arm, cuda, cfg, clocks)
            passes.append({"repeat": r, **one})
            print(json.dumps(passes[-1]), flush=True)
    launches = {"off": graph_replay_us(engine, cuda)}
    for arm in [a for a in PROFILER_ARMS if a in arms]:
        rec = Recording(arm, cuda)
        rec.start()
        try:
            launches[arm] = graph_replay_us(engine, cuda)
        finally:
            rec.stop()
    lingering["graph_replay_us_after_everything"] = graph_replay_us(engine, cuda)
    engine_doc = engine.describe()
    engine.close()
    by_arm = {arm: arm_summary([p for p in passes if p["arm"] == arm]) for arm in arms}
    return {"mode": mode, "steady_steps": list(cfg["steady"]), "blocks_off_warm_on": list(cfg["blocks"]),
            "abprof_window": {"first": window.first, "last": window.first + window.active - 1},
            "engine": engine_doc, "cuda": cuda, "device_name": torch.cuda.get_device_name(0) if cuda else "cpu",
            "arms": by_arm, "passes": passes, "lingering": lingering, "graph_replay_us": launches,
            "overhead_pct": by_arm["default"]["overhead_pct"], "ci95": by_arm["default"]["ci95"]}


def arm_summary(mine: list[dict]) -> dict:
    """One arm over its passes: the mean overhead and its 95% interval, each repeat's, and (profiler arms)
    where the recorded step's extra time goes, us per step, mean over the repeats."""
    mean, ci = mean_ci95([p["overhead_pct"] for p in mine])
    out = {"overhead_pct": mean, "ci95": ci, "per_repeat_pct": [p["overhead_pct"] for p in mine],
           "switch_ms_max": _max([p["switch_ms_max"] for p in mine])}
    if all("delta_us" in p for p in mine):  # (not the nvml arm's pairs, nor passes from before the phases)
        names = dict.fromkeys(n for p in mine for n in p["delta_us"])
        out["delta_us"] = {n: statistics.fmean(p["delta_us"][n] for p in mine if n in p["delta_us"]) for n in names}
    return out


def _max(xs):
    xs = [x for x in xs if x is not None]
    return max(xs) if xs else None


# ---- the driver ---------------------------------------------------------------------------------
def environment(dry: bool) -> dict:
    import platform

    import torch
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "dry_run": dry}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip().split(", ")
        env.update(gpu=out[0], driver=out[1])
    except (OSError, IndexError, subprocess.SubprocessError):
        env.update(gpu="none", driver="-")
    return env


def pool(docs: list[dict], names: list[str]) -> dict:
    """One document from several runs' (the same code, several device calls): per loop, every run's passes
    (repeats renumbered in order), each arm's mean and interval over all of them; the rest of the loop's
    document (engine, lingering, launches) from its first run; ``sources`` says which run gave what."""
    out = {"environment": dict(docs[0]["environment"]), "sources": []}
    for name, doc in zip(names, docs):
        out["sources"].append({"file": name, "date_utc": doc["environment"]["date_utc"],
                               "command": doc.get("command"),
                               "loops": {m: {"repeats": len({p["repeat"] for p in doc[m]["passes"]}),
                                             "overhead_pct": doc[m]["overhead_pct"], "ci95": doc[m]["ci95"]}
                                         for m in ("sync", "async") if "arms" in doc.get(m, {})}})
        for key in ("gpu", "driver", "torch", "cuda"):
            if doc["environment"].get(key) != out["environment"].get(key):
                raise ValueError(f"{name}: {key} {doc['environment'].get(key)} differs from the first file's")
    out["environment"]["date_utc"] = ", ".join(s["date_utc"] for s in out["sources"])
    modes = [m for m in ("sync", "async") if any("arms" in d.get(m, {}) for d in docs)]
    for mode in modes:
        runs = [d[mode] for d in docs if "arms" in d.get(mode, {})]
        part = {k: v for k, v in runs[0].items() if k not in ("arms", "passes")}
        passes, offset = [], 0
        for run in runs:
            passes += [{**p, "repeat": p["repeat"] + offset} for p in run["passes"]]
            offset = max(p["repeat"] for p in passes) + 1
        by_arm = {arm: arm_summary([p for p in passes if p["arm"] == arm])
                  for arm in dict.fromkeys(p["arm"] for p in passes)}
        out[mode] = {**part, "arms": by_arm, "passes": passes, "overhead_pct": by_arm["default"]["overhead_pct"],
                     "ci95": by_arm["default"]["ci95"]}
    out["summary"] = {m: {"overhead_pct": out[m]["overhead_pct"], "ci95": out[m]["ci95"]} for m in modes}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny preset, 2 repeats")
    p.add_argument("--repeats", type=int)
    p.add_argument("--part", choices=["sync", "async"], help=argparse.SUPPRESS)
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), help="arms to run (default: all)")
    p.add_argument("--modes", nargs="+", choices=["sync", "async"], default=["sync", "async"], help="loops to run")
    p.add_argument("--one-graph", action="store_true",
                   help="the engine's decode graphs in one piece per batch size (default: piecewise)")
    p.add_argument("--no-graph-copy", action="store_true",
                   help="a sync decode step's input copy as a copy_ ahead of its graphs (default: a node of its "
                        "first piece, EngineConfig.graph_copy)")
    p.add_argument("--gpu-time", action="store_true",
                   help="diagnosis: also each step's device time, from two timing CUDA events per step (GpuClock)")
    p.add_argument("--timeout", type=int, default=280, help="seconds per loop's process")
    p.add_argument("--pool", nargs="+", metavar="JSON",
                   help="no run: pool the repeats of these overhead.json files (the same code, several device "
                        "calls) into OUT/overhead.json and overhead.md")
    args = p.parse_args(argv)
    if args.pool:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        try:
            doc = pool([json.loads(Path(f).read_text()) for f in args.pool], args.pool)
        except (OSError, ValueError, KeyError) as e:
            p.error(f"cannot pool {' '.join(args.pool)}: {e}")
        doc["command"] = " ".join(["python3", "benchmarks/overhead.py", *(argv or sys.argv[1:])])
        (out / "overhead.json").write_text(json.dumps(doc, indent=1))
        (out / "overhead.md").write_text(markdown(doc, (__doc__ or "").split("Method. ", 1)[1].strip(), PROFILER_ARMS))
        return 0
    cfg = PRESETS["dry" if args.dry_run else "full"]
    repeats = args.repeats or cfg["repeats"]
    out = Path(args.out)
    if args.part:
        arms = tuple(a for a in ARMS if a in args.arms)
        if "default" not in arms:
            p.error("--arms must include default")
        options = {"piecewise_graphs": not args.one_graph, "graph_copy": not args.no_graph_copy}
        doc = run_part(args.part, cfg, repeats, arms, options, gpu_time=args.gpu_time)
        (out / f".overhead-{args.part}.json").write_text(json.dumps(doc))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    doc = {"command": " ".join(["python3", "benchmarks/overhead.py", *(argv or sys.argv[1:])]),
           "environment": environment(args.dry_run)}
    for mode in args.modes:
        part_file = out / f".overhead-{mode}.json"
        part_file.unlink(missing_ok=True)
        cmd = [sys.executable, __file__, "--out", str(out), "--part", mode, "--repeats", str(repeats)]
        cmd += (["--dry-run"] if args.dry_run else []) + ["--arms", *args.arms] + (["--one-graph"] if args.one_graph else [])
        cmd += (["--no-graph-copy"] if args.no_graph_copy else []) + (["--gpu-time"] if args.gpu_time else [])
        try:
            proc = subprocess.run(cmd, timeout=args.timeout, capture_output=True, text=True)
            err = None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["exit"])[-1]
            (out / f"overhead-{mode}.log").write_text(proc.stdout + proc.stderr)
        except subprocess.TimeoutExpired:
            err = f"timed out after {args.timeout} s"
        doc[mode] = json.loads(part_file.read_text()) if part_file.exists() and err is None else {"error": err}
        part_file.unlink(missing_ok=True)
        print(f"{mode}: " + (f"{doc[mode]['overhead_pct']:+.2f}% {fmt_ci(doc[mode]['ci95'])}" if err is None else err),
              flush=True)
    doc["summary"] = {m: {"overhead_pct": doc[m].get("overhead_pct"), "ci95": doc[m].get("ci95")} for m in args.modes}
    (out / "overhead.json").write_text(json.dumps(doc, indent=1))
    (out / "overhead.md").write_text(markdown(doc, (__doc__ or "").split("Method. ", 1)[1].strip(), PROFILER_ARMS))
    return 0 if all("arms" in doc[m] for m in args.modes) else 1


if __name__ == "__main__":
    sys.exit(main())
