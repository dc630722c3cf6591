"""Time `abprof analyze` end to end on a large synthetic torch-format trace against a plain `json.load`.

    python benchmarks/trace_speed.py [--steps 1000] [--kernels-per-step 100] [--keep DIR]

The trace is written the way Kineto writes it (one event per few indented lines, relative ``ts`` with
three decimals, ``baseTimeNanoseconds``) and mixes the rows of a real decode trace: abprof.* step
annotations, python_function stacks, cpu_op, cuda_runtime launches with ac2g flow pairs, kernels with
Kineto's full args, memcpys, a cudaStreamSynchronize per step and metadata rows. Each measurement runs
in its own child process; peak memory is that child's ru_maxrss (os.wait4).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KERNEL_NAMES = [
    "void at::native::vectorized_elementwise_kernel<8, at::native::FillFunctor<c10::BFloat16>, "
    "std::array<char*, 1ul> >(int, at::native::FillFunctor<c10::BFloat16>, std::array<char*, 1ul>)",
    "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_kernel",
    "void flash::flash_fwd_splitkv_kernel<Flash_fwd_kernel_traits<128, 64, 128, 4, false, false, cutlass::bfloat16_t>>",
    "triton_poi_fused_add_mul_rsqrt_0",
]


def _x(cat: str, name: str, pid: int, tid: int, ts: float, dur: float, args: str) -> str:
    return (f'  {{\n    "ph": "X", "cat": "{cat}", "name": "{name}", "pid": {pid}, "tid": {tid},\n'
            f'    "ts": {ts:.3f}, "dur": {dur:.3f},\n    "args": {{\n      {args}\n    }}\n  }}')


def _flow(ph: str, corr: int, pid: int, tid: int, ts: float) -> str:
    bp = ', "bp": "e"' if ph == "f" else ""
    return (f'  {{\n    "ph": "{ph}", "id": {corr}, "pid": {pid}, "tid": {tid}, "ts": {ts:.3f},\n'
            f'    "cat": "ac2g", "name": "ac2g"{bp}\n  }}')


def write_trace(path: Path, steps: int, kernels_per_step: int, seed: int = 0) -> int:
    """Write the synthetic trace; return the number of events."""
    rng = random.Random(seed)
    pid, tid = 4242, 4242
    t = 1_000_000.0  # relative µs
    gpu_t = t
    corr = 0
    n = 0
    with open(path, "w") as f:
        f.write('{\n  "schemaVersion": 1,\n  "deviceProperties": [{"id": 0, "name": "Synthetic H100", "numSms": 132}],\n'
                '  "baseTimeNanoseconds": 1790857026000000000,\n  "traceEvents": [\n')
        first = True

        def emit(text: str) -> None:
            nonlocal first, n
            f.write(text if first else ",\n" + text)
            first = False
            n += 1

        for step in range(steps):
            step_start = t
            emit(_x("user_annotation", "abprof.schedule", pid, tid, t, 150.0, '"External id": 1'))
            t += 160.0
            fwd_start = t
            for k in range(kernels_per_step):
                py_start = t
                emit(_x("python_function", f"torch/nn/modules/module.py(1750): _call_impl", pid, tid, t, 14.0,
                        f'"Python parent id": {k}, "Python id": {k + 1}, "Python thread": 0'))
                emit(_x("cpu_op", "aten::mm", pid, tid, t + 1.0, 11.0,
                        f'"External id": {corr}, "Record function id": 0, "Sequence number": {k}, "Ev Idx": {n}'))
                corr += 1
                launch_ts = t + 3.0
                emit(_x("cuda_runtime", "cudaLaunchKernel", pid, tid, launch_ts, 6.5,
                        f'"External id": {corr}, "cbid": 211, "correlation": {corr}'))
                emit(_flow("s", corr, pid, tid, launch_ts))
                gpu_t = max(gpu_t, launch_ts + 6.5 + rng.uniform(1, 4))
                dur = rng.choice((1.063, 2.5, 8.75, 30.125))
                cat, name = ("gpu_memcpy", "Memcpy HtoD (Pinned -> Device)") if k == 0 else ("kernel",
                                                                                          rng.choice(KERNEL_NAMES))
                emit(_x(cat, name, 0, 7, gpu_t, dur,
                        f'"External id": {corr}, "queued": 0, "device": 0, "context": 1, "stream": 7, '
                        f'"correlation": {corr}, "registers per thread": 32, "shared memory": 0, '
                        f'"blocks per SM": 0.969697, "warps per SM": 3.878788, "grid": [128, 1, 1], '
                        f'"block": [128, 1, 1], "est. achieved occupancy %": 6' + (', "bytes": 4096' if k == 0 else "")))
                emit(_flow("f", corr, 0, 7, gpu_t))
                gpu_t += dur
                t = py_start + 15.0
            emit(_x("user_annotation", "abprof.forward", pid, tid, fwd_start, t - fwd_start, '"External id": 2'))
            corr += 1
            emit(_x("cuda_runtime", "cudaStreamSynchronize", pid, tid, t, max(gpu_t - t, 0.0) + 5.0,
                    f'"cbid": 131, "correlation": {corr}'))
            t = max(t, gpu_t) + 6.0
            emit(_x("user_annotation", "abprof.update", pid, tid, t, 40.0, '"External id": 3'))
            t += 45.0
            emit(_x("user_annotation", "abprof.step", pid, tid, step_start, t - step_start, '"External id": 4'))
        for d in range(16):
            emit(f'  {{\n    "name": "process_labels", "ph": "M", "pid": {d}, "tid": 0,\n'
                 f'    "args": {{\n      "labels": "GPU {d}"\n    }}\n  }}')
        f.write('\n  ],\n  "traceName": "synthetic"\n}\n')
    return n


def _child(cmd: list[str]) -> tuple[float, int, str]:
    """Run a child; return (wall s, peak RSS bytes, stdout)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd} failed:\n{out}")
    return wall, usage.ru_maxrss * 1024, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--kernels-per-step", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--keep", type=Path, default=None, help="write the trace here instead of a temp dir")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="abprof-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    trace = folder / "big_trace.json"
    events = write_trace(trace, args.steps, args.kernels_per_step)
    size = trace.stat().st_size
    print(f"trace: {size / 1e6:.1f} MB, {events:,} events ({args.steps} steps × {args.kernels_per_step} kernels)")
    load = [sys.executable, "-c", "import json, sys, time; t = time.perf_counter(); json.load(open(sys.argv[1])); "
            "print(f'json.load {time.perf_counter() - t:.2f} s')", str(trace)]
    cli = [sys.executable, "-m", "asyncbatch_prof", "analyze", str(trace), "--out", str(folder)]
    rows = []
    for i in range(args.repeats):
        for label, cmd in (("json.load (child process)", load), ("abprof analyze (end to end)", cli)):
            wall, rss, out = _child(cmd)
            rows.append((label, wall, rss, out.strip().splitlines()[0] if label.startswith("json") else ""))
    print(f"{'command':30} {'wall s':>8} {'peak RSS MB':>12} {'RSS/file':>9}  note")
    for label, wall, rss, note in rows:
        print(f"{label:30} {wall:8.2f} {rss / 1e6:12.0f} {rss / size:9.2f}  {note}")


if __name__ == "__main__":
    main()
