"""Speed of the Triton paged-attention kernels on a CUDA GPU (llama-1b attention shape by default).

    python benchmarks/attention_speed.py [--out DIR] [--sweep]

Measures, each after a correctness check against the float64 reference:

- the device-to-device copy bandwidth (bytes read + written over the median time), the ceiling;
- decode attention (CUDA-graph replay of one attention call per layer over ``--layers`` separate
  caches, so that the caches do not sit in L2), per layer, with the K/V bytes it must read and the
  achieved bandwidth against the copy bandwidth; dense SDPA over contiguous K/V for comparison;
- with ``--sweep``, the decode kernel's knobs (splits, key tile, warps, stages);
- ``store_kv`` for a decode batch and a prefill chunk;
- prefill chunks and a mixed prefill+decode step through the varlen kernel.

Writes ``attention_speed.json`` and ``attention-speed.md`` to ``--out`` (default ``$OUT`` or
``benchmarks/out``) and prints the tables last.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if "--dry-run" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "kernels"))
    import _interp  # noqa: E402

    _interp.patch_interpreter()
import triton  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from reference_engine import triton_attention as ta  # noqa: E402
from reference_engine.attention import AttentionMetadata, paged_attention_reference  # noqa: E402

H, KVH, D = 32, 8, 64  # llama-1b (Llama 3.2 1B): 32 query heads, 8 KV heads, head_dim 64
DTYPE = torch.bfloat16
BS = 16
# --dry-run: tiny sizes on the CPU under Triton's interpreter, to check this script without a GPU
DRY = "--dry-run" in sys.argv
DEV = "cpu" if DRY else "cuda"


def env_info() -> dict:
    if DRY:
        return {"gpu": "dry run (CPU, interpreter)", "sms": 0, "driver": "-", "cuda": "-", "torch": torch.__version__,
                "triton": triton.__version__, "python": platform.python_version(), "command": " ".join(sys.argv)}
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
    except Exception as exc:  # pragma: no cover
        driver = f"unknown ({exc})"
    props = torch.cuda.get_device_properties(0)
    return {"gpu": torch.cuda.get_device_name(0), "sms": props.multi_processor_count,
            "driver": driver, "cuda": torch.version.cuda, "torch": torch.__version__,
            "triton": triton.__version__, "python": platform.python_version(),
            "command": " ".join([Path(sys.executable).name] + sys.argv)}


def bench(fn, warmup=50, rep=300) -> float:
    """Median milliseconds (events, L2 flushed between calls by do_bench)."""
    if DRY:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    return do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def copy_bandwidth() -> dict:
    n = 1 << (20 if DRY else 30)  # 1 GiB
    src = torch.randn(n // 4, device=DEV)
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    return {"bytes": 2 * n, "ms": ms, "tb_s": 2 * n / ms / 1e9}


def paged_case(batch, ctx_lens, q_lens, *, layers, seed):
    """Shuffled block tables over a pool; random K/V per layer; packed q."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    nblocks = [-(-c // BS) for c in ctx_lens]
    total = sum(nblocks) + 64
    width = max(nblocks)
    perm = torch.randperm(total, device=DEV, generator=g).to(torch.int32)
    tables = torch.zeros(batch, width, dtype=torch.int32, device=DEV)
    cur = 0
    for i, nb in enumerate(nblocks):
        tables[i, :nb] = perm[cur:cur + nb]
        cur += nb
    caches = [(torch.randn(total, BS, KVH, D, device=DEV, generator=g, dtype=DTYPE),
               torch.randn(total, BS, KVH, D, device=DEV, generator=g, dtype=DTYPE)) for _ in range(layers)]
    qsl = [0]
    for n in q_lens:
        qsl.append(qsl[-1] + n)
    q = torch.randn(qsl[-1], H, D, device=DEV, generator=g, dtype=DTYPE)
    meta = AttentionMetadata(
        slot_mapping=torch.full((qsl[-1],), -1, dtype=torch.int64, device=DEV),
        query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=DEV),
        context_lens=torch.tensor(ctx_lens, dtype=torch.int32, device=DEV),
        block_tables=tables, max_query_len=max(q_lens), max_context_len=max(ctx_lens),
        query_start_loc_host=qsl, context_lens_host=list(ctx_lens))
    return q, caches, meta


def rel_err(out, ref) -> float:
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return float("nan")
    return ((out - ref).norm() / ref.norm()).item()


def check(q, kc, vc, meta, scale, ref=None) -> float:
    out = ta.paged_attention(q, kc, vc, meta, scale)
    if ref is None:
        ref = paged_attention_reference(q.double(), kc.double(), vc.double(), meta, scale)
    return rel_err(out, ref)


