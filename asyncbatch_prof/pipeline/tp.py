"""One ``abprof run --tp N`` run into a run folder: N ranks (one process and one GPU each), each recorded by
its own profiler and NVML sampler, then every rank's trace parsed once into a rank set.

The folder: ``traces/rank{r}.json.gz`` per rank, ``run.json`` with ``"tp": N``, the per-rank engine
descriptions and the token digest, ``metrics.json`` (rank 0's serving and trace metrics with the merged
rank-set metrics), ``ranks/rank{r}.metrics.json``, ``ranks.html`` (the rank-set page) and rank 0's
``report.html``. ``--tp 1`` goes through the same launcher, so it can be checked against a plain run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from asyncbatch_prof import __version__
from asyncbatch_prof import runfolder as rf
from asyncbatch_prof.analysis.run_metrics import build_metrics_doc
from asyncbatch_prof.capture.nvml import nvml_csv, nvml_metrics
from asyncbatch_prof.errors import AbprofError
from asyncbatch_prof.pipeline.plan import RunSpec
from asyncbatch_prof.pipeline.rankset import RANK_DOCS, write_rank_set, write_ranks_unmerged
from asyncbatch_prof.pipeline.outcome import RunOutcome, check_rejected, jsonable, now_iso
from asyncbatch_prof.report.run_view import view_from_memory

LAUNCH_LATENCY_US = 30.0  # the analysis' default threshold (as ``abprof analyze``)


def run_tp_capture(spec: RunSpec, run_dir: Path, run_doc: dict, on_step: Callable[[int], None] | None,
                   phase: Callable[[str], None]) -> RunOutcome:
    """Run ``spec`` on ``spec.tp`` ranks into ``run_dir`` (already prepared by ``run_one``)."""
    from asyncbatch_prof.engines import make_requests, tokens_digest
    from asyncbatch_prof.engines.reference_tp import RankCapture, TRACES_DIR, model_vocab_size, run_ranks

    tp, s = spec.tp, spec.settings
    phase(f"starting {tp} rank processes (engine build, warm-up)")
    requests = make_requests(spec.workload, model_vocab_size(spec.engine_config["model"]))
    (run_dir / TRACES_DIR).mkdir(exist_ok=True)
    capture = RankCapture(str(run_dir), s.window, requests, s.warmup_runs, s.with_stack, s.nvml)
    ranks = run_ranks(spec.mode, spec.engine_config, requests, capture, tp, s.engine_warmup_steps, on_step)
    result = ranks[0].result
    check_rejected(result.records)
    missing = [r.rank for r in ranks if not r.hook_result["trace_written"]]
    if missing:
        raise AbprofError(f"no trace from rank {missing[0]}: the workload ended after {result.num_steps} engine "
                          f"steps, before the profiled window ({spec.window.describe()}); choose an earlier "
                          "--profile-steps window or more requests", exit_code=1)
    rank0 = ranks[0].hook_result
    run_doc["notes"] += list(ranks[0].notes)
    run_doc.update(
        tp=tp, model=ranks[0].describe, environment=rank0["environment"],
        profiled_steps=spec.window.profiled_steps(result.num_steps), num_steps=result.num_steps,
        profiler=rank0["profiler"], generate_start_epoch_ns=result.start_epoch_ns, wall_s=round(result.wall_s, 6),
        tokens_sha256=tokens_digest(result.records),
        ranks=[{"rank": r.rank, "describe": r.describe, "notes": r.notes, "trace": f"{TRACES_DIR}/rank{r.rank}.json.gz",
                "profiler": r.hook_result["profiler"], "num_steps": r.result.num_steps} for r in ranks])
    nvml, samples = _nvml(ranks, result.output_tokens, run_doc)
    phase("analyzing")
    return _finish(spec, run_dir, run_doc, result, nvml, samples)


def _nvml(ranks: list, output_tokens: int, run_doc: dict) -> tuple[tuple[dict, dict, dict], list]:
    """Rank 0's NVML metrics, with ``joules_per_token`` over every rank's GPU (the energy the tokens cost)."""
    from asyncbatch_prof.engines.reference_tp import detached_sampler

    per_rank = []
    for r in ranks:
        sampler = detached_sampler(r.hook_result["sampler"], r.hook_result["sampler_error"])
        start, end = sampler.marks["generate_start"]["epoch_us"], sampler.marks["generate_end"]["epoch_us"]
        per_rank.append((sampler, nvml_metrics(sampler, start, end, output_tokens)))
    run_doc["nvml"] = per_rank[0][0].status()
    for r, (sampler, _) in zip(ranks, per_rank):
        run_doc["ranks"][r.rank]["nvml"] = sampler.status()
    metrics, absent, section = per_rank[0][1]
    metrics, absent = dict(metrics), dict(absent)
    if len(ranks) > 1 and "joules_per_token" in metrics:
        energy = [m[2].get("energy_j") for _, m in per_rank]
        if all(e is not None for e in energy):
            metrics["joules_per_token"] = round(sum(energy) / output_tokens, 6)
            section = {**section, "energy_j_per_rank": energy}
        else:
            del metrics["joules_per_token"]
            absent["joules_per_token"] = "the energy counter was not read on every rank's GPU"
    return (metrics, absent, section), per_rank[0][0].snapshot()


def _analyze_ranks(run_dir: Path, tp: int, run_doc: dict):
    """Parse every rank's trace once: → rank 0's TraceAnalysis, each rank's doc, and the merged RankSet
    (None, with the reason, when a rank's trace holds no GPU activity, e.g. on the CPU)."""
    from asyncbatch_prof.analysis.loader import load_trace
    from asyncbatch_prof.analysis.ranks import RankSetSource, parts_of
    from asyncbatch_prof.analysis.rankset import merge
    from asyncbatch_prof.analysis.result import TraceAnalysis
    from asyncbatch_prof.engines.reference_tp import rank_trace_name

    files = [run_dir / rank_trace_name(r) for r in range(tp)]
    analyses, parts = [], []
    for path in files:
        ev = load_trace(path)
        ta = TraceAnalysis(path, ev, LAUNCH_LATENCY_US, tool_version=__version__)
        analyses.append(ta)
        if ta.device is not None:
            parts += parts_of(ta, ev, [ta.device])
    if len(parts) < tp:
        idle = next(r for r, ta in enumerate(analyses) if ta.device is None)
        return analyses, None, f"rank {idle}'s trace holds no GPU activity: no rank-set metrics to merge"
    rs = merge(RankSetSource("tp run", run_dir, files, run_doc), parts, by_device=False, jobs=1)
    rs.doc["tool"]["version"] = __version__
    return analyses, rs, None


def _finish(spec: RunSpec, run_dir: Path, run_doc: dict, result, nvml: tuple, samples: list) -> RunOutcome:
    analyses, rs, reason = _analyze_ranks(run_dir, spec.tp, run_doc)
    base = jsonable(build_metrics_doc(analyses[0].doc, result, nvml, run_doc, None))
    requests_text, nvml_text = rf.requests_csv(result.records), nvml_csv(samples)
    rf.atomic_write_text(run_dir / rf.REQUESTS_CSV, requests_text)
    rf.atomic_write_text(run_dir / rf.NVML_CSV, nvml_text)
    if rs is not None:
        write_rank_set(rs, run_dir, base)
    else:
        write_ranks_unmerged({r: jsonable(ta.doc) for r, ta in enumerate(analyses)}, run_dir, base, reason)
    doc = rf.read_json(run_dir / rf.METRICS_JSON)
    run_doc.update(status="complete", reason=None, finished_at=now_iso(),
                   rank_metrics=[f"{RANK_DOCS}/rank{r}.metrics.json" for r in range(spec.tp)],
                   rank_report="ranks.html" if rs is not None else None)
    view = view_from_memory(run_dir, jsonable(run_doc), doc, analyses[0], requests_text, nvml_text)
    from asyncbatch_prof.report.plain import write_run_report

    run_doc["report"] = write_run_report(view)
    run_doc = jsonable(run_doc)
    view.run = run_doc
    rf.mark_complete(run_dir, run_doc)
    return RunOutcome(run_dir, doc, run_doc, view)
