#!/usr/bin/env bash
# Train smtc_jax on every worker of a Cloud TPU VM slice (creating it if needed).
#
# Needs (environment): PROJECT, ZONE, TPU_NAME, BUCKET (gs://your-bucket),
#   DATA_PATH (YouTube-VOS frames on every worker, or a mounted bucket),
#   INIT_CHECKPOINT (the DINO encoder as an Orbax params checkpoint).
# Optional: ACCELERATOR_TYPE (v4-32), RUNTIME_VERSION (tpu-ubuntu2204-base),
#   CONFIG (configs/tpu_v4.py), WORKDIR (BUCKET/smtc/TPU_NAME).
# Usage: launch/tpu_pod.sh [--dry-run] [-- --config.train.num_steps=7000 ...]
# Checkpoints go to the shared gs:// workdir (all workers write their shards),
# and so do the logs, metrics and TensorBoard events (each worker writes them on
# its own disk first and copies them in: tensorboard --logdir WORKDIR/tensorboard);
# the console of worker 0 streams to this terminal.

set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=launch/common.sh
source "$ROOT/launch/common.sh"
parse_args "$@"
require PROJECT ZONE TPU_NAME BUCKET DATA_PATH INIT_CHECKPOINT

ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-32}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
CONFIG="${CONFIG:-configs/tpu_v4.py}"
WORKDIR="${WORKDIR:-$BUCKET/smtc/$TPU_NAME}"
TPU=(gcloud compute tpus tpu-vm)
WHERE=(--zone "$ZONE" --project "$PROJECT")

if [[ $DRY_RUN -eq 1 ]] || ! "${TPU[@]}" describe "$TPU_NAME" "${WHERE[@]}" >/dev/null 2>&1; then
  run "${TPU[@]}" create "$TPU_NAME" "${WHERE[@]}" \
    --accelerator-type "$ACCELERATOR_TYPE" --version "$RUNTIME_VERSION"
fi
run "${TPU[@]}" scp --recurse --worker=all "$ROOT" "$TPU_NAME:" "${WHERE[@]}"
REPO_DIR="$(basename "$ROOT")"  # relative to the remote home
run "${TPU[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker=all --command \
  "cd $REPO_DIR && python3 -m pip install -q -e . 'jax[tpu]'"
ARGS="--config $CONFIG --workdir $WORKDIR"
ARGS+=" --config.data.path=$DATA_PATH --config.init.checkpoint=$INIT_CHECKPOINT"
ARGS+=" ${EXTRA_ARGS[*]:-}"
run "${TPU[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker=all --command \
  "cd $REPO_DIR && nohup python3 -m smtc_jax.main $ARGS > /tmp/smtc.log 2>&1 &"
run "${TPU[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker=0 --command "tail -F /tmp/smtc.log"
