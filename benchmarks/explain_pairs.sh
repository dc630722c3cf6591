#!/usr/bin/env bash
# The three comparisons of issue 16, each with abprof's verdict (terminal), JSON and HTML in reports/h200/:
#   transformers sync vs async (64 requests), reference sync vs async, reference async mixed vs split
#   prefill/decode (same profiled steps 4:67). Run from the repository root on the GPU machine, one stage
#   per device command (each fits in 10 minutes):
#     bash benchmarks/explain_pairs.sh transformers   # 2 runs, ~5 min
#     bash benchmarks/explain_pairs.sh reference      # 4 runs
#     bash benchmarks/explain_pairs.sh compare        # verdicts, JSON and HTML (no GPU needed)
# RUNS (default /tmp/abprof-explain) must survive between stages: on a fresh machine rerun the runs.
set -euo pipefail
RUNS=${RUNS:-/tmp/abprof-explain}
REPORTS=${REPORTS:-reports/h200}
mkdir -p "$RUNS" "$REPORTS"

pair() {  # name baseline-run other-run
  local name=$1 a=$2 b=$3
  python3 -m asyncbatch_prof compare "$a" "$b" --out "$REPORTS/$name.html" --plotly-js cdn | tee "$REPORTS/$name.txt"
  python3 -m asyncbatch_prof compare "$a" "$b" --json --out "$REPORTS/$name.html" --plotly-js cdn > "$REPORTS/$name.json"
}

case ${1:-} in
  transformers)
    python3 benchmarks/headline.py --out "$RUNS/transformers" --engines transformers --only small-batch \
      --modes sync async --overhead-engines --timeout 280 ;;
  reference)
    python3 benchmarks/headline.py --out "$RUNS/reference" --engines reference --only standard \
      --modes sync async async-mixed async-split --overhead-engines --timeout 140 ;;
  compare)
    pair explain-transformers-sync-vs-async "$RUNS/transformers/runs/small-batch-transformers-sync" \
      "$RUNS/transformers/runs/small-batch-transformers-async"
    pair explain-reference-sync-vs-async "$RUNS/reference/runs/standard-reference-sync" \
      "$RUNS/reference/runs/standard-reference-async"
    pair explain-reference-mixed-vs-split "$RUNS/reference/runs/standard-reference-async-mixed" \
      "$RUNS/reference/runs/standard-reference-async-split" ;;
  *) echo "usage: bash benchmarks/explain_pairs.sh transformers|reference|compare" >&2; exit 2 ;;
esac
