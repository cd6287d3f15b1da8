#!/usr/bin/env bash
# make bench: outpost-serve against raw ONNX Runtime on the tiny model and on
# mobilenet_v2 / resnet50 exported from Debian's torchvision (random weights).
# Writes bench/RESULTS.md. Models are cached in BUILD/bench-models, so a rerun
# skips the export (~1-2 min). Knobs: see bench/bench.py (BENCH_MODELS,
# BENCH_CONCURRENCY, BENCH_SECONDS, BENCH_WARMUP, BENCH_EXTRA).
#
# usage: scripts/bench.sh [BUILD]     (default BUILD=build)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${1:-build}"
[[ "$BUILD" = /* ]] || BUILD="$PWD/$BUILD"
if [[ ! -f "$BUILD/build.ninja" ]]; then
  echo "bench: $BUILD is not a configured build dir (run: make build, or cmake -S . -B $BUILD -G Ninja)" >&2
  exit 1
fi
PY=/usr/bin/python3  # Debian's python: torch, torchvision and onnx live there

cmake --build "$BUILD" --target outpost-serve loadgen grpc_loadgen raw_ort bare_load tcp_floor

MODELS="$BUILD/bench-models"
if [[ ! -f "$MODELS/tiny/1/model.onnx" || ! -f "$MODELS/mobilenet_v2/1/model.onnx" ||
      ! -f "$MODELS/resnet50/1/model.onnx" || ! -f "$MODELS/floor_224/1/model.onnx" ]]; then
  echo "bench: generating models into $MODELS (torchvision export, 1-2 minutes)"
  "$PY" "$ROOT/scripts/gen_models.py" --out "$MODELS" --torchvision mobilenet_v2 resnet50
fi

exec "$PY" "$ROOT/bench/bench.py" --build "$BUILD" --models "$MODELS" \
  --out "$ROOT/bench/RESULTS.md" --command "scripts/bench.sh ${1:-build}"
