"""Reference engine speed (issue 9): its own decode step against the HBM roofline, the standard workload
against transformers' continuous batching, and host vs GPU time per step.

    python3 benchmarks/engine_speed.py --out reports/h100     # GPU: writes engine-speed.{json,md}
    python3 benchmarks/engine_speed.py --dry-run --out /tmp/s  # CPU, tiny preset, seconds (CI smoke)

Each part runs in its own process (this file re-run with ``--part``), one after the other on the one GPU:
``decode`` (CUDA-graph replays of the engine's captured decode graphs, timed with CUDA events), then the
standard workload with the reference engine (sync, async) and transformers (sync, async). The reference
processes also run short decode workloads at 16, 64 and 256 sequences with the engine's phases timed from
outside (perf_counter around ``Scheduler.schedule/update`` and ``ModelRunner.prepare/launch``; CUDA events
from the start of the step's forward to the end of its sampling). Nothing in ``reference_engine`` is changed.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PRESETS = {
    "full": dict(model="llama-1b", decode=[(256, 704), (64, 704), (16, 704)], replays=200, copy_mib=1024,
                 requests=256, prompt="uniform:128:1024", output="fixed:256", max_seqs=256, max_batch_tokens=2048,
                 host_seqs=(16, 64, 256), host_prompt="fixed:576", host_output="fixed:192"),
    "dry": dict(model="tiny", decode=[(8, 48), (4, 48)], replays=5, copy_mib=16,
                requests=8, prompt="uniform:8:32", output="fixed:8", max_seqs=8, max_batch_tokens=64,
                host_seqs=(2, 4, 8), host_prompt="fixed:24", host_output="fixed:16"),
}
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # runs from a checkout whether or not the package is installed
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_datasheet  # noqa: E402  (beside this file)
RUNS = [("reference", "sync"), ("reference", "async"), ("transformers", "sync"), ("transformers", "async")]
TIMEOUT_S = {"decode": 150, "reference": 150, "transformers": 160}


def median(xs):
    return statistics.median(xs) if xs else None


# ---- part: decode step ------------------------------------------------------------------------
def copy_bandwidth(torch, device, mib: int, reps: int) -> dict:
    """Device-to-device copy of ``mib`` MiB: bytes read + written over the median time (events on CUDA)."""
    n = mib << 20
    src = torch.randn(n // 4, device=device)
    dst = torch.empty_like(src)
    times = time_calls(torch, device, lambda: dst.copy_(src), reps)
    ms = median(times)
    return {"bytes": 2 * n, "ms": ms, "tb_s": 2 * n / (ms * 1e-3) / 1e12}


def time_calls(torch, device, fn, reps: int, warmup: int = 10) -> list[float]:
    """Milliseconds of each of ``reps`` calls: CUDA events per call on CUDA, perf_counter on the CPU."""
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        out = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t) * 1e3)
        return out
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for a, b in events:
        a.record()
        fn()
        b.record()
    torch.cuda.synchronize()
    return [a.elapsed_time(b) for a, b in events]


def set_decode_inputs(torch, engine, batch: int, ctx: int, rows: int) -> None:
    """Fill the runner's static device inputs with ``batch`` decodes at ``ctx`` over shuffled blocks;
    rows ``batch..rows`` are pad rows as ``prepare`` makes them (no K/V write, empty context)."""
    runner, d = engine.runner, engine.runner.dev[0]
    bs, nb = runner.block_size, -(-ctx // runner.block_size)
    dev = engine.device
    blocks = torch.randperm(engine.num_blocks, device=dev)[:batch * nb].reshape(batch, nb).int()
    d["bt"][:batch, :nb] = blocks
    d["ids"][:rows] = torch.randint(1, engine.vocab_size, (rows,), device=dev)
    d["pos"][:rows] = ctx - 1
    d["pos"][batch:rows] = 0
    d["slot"][:batch] = blocks[:, (ctx - 1) // bs].long() * bs + (ctx - 1) % bs
    d["slot"][batch:rows] = -1
    d["ctx"][:batch] = ctx
    d["ctx"][batch:rows] = 0
    d["qsl"][:rows + 1] = torch.arange(rows + 1, dtype=torch.int32, device=dev)


def decode_part(cfg: dict, dry: bool) -> dict:
    """Median time of the engine's decode step at each (batch, ctx), and the bytes that step must read."""
    import torch

    from reference_engine import EngineConfig, LLMEngine
    from reference_engine.attention import AttentionMetadata
    from reference_engine.cuda_graphs import graph_size

    max_b = max(b for b, _ in cfg["decode"])
    blocks = max(b * -(-c // 16) for b, c in cfg["decode"]) + 16
    engine = LLMEngine(EngineConfig(model=cfg["model"], max_seqs=max_b, max_batch_tokens=cfg["max_batch_tokens"],
                                    num_blocks=blocks, seed=0))
    dev, model, runner = engine.device, engine.model, engine.runner
    engine.kv_cache.normal_()  # never time attention on zeros
    mc, attn = engine.model_config, model.layers[0].self_attn
    weight_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters()
                       if not n.startswith("embed_tokens"))
    if model.lm_head is None:  # tied: the LM head reads the embedding matrix
        weight_bytes += model.embed_tokens.weight.numel() * model.embed_tokens.weight.element_size()
    elem = engine.kv_cache.element_size()
    bw = copy_bandwidth(torch, dev, cfg["copy_mib"], 20 if not dry else 3)
    device_name = torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu"
    sheet = gpu_datasheet.lookup(device_name) if dev.type == "cuda" else None
    rows = []
    for batch, ctx in cfg["decode"]:
        padded = graph_size(runner.graph_sizes, batch) if runner.graphs else batch
        set_decode_inputs(torch, engine, batch, ctx, padded)
        d = runner.dev[0]
        meta = AttentionMetadata(d["slot"][:batch], d["qsl"][:batch + 1], d["ctx"][:batch], d["bt"][:batch], 1, ctx,
                                 list(range(batch + 1)), [ctx] * batch)
        with torch.inference_mode():
            eager = model.compute_logits(model(d["ids"][:batch], d["pos"][:batch], meta, engine.kv_cache))
            if runner.graphs:
                graph, logits = runner.graphs[padded]
                step = graph.replay
                graph.replay()
                graph_err = float((logits[:batch] - eager).norm() / eager.norm())
            else:  # CPU (dry run): the eager forward the engine runs there
                def step():
                    model.compute_logits(model(d["ids"][:batch], d["pos"][:batch], meta, engine.kv_cache))
                graph_err = None
            times = time_calls(torch, dev, step, cfg["replays"], warmup=20 if not dry else 1)
        kv_bytes = 2 * mc.num_hidden_layers * attn.num_kv_heads * attn.head_dim * ctx * batch * elem
        step_ms = median(times)
        roof = (weight_bytes + kv_bytes) / (bw["tb_s"] * 1e12) * 1e3
        rows.append({"batch": batch, "ctx": ctx, "graph_batch": padded if runner.graphs else None,
                     "cuda_graph": bool(runner.graphs), "step_ms": step_ms,
                     "step_ms_p10": sorted(times)[len(times) // 10], "step_ms_p90": sorted(times)[9 * len(times) // 10],
                     "replays": len(times), "weight_bytes": weight_bytes, "kv_bytes": kv_bytes,
                     "roofline_ms": roof, "fraction": roof / step_ms,
                     "roofline_datasheet_ms": (weight_bytes + kv_bytes) / (sheet.hbm_tb_s * 1e12) * 1e3 if sheet else None,
                     "graph_vs_eager_rel_err": graph_err, "logits_finite": bool(torch.isfinite(eager).all())})
    out = {"decode": rows, "bandwidth": {**bw, "datasheet_tb_s": sheet.hbm_tb_s if sheet else None,
                                         "datasheet_gpu": sheet.name if sheet else None},
           "engine": engine.describe(), "cuda": torch.version.cuda, "device_name": device_name}
    engine.close()
    return out


# ---- part: one engine and mode on the workload --------------------------------------------------
class StepTimer:
    """Per loop iteration: host seconds in schedule / prepare / launch / update (perf_counter wrappers installed
    from outside the engine), and CUDA events from the start of the step's forward to the end of its sampling."""

    def __init__(self, engine):
        import torch

        import reference_engine.model_runner as mr
        from reference_engine.scheduler import Scheduler

        self.torch, self.cuda = torch, engine.device.type == "cuda"
        self.rows, self.acc, self.last = [], self._fresh(), None
        self._undo = []
        self._wrap(Scheduler, "schedule", "schedule", keep_batch=True)
        self._wrap(Scheduler, "update", "update")
        self._wrap(engine.runner, "prepare", "prepare")
        self._wrap(engine.runner, "launch", "launch")
        if self.cuda:
            fwd, smp = engine.runner.forward, mr.sample

            def forward(plan, *parts):
                self.acc["ev0"] = self._event()
                return fwd(plan, *parts)

            def sample(*a, **k):
                out = smp(*a, **k)
                self.acc["ev1"] = self._event()
                return out
            engine.runner.forward = forward
            mr.sample = sample
            self._undo += [lambda: delattr(engine.runner, "forward"), lambda: setattr(mr, "sample", smp)]

    @staticmethod
    def _fresh() -> dict:
        return {"schedule": 0.0, "prepare": 0.0, "launch": 0.0, "update": 0.0, "seqs": 0, "decode_only": False}

    def _event(self):
        ev = self.torch.cuda.Event(enable_timing=True)
        ev.record()  # on the current stream: the runner's compute stream at both call sites
        return ev

    def _wrap(self, owner, name: str, phase: str, keep_batch: bool = False) -> None:
        orig = getattr(owner, name)

        def timed(*a, **k):
            t = time.perf_counter()
            out = orig(*a, **k)
            self.acc[phase] += time.perf_counter() - t
            if keep_batch and out is not None:
                self.acc["seqs"], self.acc["decode_only"] = len(out.seqs), out.decode_only
            return out
        setattr(owner, name, timed)
        self._undo.append(lambda: setattr(owner, name, orig) if isinstance(owner, type) else delattr(owner, name))

    def on_step(self, _i: int) -> None:
        now = time.perf_counter()
        self.acc["wall"] = None if self.last is None else now - self.last
        self.last = now
        self.rows.append(self.acc)
        self.acc = self._fresh()

    def summary(self, seqs: int) -> dict:
        """Medians (ms) over the decode-only steps that ran ``seqs`` sequences (the first 3 skipped)."""
        rows = [r for r in self.rows if r["decode_only"] and r["seqs"] == seqs][3:]
        out = {"running_seqs": seqs, "steps": len(rows)}
        for k in ("schedule", "prepare", "update", "launch", "wall"):
            out[f"{k}_ms"] = median([1e3 * r[k] for r in rows if r.get(k) is not None])
        out["host_ms"] = median([1e3 * (r["schedule"] + r["prepare"] + r["update"]) for r in rows])
        out["enqueue_ms"] = median([1e3 * (r["launch"] - r["prepare"]) for r in rows])
        gpu = [r["ev0"].elapsed_time(r["ev1"]) for r in rows if "ev0" in r and "ev1" in r]
        out["gpu_ms"] = median(gpu)
        return out

    def remove(self) -> None:
        for undo in reversed(self._undo):
            undo()


def reference_part(cfg: dict, mode: str, tokens_path: Path) -> dict:
    """Standard workload twice (the second reported), then the host/GPU split at each of ``host_seqs``."""
    from reference_engine import EngineConfig, LLMEngine, SamplingParams, WorkloadConfig, make_workload

    engine = LLMEngine(EngineConfig(model=cfg["model"], mode=mode, max_seqs=cfg["max_seqs"],
                                    max_batch_tokens=cfg["max_batch_tokens"], seed=0))
    engine.warmup()
    wl = WorkloadConfig(num_requests=cfg["requests"], prompt_len=cfg["prompt"], output_len=cfg["output"], seed=0)
    reqs = make_workload(wl, vocab_size=engine.vocab_size)
    greedy = SamplingParams(temperature=0.0)
    first = engine.generate(reqs, sampling=greedy)
    result = engine.generate(reqs, sampling=greedy)
    tokens = [r.output_token_ids for r in result.records]
    tokens_path.write_text(json.dumps(tokens))
    host = []
    for n in cfg["host_seqs"]:
        hreqs = make_workload(WorkloadConfig(num_requests=n, prompt_len=cfg["host_prompt"],
                                             output_len=cfg["host_output"], seed=1), vocab_size=engine.vocab_size)
        timer = StepTimer(engine)
        try:
            engine.generate(hreqs, sampling=greedy, on_step=timer.on_step)
        finally:
            timer.remove()
        host.append({"mode": mode, **timer.summary(n)})
    out = {"engine": engine.describe(), "workload": wl.to_dict(), "output_tok_s": result.tokens_per_s,
           "wall_s": result.wall_s, "output_tokens": result.output_tokens, "num_steps": result.num_steps,
           "first_pass_output_tok_s": first.tokens_per_s,
           "first_pass_tokens_identical": [r.output_token_ids for r in first.records] == tokens,
           "host_gpu": host, "notes": engine.notes}
    engine.close()
    return out


def transformers_part(cfg: dict, mode: str, tokens_path: Path) -> dict:
    """The standard workload once through transformers' continuous batching (manager warmed up outside the timing)."""
    import transformers

    from asyncbatch_prof.engines.transformers_cb import TransformersCBEngine
    from reference_engine import EngineConfig, WorkloadConfig, make_workload

    engine = TransformersCBEngine(EngineConfig(model=cfg["model"], mode=mode, max_seqs=cfg["max_seqs"],
                                               max_batch_tokens=cfg["max_batch_tokens"], seed=0))
    wl = WorkloadConfig(num_requests=cfg["requests"], prompt_len=cfg["prompt"], output_len=cfg["output"], seed=0)
    reqs = make_workload(wl, vocab_size=engine.vocab_size)
    try:
        result = engine.generate(reqs)
    finally:
        engine.close()
    tokens_path.write_text(json.dumps([r.output_token_ids for r in result.records]))
    return {"engine": f"transformers {transformers.__version__}", "workload": wl.to_dict(),
            "output_tok_s": result.tokens_per_s, "wall_s": result.wall_s, "output_tokens": result.output_tokens,
            "num_steps": result.num_steps,
            "rejected": sum(r.finish_reason == "rejected" for r in result.records)}


def run_part(args) -> None:
    cfg = PRESETS["dry" if args.dry_run else "full"]
    parts = Path(args.out) / "engine-speed-parts"
    parts.mkdir(parents=True, exist_ok=True)
    if args.part.startswith("decode"):  # decode-unfused: the same, run with REFERENCE_ENGINE_FUSED=0
        doc = decode_part(cfg, args.dry_run)
    else:
        engine, mode = args.part.split("-")
        fn = reference_part if engine == "reference" else transformers_part
        doc = fn(cfg, mode, parts / f"tokens-{args.part}.json")
    (parts / f"{args.part}.json").write_text(json.dumps(doc, indent=1))


# ---- orchestration -----------------------------------------------------------------------------
def spawn(args, part: str, out: Path, timeout: float) -> dict:
    """Run one part in its own process; its status, seconds and (when it finished) its JSON."""
    cmd = [sys.executable, __file__, "--part", part, "--out", str(out)] + (["--dry-run"] if args.dry_run else [])
    log = out / "engine-speed-parts" / f"{part}.log"
    status, rc, t = "ok", None, time.perf_counter()
    if timeout < 10:
        return {"status": "skipped", "reason": f"only {timeout:.0f} s of the --budget-s left", "seconds": 0.0}
    try:
        env = dict(os.environ, REFERENCE_ENGINE_FUSED="0") if part == "decode-unfused" else None
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        rc, text = proc.returncode, proc.stdout + proc.stderr
        status = "ok" if rc == 0 else "failed"
    except subprocess.TimeoutExpired as exc:
        status, text = "timeout", _text(exc.stdout) + _text(exc.stderr)
    log.write_text(text)
    res = {"status": status, "exit_code": rc, "seconds": round(time.perf_counter() - t, 1), "timeout_s": round(timeout)}
    if status == "ok":
        res["result"] = json.loads((out / "engine-speed-parts" / f"{part}.json").read_text())
    else:
        res["reason"] = (f"timed out after {timeout:.0f} s" if status == "timeout"
                         else "exit code %s: %s" % (rc, (text.strip().splitlines() or ["no output"])[-1][:300]))
    print(f"[engine_speed] {part}: {status} in {res['seconds']} s", flush=True)
    return res


def _text(b) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def environment(dry: bool) -> dict:
    """GPU name and driver from nvidia-smi; package versions from their metadata (this process imports no torch)."""
    env = {"python": sys.version.split()[0], "dry_run": dry,
           "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    for pkg in ("torch", "transformers", "triton"):
        try:
            env[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            env[pkg] = None
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        env["gpu"], env["driver"] = (s.strip() for s in q.split(",", 1))
    except (OSError, IndexError, ValueError, subprocess.SubprocessError):
        env["gpu"], env["driver"] = "none (nvidia-smi unavailable)", None
    return env


def tokens_of(out: Path, part: str):
    path = out / "engine-speed-parts" / f"tokens-{part}.json"
    return json.loads(path.read_text()) if path.exists() else None


def assemble(runs: dict, out: Path, env: dict, command: str) -> dict:
    """The report document: decode rows, workload throughput and tokens, host/GPU per step; absent metrics with reasons."""
    absent: dict[str, str] = {}
    doc = {"environment": env, "command": command, "runs": {k: {x: y for x, y in v.items() if x != "result"}
                                                            for k, v in runs.items()}}
    dec = runs["decode"].get("result")
    if dec:
        doc["decode"], doc["bandwidth"] = dec["decode"], dec["bandwidth"]
        doc["engine_decode"], env["cuda"], env["device_name"] = dec["engine"], dec["cuda"], dec["device_name"]
    else:
        absent["decode"] = runs["decode"]["reason"]
    unfused = runs.get("decode-unfused", {}).get("result")
    if unfused and dec:
        plain = {(r["batch"], r["ctx"]): r["step_ms"] for r in unfused["decode"]}
        for r in doc["decode"]:
            r["unfused_step_ms"] = plain.get((r["batch"], r["ctx"]))
    elif "decode-unfused" in runs:
        absent["decode[].unfused_step_ms"] = runs["decode-unfused"].get("reason", "the decode part failed")
    wl, host = {}, []
    for engine, mode in RUNS:
        name = f"{engine}-{mode}"
        res = runs[name].get("result")
        if res is None:
            absent[f"workload.{engine}_{mode}_tok_s"] = runs[name]["reason"]
            continue
        wl[f"{engine}_{mode}_tok_s"] = res["output_tok_s"]
        wl[f"{engine}_{mode}"] = {k: v for k, v in res.items() if k not in ("host_gpu", "engine")}
        host += res.get("host_gpu", [])
    tf = [wl[k] for k in ("transformers_sync_tok_s", "transformers_async_tok_s") if k in wl]
    if tf:
        wl["transformers_best_tok_s"] = max(tf)
        if "reference_async_tok_s" in wl:
            wl["reference_async_over_transformers_best"] = wl["reference_async_tok_s"] / max(tf)
    else:
        absent["workload.transformers_best_tok_s"] = "no transformers run finished"
    ref_s, ref_a = tokens_of(out, "reference-sync"), tokens_of(out, "reference-async")
    if ref_s is not None and ref_a is not None:
        wl["tokens_identical"] = ref_s == ref_a
        wl["identical_requests"] = sum(a == b for a, b in zip(ref_s, ref_a))
    else:
        absent["workload.tokens_identical"] = "a reference run did not finish"
    for mode in ("sync", "async"):
        tf_tokens = tokens_of(out, f"transformers-{mode}")
        if tf_tokens is not None and ref_s is not None:
            wl[f"transformers_{mode}_requests_identical_to_reference_sync"] = sum(
                a == b for a, b in zip(ref_s, tf_tokens))
    wl["requests"] = len(ref_s) if ref_s is not None else None
    doc["workload"], doc["host_gpu"], doc["absent"] = wl, host, absent
    cfg = PRESETS["dry" if env["dry_run"] else "full"]
    doc["host_gpu_workload"] = {"requests": list(cfg["host_seqs"]), "prompt_len": cfg["host_prompt"],
                                "output_len": cfg["host_output"], "seed": 1}
    return doc


def issue_checks(doc: dict) -> dict:
    """Issue 9's bars, each True/False from this run's numbers, or None where the number is absent."""
    checks = {}
    for batch in (256, 64):
        row = next((r for r in doc.get("decode", []) if r["batch"] == batch and r["ctx"] == 704), None)
        checks[f"decode_{batch}x704_at_least_half_roofline"] = None if row is None else row["fraction"] >= 0.5
    ratio = doc["workload"].get("reference_async_over_transformers_best")
    checks["reference_async_at_least_10x_transformers_best"] = None if ratio is None else ratio >= 10
    checks["tokens_identical_sync_async"] = doc["workload"].get("tokens_identical")
    return checks


def fmt(x, spec=".2f") -> str:
    return "-" if x is None else format(x, spec)


def markdown(doc: dict) -> str:
    env = doc["environment"]
    lines = ["# Reference engine speed (issue 9)", "",
             f"- GPU: {env.get('device_name', env['gpu'])}, driver {env['driver']}, CUDA {env.get('cuda', '-')}",
             f"- torch {env['torch']}, transformers {env['transformers']}, triton {env['triton']}, "
             f"Python {env['python']}; {env['date_utc']}" + (" — DRY RUN (CPU, tiny preset)" if env["dry_run"] else ""),
             f"- Command: `{doc['command']}`", ""]
    if "decode" in doc:
        bw = doc["bandwidth"]
        lines += ["## Decode step (the engine's captured CUDA graph, replayed; median of CUDA-event times)", "",
                  f"Roofline = (weights read per step + K/V bytes) / bandwidth measured in this run "
                  f"({bw['tb_s']:.2f} TB/s, {bw['bytes'] / 2**31:.3g} GiB device copy, read + write); "
                  + (f"datasheet ({bw['datasheet_gpu']}) {bw['datasheet_tb_s']} TB/s in the last column. "
                     if bw.get("datasheet_tb_s") else "no datasheet figure for this device. ") + "Weights exclude the embedding "
                  "(rows only); the fp32 logits write is not counted. The graph holds the forward and the LM "
                  "head; the step's input copies and greedy sampling run outside it and are not in these times "
                  "(the host/GPU table below times the whole device step).", "",
                  "| batch | ctx | step ms (p10-p90) | weights GB | K/V GB | roofline ms | fraction | "
                  "roofline ms @datasheet | graph vs eager rel err | step ms, plain-torch elementwise |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in doc["decode"]:
            lines.append(f"| {r['batch']} | {r['ctx']} | {r['step_ms']:.3f} ({r['step_ms_p10']:.3f}-"
                         f"{r['step_ms_p90']:.3f}) | {r['weight_bytes'] / 1e9:.3f} | {r['kv_bytes'] / 1e9:.3f} | "
                         f"{r['roofline_ms']:.3f} | {r['fraction']:.2f} | {fmt(r['roofline_datasheet_ms'], '.3f')} | "
                         f"{fmt(r['graph_vs_eager_rel_err'], '.1e')} | {fmt(r.get('unfused_step_ms'), '.3f')} |")
        lines += ["", "Last column: the same step with the per-layer elementwise work (RMSNorm, residual adds, "
                  "rotary embedding, SwiGLU activation) in plain torch instead of the fused Triton kernels "
                  "(`REFERENCE_ENGINE_FUSED=0`, its own process, same run).", ""]
    wl = doc["workload"]
    lines += ["## Standard workload, each engine and mode in its own process", "",
              "| engine | mode | status | output tok/s | wall s | steps | process s |", "|---|---|---|---|---|---|---|"]
    for engine, mode in RUNS:
        run, res = doc["runs"][f"{engine}-{mode}"], wl.get(f"{engine}_{mode}", {})
        lines.append(f"| {engine} | {mode} | {run['status']}{': ' + run['reason'] if 'reason' in run else ''} | "
                     f"{fmt(res.get('output_tok_s'), ',.0f')} | {fmt(res.get('wall_s'), '.2f')} | "
                     f"{res.get('num_steps', '-')} | {run['seconds']} |")
    lines += ["", f"- reference async / transformers' faster mode: "
              f"{fmt(wl.get('reference_async_over_transformers_best'), '.1f')}×",
              f"- tokens identical, reference sync vs async: {wl.get('tokens_identical', '-')} "
              f"({wl.get('identical_requests', '-')}/{wl.get('requests', '-')} requests)"]
    for mode in ("sync", "async"):
        key = f"transformers_{mode}_requests_identical_to_reference_sync"
        if key in wl:
            lines.append(f"- transformers {mode}: {wl[key]}/{wl['requests']} requests with the reference's tokens "
                         "(information: different kernels, bf16)")
    lines += ["", "## Host and GPU time per decode step (ms, medians over the decode-only steps)", "",
              "Host = schedule + prepare + update (perf_counter around the engine's methods, installed from outside); "
              "enqueue = launch minus prepare (copies, graph launch, sampling launched); GPU = CUDA events from the "
              "start of the step's forward to the end of its sampling on the compute stream; wall = between steps. "
              f"Workload per row: N requests, prompt {doc['host_gpu_workload']['prompt_len']}, output "
              f"{doc['host_gpu_workload']['output_len']}, greedy; steps with exactly N sequences, all decoding.", "",
              "| mode | running seqs | steps | host | schedule | prepare | update | enqueue | GPU | wall |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for h in doc["host_gpu"]:
        lines.append(f"| {h['mode']} | {h['running_seqs']} | {h['steps']} | " + " | ".join(
            fmt(h[k], ".3f") for k in ("host_ms", "schedule_ms", "prepare_ms", "update_ms", "enqueue_ms",
                                       "gpu_ms", "wall_ms")) + " |")
    lines += ["", "## Issue 9's bars (from the numbers above)", ""]
    lines += [f"- {k}: {'-' if v is None else ('yes' if v else 'NO')}" for k, v in doc.get("issue_checks", {}).items()]
    if doc["absent"]:
        lines += ["", "## Absent", ""] + [f"- `{k}`: {v}" for k, v in doc["absent"].items()]
    return "\n".join(lines) + "\n"


def orchestrate(args) -> None:
    from asyncbatch_prof.runfolder import atomic_write_json, atomic_write_text

    out = Path(args.out)
    (out / "engine-speed-parts").mkdir(parents=True, exist_ok=True)
    command = " ".join(["python3", "benchmarks/engine_speed.py"] + sys.argv[1:])
    deadline = time.perf_counter() + args.budget_s
    runs = {}
    for part in ["decode"] + [f"{e}-{m}" for e, m in RUNS] + ["decode-unfused"]:
        if part.startswith("transformers") and args.skip_transformers:
            runs[part] = {"status": "skipped", "reason": "--skip-transformers", "seconds": 0.0}
            continue
        limit = TIMEOUT_S[part.split("-")[0]]
        runs[part] = spawn(args, part, out, min(limit, deadline - time.perf_counter()))
    doc = assemble(runs, out, environment(args.dry_run), command)
    doc["issue_checks"] = issue_checks(doc)
    atomic_write_json(out / "engine-speed.json", doc)
    text = markdown(doc)
    atomic_write_text(out / "engine-speed.md", text)
    print(text)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for engine-speed.json / engine-speed.md")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny preset, small workload (seconds)")
    p.add_argument("--budget-s", type=float, default=400.0, help="wall-clock budget for all parts together (s)")
    p.add_argument("--skip-transformers", action="store_true")
    p.add_argument("--part", choices=["decode", "decode-unfused"] + [f"{e}-{m}" for e, m in RUNS], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.part:
        run_part(args)
    else:
        orchestrate(args)


if __name__ == "__main__":
    main()
