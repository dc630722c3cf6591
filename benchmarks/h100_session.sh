#!/usr/bin/env bash
# One device call: install abprof on the GPU machine (torch 2.11 there; plotly/orjson carried as wheels in
# .whl/), then run the given steps, and pack everything they wrote into $OUT/results.tgz (the device tool
# brings back at most 8 files).  Usage (through the device tool, carry [".whl"]):
#   bash benchmarks/h100_session.sh tests both headline-standard ...
set -uo pipefail
export PYTHONUNBUFFERED=1
W=${W:-/tmp/abprof-h100}
mkdir -p "$W"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-deps -e . >/dev/null 2>&1 || { echo "project install failed"; exit 1; }
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c 'import torch, transformers, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__, "triton", triton.__version__)'
  git rev-parse HEAD 2>/dev/null; date -u; } > "$W/environment.txt" 2>&1
cat "$W/environment.txt"

step() { local name=$1; shift; local t0=$SECONDS
  echo "=== $name: $*"; "$@" > "$W/$name.log" 2>&1; local rc=$?
  echo "=== $name: exit $rc in $((SECONDS - t0)) s"; tail -n 25 "$W/$name.log"; }

for s in "$@"; do case $s in
  tests) step tests python3 -m pytest -q -m cuda tests/engine tests/test_split_prefill_decode.py -x ;;
  kernels) step kernels python3 -m pytest -q -m cuda tests/kernels -x ;;
  both) step both abprof run --out "$W/both" ;;
  headline-reference) step headline-reference python3 benchmarks/headline.py --out "$W/headline" --engines reference --only standard small-batch large-batch ;;
  headline-transformers) step headline-transformers python3 benchmarks/headline.py --out "$W/headline" --engines transformers --only standard --timeout 240 ;;
  split) step split abprof run --mode async --out "$W/split-async" --split-prefill-decode ;;
  engine-speed) step engine-speed python3 benchmarks/engine_speed.py --out "$W/engine-speed" ;;
  *) echo "unknown step $s" ;;
esac; done
tar czf "$OUT/results.tgz" -C "$W" . && ls -la "$OUT"