def graph_time(fn_layers, n_layers, rep=300) -> float:
    """Capture ``fn_layers`` (one call per layer) in a CUDA graph; median ms per layer of its replay."""
    fn_layers()
    if DRY:
        return bench(fn_layers) / n_layers
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn_layers()
    return bench(graph.replay, rep=rep) / n_layers


def decode_bench(batch, ctx, layers, sweep, copy_tb_s, results):
    scale = 1 / math.sqrt(D)
    q, caches, meta = paged_case(batch, [ctx] * batch, [1] * batch, layers=layers, seed=batch)
    kv_bytes = batch * ctx * KVH * D * 2 * 2
    other_bytes = 2 * q.numel() * 2 + meta.block_tables.numel() * 4
    ref = paged_attention_reference(q.double(), caches[0][0].double(), caches[0][1].double(), meta, scale)
    err = check(q, *caches[0], meta, scale, ref)

    def run_layers():
        for kc, vc in caches:
            ta.paged_attention(q, kc, vc, meta, scale)

    def record(name, cfg, ms, err_):
        row = {"batch": batch, "ctx": ctx, "variant": name, **cfg, "us_per_layer": ms * 1e3,
               "kv_bytes": kv_bytes, "tb_s": (kv_bytes + other_bytes) / ms / 1e9,
               "frac_of_copy": (kv_bytes + other_bytes) / ms / 1e9 / copy_tb_s, "rel_err": err_}
        results["decode"].append(row)
        print(f"  decode B={batch} ctx={ctx} {name:28s} {ms * 1e3:8.1f} us/layer  "
              f"{row['tb_s']:.2f} TB/s ({row['frac_of_copy']:.2f} of copy)  err {err_:.1e}", flush=True)
        return row

    default_splits = ta._num_splits(batch, KVH, meta.block_tables.shape[1] * BS, q.device)
    for rep in range(2):  # the same version twice: the spread is the noise floor
        ms = graph_time(run_layers, layers)
        record(f"default#{rep} (splits={default_splits})", {"splits": default_splits}, ms, err)
    if sweep:
        best = None
        for splits in (1, 2, 4, 8):
            for block_n, warps in ((32, 2), (32, 4), (64, 4), (64, 8), (128, 4), (128, 8)):
                for stages in (2, 3):
                    if True:
                        cfg = {"num_splits": splits, "block_n": block_n, "num_warps": warps, "num_stages": stages}
                        ta.decode_config.update(cfg)
                        try:
                            e = check(q, *caches[0], meta, scale, ref)
                            ms = graph_time(run_layers, layers, rep=100)
                        except Exception as exc:  # a config that fails to compile: note it, go on
                            print(f"  {cfg}: {type(exc).__name__}: {str(exc)[:200]}")
                            continue
                        finally:
                            ta.decode_config.update({k: None for k in cfg})
                        row = record(f"s{splits} n{block_n} w{warps} st{stages}", cfg, ms, e)
                        if e < 1e-2 and (best is None or row["us_per_layer"] < best["us_per_layer"]):
                            best = row
        if best is not None:
            print(f"  best B={batch}: {best['variant']} {best['us_per_layer']:.1f} us/layer "
                  f"({best['frac_of_copy']:.2f} of copy)")
            results["decode_best"].append(best)

    # dense SDPA over contiguous K/V (no paging) for comparison: [B, H, 1, D] x [B, KVH, ctx, D]
    dense = [(torch.randn(batch, KVH, ctx, D, device=DEV, dtype=DTYPE),
              torch.randn(batch, KVH, ctx, D, device=DEV, dtype=DTYPE)) for _ in range(layers)]
    qd = q.view(batch, 1, H, D).transpose(1, 2)

    def sdpa_layers():
        for kd, vd in dense:
            F.scaled_dot_product_attention(qd, kd, vd, scale=scale, enable_gqa=True)

    try:
        ms = graph_time(sdpa_layers, layers)
        results["decode"].append({"batch": batch, "ctx": ctx, "variant": "torch SDPA, dense K/V",
                                  "us_per_layer": ms * 1e3, "kv_bytes": kv_bytes, "tb_s": (kv_bytes + other_bytes) / ms / 1e9,
                                  "frac_of_copy": (kv_bytes + other_bytes) / ms / 1e9 / copy_tb_s})
        print(f"  decode B={batch} ctx={ctx} torch SDPA dense K/V       {ms * 1e3:8.1f} us/layer", flush=True)
    except Exception as exc:
        print(f"  SDPA dense: {type(exc).__name__}: {str(exc)[:200]}")
    del dense, caches
    torch.cuda.empty_cache()


