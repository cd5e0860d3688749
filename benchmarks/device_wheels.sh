#!/usr/bin/env bash
# Downloads, on a machine that reaches PyPI, the wheels that a lent GPU machine's image lacks
# (it has JAX with CUDA, flax, optax and orbax, but not grain or ml_collections, and it cannot
# reach the network), into .whl/ for benchmarks/device_check.sh to install from there.
#
#   bash benchmarks/device_wheels.sh     # from the repository root; then carry .whl to the GPU
#
# Versions come from constraints.txt; the wheels are for CPython 3.12 on x86-64 Linux (the GPU
# image's Python), whatever this machine runs. .whl/ is git-ignored.
set -euo pipefail
cd "$(dirname "$0")/.."

PY_VERSION="${PY_VERSION:-3.12}"
# What the image lacks: grain with its compiled array_record and portpicker, and ml_collections.
NAMES=(grain array_record portpicker ml_collections)
PYTHON="${PYTHON:-python3}"

pins=()
for name in "${NAMES[@]}"; do
  pin=$(grep -i "^${name}==" constraints.txt || true)
  if [ -z "$pin" ]; then
    echo "device_wheels: constraints.txt has no pin for $name" >&2
    exit 1
  fi
  pins+=("$pin")
done

mkdir -p .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version "$PY_VERSION" --implementation cp "${platforms[@]}" -d .whl "${pins[@]}"
ls -l .whl
