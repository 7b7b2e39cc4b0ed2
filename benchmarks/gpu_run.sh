#!/usr/bin/env bash
# On the GPU machine (the device tool), in the repo root: install the carried wheels (benchmarks/gpu_prep.sh),
# then run or resume a gpu_suite plan until its budget, and copy what came out to $OUT (<= 8 files):
#   PLAN=ladder-3 BUDGET_S=535 bash benchmarks/gpu_run.sh      # timeout_s 595; call again until "all steps done"
# Results live in .devdata/gpu-out and the runs in .devdata/gpu-runs, which a warm machine keeps between calls
# ($OUT is emptied before each call, so it cannot hold the suite's record of what is done). The first call
# assembles .devdata/cifar10.npz from the carried chunks and checks its SHA-256 (gpu_suite.assemble_data).
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT (the device tool sets it)}"
if [ "${WHEELS:-1}" = 1 ] && [ ! -d /tmp/site/pydantic ]; then  # WHEELS=0: a smoke check where all is installed
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
fi
export PYTHONPATH="/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
plan=${PLAN:-ladder-3}
out=.devdata/gpu-out
mkdir -p "$out"
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1; git log -1 --format=%h 2>&1; } \
    | tee -a "$out/run.log"
# shellcheck disable=SC2086  # SUITE_ARGS: extra words, e.g. "--tiny" for a smoke check on a CPU
python3 benchmarks/gpu_suite.py run --plan "$plan" --out "$out" --work .devdata/gpu-runs \
    --device "${DEVICE:-cuda}" --budget-s "${BUDGET_S:-535}" ${SUITE_ARGS:-} 2>&1 | tee -a "$out/run.log"
rc=${PIPESTATUS[0]}
# shellcheck disable=SC2086
python3 benchmarks/gpu_suite.py table --plan "$plan" --out "$out" ${SUITE_ARGS:-} >/dev/null 2>&1
for f in steps.jsonl table.md table.json rung1-decision.json run.log; do
    [ -f "$out/$f" ] && cp "$out/$f" "$OUT/"
done
# every step's JSON and each run's learning curve (metrics.csv), in one file
(cd .devdata && tar czf "$OUT/gpu-out.tar.gz" gpu-out $(ls -d gpu-runs/*/metrics.csv 2>/dev/null))
exit "$rc"
