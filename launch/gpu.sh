#!/usr/bin/env bash
# Train smtc_jax on all GPUs of this host (one process; the mesh spans every GPU).
#
# Needs (environment): WORKDIR (a folder, or gs://BUCKET/run: logs are copied
#   into the bucket too), DATA_PATH (YouTube-VOS frames),
#   INIT_CHECKPOINT (the DINO encoder as an Orbax params checkpoint).
# Optional: CONFIG (configs/gpu.py), PYTHON (python3), CUDA_VISIBLE_DEVICES.
# Usage: launch/gpu.sh [--dry-run] [-- --config.train.microbatch=32 ...]

set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=launch/common.sh
source "$ROOT/launch/common.sh"
parse_args "$@"
require WORKDIR DATA_PATH INIT_CHECKPOINT

CONFIG="${CONFIG:-configs/gpu.py}"
PYTHON="${PYTHON:-python3}"
cd "$ROOT"
run "$PYTHON" -m pip install -q -e . 'jax[cuda12]'
run "$PYTHON" -m smtc_jax.main --config "$CONFIG" --workdir "$WORKDIR" \
  --config.data.path="$DATA_PATH" --config.init.checkpoint="$INIT_CHECKPOINT" \
  "${EXTRA_ARGS[@]}"
