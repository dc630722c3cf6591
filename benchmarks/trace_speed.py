"""Time `abprof analyze` end to end on a large synthetic torch-format trace against a plain `json.load`.

    python benchmarks/trace_speed.py [--steps 1000] [--kernels-per-step 100] [--repeats 3] [--keep DIR]
        [--report reports/trace-speed.md]

The trace is written the way Kineto writes it (one event per few indented lines, relative ``ts`` with
three decimals, ``baseTimeNanoseconds``) and mixes the rows of a real decode trace: abprof.* step
annotations, python_function stacks, cpu_op, cuda_runtime launches with ac2g flow pairs, kernels with
Kineto's full args, memcpys, a cudaStreamSynchronize per step and metadata rows. Each measurement runs
in its own child process; peak memory is that child's ru_maxrss (os.wait4). Besides abprof and json.load
it times orjson, msgspec (typed, abprof's fields) and simdjson parsing the same file, and HTA where it is
installed; the table goes to reports/trace-speed.md (+ .json).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
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


PARSERS = {
    # each parses the whole file in a child process of its own (interpreter start included)
    "json.load": "import json, sys; json.load(open(sys.argv[1], 'rb'))",
    "orjson.loads": "import orjson, sys; orjson.loads(open(sys.argv[1], 'rb').read())",
    "msgspec typed (abprof's fields)": (
        "import sys; from typing import Optional, Union; import msgspec\n"
        "class A(msgspec.Struct, gc=False):\n correlation: int = -1\n bytes: float = 0.0\n"
        "class E(msgspec.Struct, gc=False):\n ph: Optional[str] = None\n cat: Optional[str] = None\n"
        " name: Optional[str] = None\n pid: Union[int, str, None] = None\n tid: Union[int, str, None] = None\n"
        " ts: float = 0.0\n dur: float = 0.0\n args: Optional[A] = None\n"
        "class D(msgspec.Struct):\n traceEvents: list[E]\n"
        "msgspec.json.Decoder(D).decode(open(sys.argv[1], 'rb').read())"),
    "simdjson (pysimdjson), ph of every event": (
        "import sys, simdjson; d = simdjson.Parser().parse(open(sys.argv[1], 'rb').read())\n"
        "sum(1 for e in d['traceEvents'] if e['ph'] == 'X')"),
}
NEEDS = {"orjson.loads": "orjson", "msgspec typed (abprof's fields)": "msgspec",
         "simdjson (pysimdjson), ph of every event": "simdjson"}
HTA = ("import sys, tempfile; from hta.trace_analysis import TraceAnalysis\n"
       "TraceAnalysis(trace_files={0: sys.argv[1]}, trace_dir=tempfile.mkdtemp()).get_temporal_breakdown(visualize=False)")


def _child(cmd: list[str]) -> dict:
    """Run a child; its wall s, CPU s (user + system) and peak RSS bytes (ru_maxrss via os.wait4)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed:\n{err[-2000:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_bytes": usage.ru_maxrss * 1024}


def _installed(module: str) -> str | None:
    """The module's version where importable here, else None."""
    try:
        return importlib.metadata.version({"simdjson": "pysimdjson", "hta": "HolisticTraceAnalysis"}.get(module, module))
    except importlib.metadata.PackageNotFoundError:
        return None


def _machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "platform": platform.platform(), "load_average_start": list(os.getloadavg()),
            "versions": {m: _installed(m) for m in ("msgspec", "orjson", "simdjson", "numpy", "pandas", "hta")}}


def measure(trace: Path, out: Path, repeats: int) -> dict:
    """Every command on the same file, interleaved ``repeats`` times; medians of wall and CPU, max RSS."""
    py = sys.executable
    commands = {"abprof analyze (end to end)": [py, "-m", "asyncbatch_prof", "analyze", str(trace), "--out", str(out)],
                "abprof start-up only (analyze of a missing file)": [py, "-m", "asyncbatch_prof", "analyze",
                                                                      str(out / "missing.json")],
                "abprof load_trace only": [py, "-c", "import sys; from asyncbatch_prof.analysis.loader import "
                                                     "load_trace; load_trace(sys.argv[1])", str(trace)]}
    skipped = {}
    for label, code in PARSERS.items():
        if label in NEEDS and _installed(NEEDS[label]) is None:
            skipped[label] = f"{NEEDS[label]} not installed"
        else:
            commands[label] = [py, "-c", code, str(trace)]
    if _installed("hta"):
        commands["HTA temporal breakdown"] = [py, "-c", HTA, str(trace)]
    else:
        skipped["HTA temporal breakdown"] = "HolisticTraceAnalysis not installed here"
    runs: dict[str, list[dict]] = {k: [] for k in commands}
    for _ in range(repeats):
        for label, cmd in commands.items():
            if label.startswith("abprof start-up"):
                runs[label].append(_child_failing(cmd))
            else:
                runs[label].append(_child(cmd))
    rows = {label: {"wall_s": statistics.median(r["wall_s"] for r in rs), "cpu_s": statistics.median(r["cpu_s"] for r in rs),
                    "peak_rss_bytes": max(r["peak_rss_bytes"] for r in rs), "wall_s_all": [r["wall_s"] for r in rs]}
            for label, rs in runs.items()}
    return {"rows": rows, "skipped": skipped}


def _child_failing(cmd: list[str]) -> dict:
    """As _child for a command that must exit 2 (the start-up probe)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 2:
        raise SystemExit(f"{' '.join(cmd[:4])} ... exited {os.waitstatus_to_exitcode(status)}, expected 2")
    return {"wall_s": time.perf_counter() - start, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_bytes": usage.ru_maxrss * 1024}


def render(result: dict) -> str:
    """The markdown table of a measure() result, with the trace and the machine."""
    t, m, rows = result["trace"], result["machine"], result["rows"]
    base = rows["json.load"]
    lines = [
        "# Trace analysis speed: `abprof analyze` against `json.load` on the same file",
        "",
        f"Written by `python benchmarks/trace_speed.py` ({result['date']}). Trace: {t['bytes'] / 1e6:.1f} MB, "
        f"{t['events']:,} events ({t['steps']} steps × {t['kernels_per_step']} kernels, Kineto's layout). "
        f"Each command runs in a child process of its own (interpreter start and imports included), "
        f"{result['repeats']} times interleaved: median wall and CPU (user + system) time, largest peak RSS "
        f"(`ru_maxrss`).",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, load average "
        f"{m['load_average_start'][0]:.1f} at the start and {m['load_average_end'][0]:.1f} at the end "
        "(other jobs share the machine: CPU time is the steadier measure).",
        "",
        "| command | wall s | CPU s | peak RSS MB | RSS / file | wall / json.load | CPU / json.load |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in rows.items():
        lines.append(f"| {label} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['peak_rss_bytes'] / 1e6:.0f} | "
                     f"{r['peak_rss_bytes'] / t['bytes']:.2f} | {r['wall_s'] / base['wall_s']:.2f} | "
                     f"{r['cpu_s'] / base['cpu_s']:.2f} |")
    for label, why in result["skipped"].items():
        lines.append(f"| {label} | — | — | — | — | — | — ({why}) |")
    a = rows["abprof analyze (end to end)"]
    lines += ["", f"Goals (issue 19): abprof at most 0.5× json.load's time: wall {a['wall_s'] / base['wall_s']:.2f}×, "
                  f"CPU {a['cpu_s'] / base['cpu_s']:.2f}×; peak RSS at most 2× the file: "
                  f"{a['peak_rss_bytes'] / t['bytes']:.2f}×.", "",
              "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--kernels-per-step", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, default=None, help="write the trace here instead of a temp dir")
    parser.add_argument("--report", type=Path, default=Path("reports/trace-speed.md"),
                        help="markdown table to write (a .json of the same name beside it)")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="abprof-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    trace = folder / "big_trace.json"
    events = write_trace(trace, args.steps, args.kernels_per_step)
    size = trace.stat().st_size
    print(f"trace: {size / 1e6:.1f} MB, {events:,} events ({args.steps} steps × {args.kernels_per_step} kernels)")
    machine = _machine()
    result = {"date": time.strftime("%Y-%m-%d"), "repeats": args.repeats, "machine": machine,
              "trace": {"bytes": size, "events": events, "steps": args.steps, "kernels_per_step": args.kernels_per_step}}
    result.update(measure(trace, folder, args.repeats))
    machine["load_average_end"] = list(os.getloadavg())
    text = render(result)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text)
    args.report.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