def store_kv_bench(results):
    for tokens in ((8,) if DRY else (256, 2048)):
        num_blocks = 16 if DRY else 4096
        kc = torch.randn(num_blocks, BS, KVH, D, device=DEV, dtype=DTYPE)
        vc = torch.randn_like(kc)
        k = torch.randn(tokens, KVH, D, device=DEV, dtype=DTYPE)
        v = torch.randn_like(k)
        slots = torch.randperm(num_blocks * BS, device=DEV)[:tokens]
        ms = bench(lambda: ta.store_kv(k, v, kc, vc, slots))
        results["store_kv"].append({"tokens": tokens, "us": ms * 1e3})
        print(f"  store_kv {tokens:5d} tokens  {ms * 1e3:7.1f} us", flush=True)


def prefill_bench(results, sweep):
    scale = 1 / math.sqrt(D)
    cases = [
        ("1 x 512 chunk, no prefix", [512], [512]),
        ("1 x 512 chunk over 1536 prefix", [2048], [512]),
        ("4 x 512 chunks over 0-1536 prefix", [512, 1024, 1536, 2048], [512] * 4),
        ("2 x 1024 fresh prefills", [1024, 1024], [1024, 1024]),
        ("mixed: 255 decodes @704 + 512 chunk over 512", [704] * 255 + [1024], [1] * 255 + [512]),
    ]
    if DRY:
        cases = [("dry: 2 x 16 fresh", [16, 16], [16, 16]), ("dry: mixed", [40, 30, 20], [1, 10, 1])]
    for name, ctx, nq in cases:
        q, caches, meta = paged_case(len(ctx), ctx, nq, layers=1, seed=len(ctx))
        kc, vc = caches[0]
        err = check(q, kc, vc, meta, scale)
        ms = bench(lambda: ta.paged_attention(q, kc, vc, meta, scale))
        if sweep:
            for block_m in (16, 32, 64, 128):
                for block_n in (32, 64, 128):
                    for warps in (4, 8):
                        for stages in (2, 3):
                            if block_m == 16 and warps == 8:
                                continue
                            cfg = {"block_m": block_m, "block_n": block_n, "num_warps": warps, "num_stages": stages}
                            ta.varlen_config.update(cfg)
                            try:
                                e = check(q, kc, vc, meta, scale)
                                t = bench(lambda: ta.paged_attention(q, kc, vc, meta, scale), warmup=20, rep=60)
                            except Exception as exc:
                                print(f"  {cfg}: {type(exc).__name__}: {str(exc)[:200]}")
                                continue
                            finally:
                                ta.varlen_config.update({k: None for k in cfg})
                            results["prefill_sweep"].append({"case": name, **cfg, "ms": t, "rel_err": e})
            rows = sorted((r for r in results["prefill_sweep"] if r["case"] == name and r["rel_err"] < 1e-2),
                          key=lambda r: r["ms"])
            for r in rows[:3]:
                print(f"    sweep {name}: m{r['block_m']} n{r['block_n']} w{r['num_warps']} st{r['num_stages']} "
                      f"{r['ms'] * 1e3:.1f} us")
        # causal FLOPs: 2 matmuls x 2 FLOP x D per (query head, visible key)
        visible = sum(sum(c - n + j + 1 for j in range(n)) for c, n in zip(ctx, nq))
        flops = 4 * D * H * visible
        row = {"case": name, "tokens": sum(nq), "ms": ms, "tflops": flops / ms / 1e9, "rel_err": err}
        line = f"  prefill {name:45s} {ms * 1e3:8.1f} us  {row['tflops']:6.1f} TFLOP/s  err {err:.1e}"
        if all(c == n for c, n in zip(ctx, nq)) and len(set(nq)) == 1:  # dense flash SDPA, same shape
            b, n = len(nq), nq[0]
            qd = torch.randn(b, H, n, D, device=DEV, dtype=DTYPE)
            kd = torch.randn(b, KVH, n, D, device=DEV, dtype=DTYPE)
            vd = torch.randn_like(kd)
            sd = bench(lambda: F.scaled_dot_product_attention(qd, kd, vd, is_causal=True, scale=scale,
                                                              enable_gqa=True))
            row["sdpa_dense_ms"] = sd
            line += f"   (SDPA dense causal: {sd * 1e3:.1f} us)"
        results["prefill"].append(row)
        print(line, flush=True)
        del caches
        torch.cuda.empty_cache()


