#!/usr/bin/env bash
# Device session driver (the H200's, and the H100's through h100_session.sh): install abprof on the GPU
# machine (torch 2.11 there; plotly/orjson/msgspec carried as wheels in .whl/), run the given steps in the
# background, and bring back what they wrote.
#
# A device command may run 10 minutes, so the steps run in a detached process session and the command
# waits for them (up to N seconds) and packs what exists:
#   bash benchmarks/h200_session.sh start 540 overhead tests
# A later command may find a fresh machine (the previous one idled out or reached its 30 minutes): give
# each command steps that fit in it; `collect N` only helps while the same machine is still held.
# Every collect writes one .tgz per step folder under $OUT (the device tool brings back at most 8 files,
# 16 MiB each) plus session.log; a folder's tarball is complete once session.log says the step ended.
set -uo pipefail
export PYTHONUNBUFFERED=1
# never NVLink multicast (it can take a shared host's GPUs down): harmless on one GPU, required on several
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
W=${W:-/tmp/abprof-h200}
mkdir -p "$W"

install() {
  [ -n "${SKIP_WHEELS:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  # the device cannot download: build with the setuptools already installed there
  python3 -m pip install -q --no-deps --no-build-isolation -e . > "$W/install.log" 2>&1 \
    || { cat "$W/install.log"; echo "project install failed"; exit 1; }
}
export PYTHONPATH=/tmp/site

step() { local name=$1; shift; local t0=$SECONDS
  echo "=== $name: $* ($(date -u +%T))"; mkdir -p "$W/$name"; "$@" > "$W/$name/$name.log" 2>&1; local rc=$?
  echo "=== $name: exit $rc in $((SECONDS - t0)) s"; tail -n 30 "$W/$name/$name.log"; }

run_steps() {
  { nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit --format=csv,noheader
    python3 -c 'import sys, torch, transformers, triton; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__, "triton", triton.__version__)'
    git rev-parse HEAD 2>/dev/null; date -u; } > "$W/environment.txt" 2>&1
  cat "$W/environment.txt"
  for s in "$@"; do case $s in
    tests) step tests python3 -m pytest -q -m cuda tests/engine tests/kernels -x -p no:cacheprovider ;;
    kernels) step kernels python3 -m pytest -q -m cuda tests/kernels -x ;;
    kernels-fused) step kernels-fused python3 -m pytest -q -m cuda tests/kernels/test_triton_ops.py ;;
    both) step both bash -c "abprof run --out $W/both/run && abprof gate $W/both/run/async --no-config \
        --max gpu_idle_pct=100 && ls -la $W/both/run/async" ;;
    headline-reference) step headline-reference python3 benchmarks/headline.py --out "$W/headline-reference" \
        --engines reference --only standard small-batch large-batch ;;
    headline-split) step headline-split python3 benchmarks/headline.py --out "$W/headline-split" --engines reference \
        --only standard --modes async-mixed async-split ;;
    headline-transformers) step headline-transformers python3 benchmarks/headline.py --out "$W/headline-transformers" \
        --engines transformers --only standard --timeout 280 ;;
    headline-transformers-variants) step headline-transformers-variants python3 benchmarks/headline.py \
        --out "$W/headline-transformers-variants" --engines transformers --only small-batch large-batch --timeout 280 ;;
    engine-speed) step engine-speed python3 benchmarks/engine_speed.py --out "$W/engine-speed" --budget-s 440 ;;
    overhead) step overhead python3 benchmarks/overhead.py --out "$W/overhead" --repeats "${REPEATS:-4}" ;;
    overhead-sync) step overhead-sync python3 benchmarks/overhead.py --out "$W/overhead-sync" --repeats "${REPEATS:-8}" \
        --modes sync --arms default ;;
    overhead-async) step overhead-async python3 benchmarks/overhead.py --out "$W/overhead-async" \
        --repeats "${REPEATS_ASYNC:-8}" --modes async --arms default ;;
    overhead-default) step overhead-default python3 benchmarks/overhead.py --out "$W/overhead-default" \
        --repeats "${REPEATS:-8}" --arms default ;;
    overhead-gpu-time) step overhead-gpu-time python3 benchmarks/overhead.py --out "$W/overhead-gpu-time" \
        --repeats "${REPEATS:-6}" --arms default --gpu-time ;;
    overhead-plain-copy) step overhead-plain-copy python3 benchmarks/overhead.py --out "$W/overhead-plain-copy" \
        --repeats "${REPEATS:-8}" --arms default --modes ${MODES:-sync} --no-graph-copy ;;
    overhead-one-graph) step overhead-one-graph python3 benchmarks/overhead.py --out "$W/overhead-one-graph" \
        --repeats "${REPEATS:-4}" --one-graph --arms default ;;
    transformers-small) step transformers-small bash -c "abprof run --engine transformers --mode sync --requests 64 \
        --output-len fixed:64 --out $W/transformers-small/sync && abprof run --engine transformers --mode async \
        --requests 64 --output-len fixed:64 --out $W/transformers-small/async" ;;
    explain-reference) step explain-reference python3 benchmarks/headline.py --out "$W/explain-reference/reference" \
        --engines reference --only standard --modes sync async async-mixed async-split --timeout 140 ;;
    headline) step headline bash -c "python3 benchmarks/headline.py --out $W/headline --engines reference \
        --modes sync async --overhead-engines --timeout 200 -- --repeats 3; find $W/headline -path '*/r[0-9]*/trace.json.gz' -delete" ;;
    headline-standard) step headline-standard bash -c "python3 benchmarks/headline.py --out $W/headline-standard \
        --engines reference --only standard --modes sync async --timeout 200 -- --repeats 3; \
        find $W/headline-standard -path '*/r[0-9]*/trace.json.gz' -delete" ;;
    tp1) step tp1 bash -c "abprof run --tp 1 --mode both --out $W/tp1/tp1 && abprof run --mode both --out $W/tp1/plain \
        && abprof compare $W/tp1/plain/sync $W/tp1/tp1/sync --out $W/tp1/sync.html \
        && abprof compare $W/tp1/plain/async $W/tp1/tp1/async --out $W/tp1/async.html" ;;
    lingering) step lingering python3 benchmarks/cupti_lingering.py --out "$W/lingering" --repeats "${REPEATS:-3}" \
        --variants ${VARIANTS:-pieces one-graph} ;;
    engine-cuda) step engine-cuda python3 -m pytest -q -m cuda tests/engine/test_engine_cuda.py tests/engine/test_engine_split.py -p no:cacheprovider ;;
    graph-cupti) step graph-cupti python3 benchmarks/graph_cupti.py --out "$W/graph-cupti" ;;
    rank-scaling) step rank-scaling python3 benchmarks/rank_set_scaling.py --ranks 8 ;;
    *) echo "unknown step $s" ;;
  esac; done
  touch "$W/DONE"
}

