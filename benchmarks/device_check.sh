#!/usr/bin/env bash
# Every family's evaluation and training benchmark at full size on an NVIDIA GPU, in < 8 minutes.
#
#   bash benchmarks/device_check.sh            # from the repository root
#
# 1. Python: .venv/bin/python if there is one, else python3 (a GPU image's own JAX). Packages that
#    Python lacks (grain, ml_collections) are installed from .whl/ when it exists: on a machine
#    with no network, fetch them elsewhere with `bash benchmarks/device_wheels.sh` and bring .whl.
# 2. Installs the CUDA wheels into .venv (`jax[cuda12]==0.10.2`) unless JAX already sees a GPU,
#    and checks that JAX sees one (stops with a clear message otherwise).
# 3. Runs benchmarks/bench_{diffpose,icassp,d3dp,finepose,mmdiff}.py (evaluation pipelines) and
#    benchmarks/bench_train.py --family F for all six families (one train step as train.py runs
#    it), each under its own time limit, printing timings as it goes. Each benchmark rewrites its
#    own section of docs/benchmarks.md (benchmarks/common.py); nothing else is written.
#
# Step and call counts are cut so the whole check fits 8 minutes on one H100 (install ~1 min;
# each benchmark compiles once per dtype, 10-40 s, then times a few calls; ~6-7 minutes in all,
# estimated, not yet run). The limits add up to more than BUDGET_S: a benchmark that hits its
# limit, or finds the budget spent, is reported and the check goes on; exit status 1 if any did.
# Environment: PYTHON, BUDGET_S (default 470), SKIP_INSTALL=1; where OUT names a folder, the log
# and docs/benchmarks.md are copied there too.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
BUDGET_S="${BUDGET_S:-470}"
START=$(date +%s)
FAILED=()

say() { printf '[device_check %4ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }

if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
  exec > >(tee "$OUT/device_check.log") 2>&1
fi
if ! command -v "$PYTHON" >/dev/null; then
  echo "device_check: $PYTHON not found; create the venv first (README: Set-up) or set PYTHON" >&2
  exit 1
fi

IMPORTS="import jax, flax, optax, orbax.checkpoint, grain, ml_collections"
has_packages() { "$PYTHON" -c "$IMPORTS" 2>/dev/null; }
if ! has_packages && [ -d .whl ]; then
  say "installing the wheels in .whl/ into /tmp/posediff_site: $(ls .whl | tr '\n' ' ')"
  "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-index --no-deps \
    --no-compile --no-cache-dir --upgrade --target /tmp/posediff_site .whl/*.whl
  export PYTHONPATH="/tmp/posediff_site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! has_packages; then
  "$PYTHON" -c "$IMPORTS" || true
  echo "device_check: $PYTHON lacks a package named above; pip install -r requirements.txt," \
       "or on a machine without network bring the wheels of benchmarks/device_wheels.sh in .whl/" >&2
  exit 1
fi

gpu_visible() {
  "$PYTHON" - <<'EOF' 2>/dev/null
import jax
devices = jax.devices()
print(devices)
raise SystemExit(0 if devices and devices[0].platform == "gpu" else 1)
EOF
}

if [ "${SKIP_INSTALL:-0}" != "1" ] && ! gpu_visible >/dev/null; then
  say "installing jax[cuda12]==0.10.2 into $(dirname "$(dirname "$PYTHON")")"
  if ! "$PYTHON" -m pip install --quiet --disable-pip-version-check -U "jax[cuda12]==0.10.2"; then
    echo "device_check: pip could not install jax[cuda12]==0.10.2 (no network or no wheel for" \
         "this platform?); install the CUDA wheels by hand and rerun with SKIP_INSTALL=1" >&2
    exit 1
  fi
fi

say "devices: $(gpu_visible || true)"
if ! gpu_visible >/dev/null; then
  echo "device_check: JAX sees no GPU (jax.devices() above); check nvidia-smi, the driver and" \
       "that jax[cuda12] is installed in $PYTHON's environment" >&2
  exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

# run LIMIT_S NAME ARGS...: one benchmark under `timeout`, skipped when the budget is spent.
run() {
  local limit="$1" name="$2"
  shift 2
  local left=$(( BUDGET_S - ($(date +%s) - START) ))
  if (( left < 20 )); then
    say "SKIPPED $name: the ${BUDGET_S}s budget is spent"
    FAILED+=("$name (skipped)")
    return 0
  fi
  (( limit > left )) && limit=$left
  say "running $name (limit ${limit}s): $*"
  local t0=$(date +%s)
  if timeout --signal=TERM --kill-after=10 "$limit" "$PYTHON" "$@"; then
    say "done $name in $(( $(date +%s) - t0 ))s"
  else
    local rc=$?
    if (( rc == 124 || rc == 137 )); then
      say "TIMED OUT $name after ${limit}s"
    else
      say "FAILED $name (exit $rc)"
    fi
    FAILED+=("$name")
  fi
}

# Evaluation pipelines at the paper settings (float32 and bfloat16 interleaved, few calls; the
# FinePOSE/DSGDiffu sampler, 160 rows x 10 steps, in bfloat16 only, to stay in the budget).
run 45 "eval diffpose" benchmarks/bench_diffpose.py --batch 1024 --repeats 10
run 45 "eval icassp" benchmarks/bench_icassp.py --batch 1024 --repeats 5
run 75 "eval d3dp" benchmarks/bench_d3dp.py --clips 4 --repeats 2
run 60 "eval mmdiff" benchmarks/bench_mmdiff.py --batch 256 --repeats 5 --phase1-repeats 1
run 100 "eval finepose+dsgdiffu" benchmarks/bench_finepose.py --clips 4 --hypotheses 20 \
  --repeats 1 --dtypes bfloat16
# One training step as train.py runs it, at the paper's batch, in bfloat16 (a fresh process
# compiles it: ~20-40 s for the MixSTE families), then 3 timed steps.
for family in diffpose icassp mmdiff d3dp finepose dsgdiffu; do
  run 50 "train $family" benchmarks/bench_train.py --family "$family" --steps 3 --warmup 1 \
    --dtypes bfloat16
done

say "finished; figures in docs/benchmarks.md"
if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
  cp docs/benchmarks.md "$OUT/benchmarks.md"
fi
if (( ${#FAILED[@]} )); then
  say "not finished: ${FAILED[*]}"
  exit 1
fi