def write_markdown(results, path: Path) -> str:
    e = results["env"]
    lines = ["# Triton paged attention speed", "",
             f"GPU: {e['gpu']} ({e['sms']} SMs), driver {e['driver']}, CUDA {e['cuda']}, torch {e['torch']}, "
             f"triton {e['triton']}, Python {e['python']}.", f"Command: `{e['command']}`", "",
             f"Shape: {H} query heads, {KVH} KV heads, head_dim {D}, bf16, block size {BS}; shuffled block tables.",
             "Times are medians of `triton.testing.do_bench` (L2 flushed between calls); decode is the replay "
             "of a CUDA graph with one attention call per layer over separate caches, divided by the layers.", "",
             f"Device copy bandwidth (1 GiB, read + write): **{results['copy']['tb_s']:.2f} TB/s**", "",
             "## Decode attention, per layer", "",
             "| batch | ctx | variant | µs / layer | K/V MB | TB/s | of copy BW | rel err vs fp64 |",
             "|---|---|---|---|---|---|---|---|"]
    rows = [r for r in results["decode"] if not r["variant"].startswith("s")] + results["decode_best"]
    for r in rows:
        label = r["variant"] + (" (best of sweep)" if r in results["decode_best"] else "")
        err = f"{r['rel_err']:.1e}" if "rel_err" in r else ""
        lines.append(f"| {r['batch']} | {r['ctx']} | {label} | {r['us_per_layer']:.1f} | "
                     f"{r.get('kv_bytes', 0) / 1e6:.1f} | {r['tb_s']:.2f} | {r['frac_of_copy']:.2f} | {err} |")
    sweep = [r for r in results["decode"] if r["variant"].startswith("s")]
    if sweep:
        lines += ["", "Decode sweep, the five fastest per batch (splits s, key tile n, warps w, stages st):", ""]
        for b in sorted({r["batch"] for r in sweep}, reverse=True):
            top = sorted((r for r in sweep if r["batch"] == b), key=lambda r: r["us_per_layer"])[:5]
            lines.append(f"- {b} x {top[0]['ctx']}: " + ", ".join(
                f"{r['variant']} {r['us_per_layer']:.1f} µs ({r['frac_of_copy']:.2f})" for r in top))
    lines += ["", "## store_kv", "", "| tokens | µs |", "|---|---|"]
    lines += [f"| {r['tokens']} | {r['us']:.1f} |" for r in results["store_kv"]]
    lines += ["", "## Prefill / mixed steps (varlen kernel), one layer", "",
              "| case | query tokens | µs | TFLOP/s (causal) | dense SDPA µs | rel err |", "|---|---|---|---|---|---|"]
    for r in results["prefill"]:
        sd = f"{r['sdpa_dense_ms'] * 1e3:.1f}" if "sdpa_dense_ms" in r else ""
        lines.append(f"| {r['case']} | {r['tokens']} | {r['ms'] * 1e3:.1f} | {r['tflops']:.1f} | {sd} | "
                     f"{r['rel_err']:.1e} |")
    if results["prefill_sweep"]:
        lines += ["", "Varlen sweep, the three fastest per case (rows m = tokens x heads, key tile n, warps w, stages st):", ""]
        for r0 in results["prefill"]:
            top = sorted((r for r in results["prefill_sweep"] if r["case"] == r0["case"]), key=lambda r: r["ms"])[:3]
            lines.append(f"- {r0['case']}: " + ", ".join(
                f"m{r['block_m']} n{r['block_n']} w{r['num_warps']} st{r['num_stages']} {r['ms'] * 1e3:.1f} µs"
                for r in top))
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/out")
    ap.add_argument("--sweep", action="store_true", help="sweep the decode kernel's knobs")
    ap.add_argument("--sweep-prefill", action="store_true", help="sweep the varlen kernel's knobs")
    ap.add_argument("--layers", type=int, default=4, help="separate caches per decode graph (defeats L2)")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, Triton's interpreter")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    assert DRY or (torch.cuda.is_available() and ta.available()), "needs CUDA and Triton"
    torch.backends.cuda.matmul.allow_tf32 = False
    results = {"env": env_info(), "decode": [], "decode_best": [], "store_kv": [], "prefill": [], "prefill_sweep": []}
    print(results["env"], flush=True)
    t0 = time.time()
    results["copy"] = copy_bandwidth()
    print(f"copy bandwidth: {results['copy']['tb_s']:.2f} TB/s", flush=True)
    for batch in ((3, 2) if DRY else (256, 64)):
        decode_bench(batch, 40 if DRY else 704, args.layers, args.sweep, results["copy"]["tb_s"], results)
    store_kv_bench(results)
    prefill_bench(results, args.sweep_prefill)
    results["wall_s"] = time.time() - t0
    (out / "attention_speed.json").write_text(json.dumps(results, indent=1))
    print(write_markdown(results, out / "attention-speed.md"))


if __name__ == "__main__":
    main()