collect() { local limit=$1 t0=$SECONDS
  [ -e "$W/session.log" ] || { echo "no session on this machine (a fresh one): nothing to collect"; return; }
  while [ ! -e "$W/DONE" ] && [ $((SECONDS - t0)) -lt "$limit" ]; do sleep 5; done
  [ -e "$W/DONE" ] && echo "all steps ended" || echo "steps still running after ${limit} s"
  cp "$W/session.log" "$OUT/session.log" 2>/dev/null; cat "$W/session.log"
  shopt -s nullglob  # a fresh machine has no step folders: no literal "*" tarball
  # HTML reports (5 MB each, plotly.js inside) are left out: `abprof report RUN` rebuilds them from the run
  # folder; a tarball over 15 MiB comes back in parts (cat NAME.tgz.part-* | tar xz)
  for d in "$W"/*/; do local n; n=$(basename "$d")
    tar czf "$W/$n.tgz" --exclude='*.html' -C "$W" "$n"
    if [ "$(stat -c %s "$W/$n.tgz")" -gt 15728640 ]; then split -b 15M "$W/$n.tgz" "$OUT/$n.tgz.part-"
    else cp "$W/$n.tgz" "$OUT/"; fi; rm -f "$W/$n.tgz"; done
  cp "$W/environment.txt" "$OUT/" 2>/dev/null; ls -la "$OUT"; }

case ${1:-} in
  start) limit=$2; shift 2; install; rm -f "$W/DONE"; : > "$W/session.log"  # before collect looks for it
    setsid nohup bash "$0" _steps "$@" > "$W/session.log" 2>&1 < /dev/null &
    collect "$limit" ;;
  _steps) shift; run_steps "$@" ;;
  collect) collect "$2" ;;
  *) echo "usage: $0 start SECONDS STEP... | collect SECONDS"; exit 2 ;;
esac
