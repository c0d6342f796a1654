#!/usr/bin/env bash
# The README's GPU rows: `python -m smtc_jax.bench step` at the paper's shapes
# (configs/tpu_v4.py unchanged: ViT-S/16, 256x256, T=4, global batch 128) on one
# GPU, in float32 and bf16 compute, with the encoder rematerialised, in micro-
# batches of 64 (configs/gpu.py) and with the encoder frozen. Each variant runs in
# its own process (memory peaks stay apart); one that fails (out of memory, past
# VARIANT_TIMEOUT) is reported and the rest still run. About 90 s a variant on an
# H200 (jax 0.11.2), most of it compiling.
#
#   launch/bench_gpu.sh OUT_DIR [bench flags for every variant, e.g. --steps 5]
#
# Writes OUT_DIR/<variant>.log and OUT_DIR/step.jsonl (bench's JSON line of each),
# then prints a table. Only the first visible GPU is used. No --trace_dir: its op
# grouping reads XLA:CPU's trace and found no ops in a GPU's (README, Performance).
set -uo pipefail
out=${1:?usage: launch/bench_gpu.sh OUT_DIR [bench flags]}
shift
mkdir -p "$out"
: > "$out/step.jsonl"
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
# The f32 step of 128 clips needs most of the card; JAX's default pool is 75 %.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
VARIANT_TIMEOUT=${VARIANT_TIMEOUT:-240}

variant() {  # NAME CONFIG [flags]
  local name=$1 config=$2
  shift 2
  echo "== $name: $config $*"
  if timeout "$VARIANT_TIMEOUT" python3 -m smtc_jax.bench step --config "$config" "$@" \
      > "$out/$name.log" 2>&1; then
    tail -n 1 "$out/$name.log" | python3 -c \
        "import json, sys; r = json.load(sys.stdin); r['variant'] = '$name'; print(json.dumps(r))" \
        >> "$out/step.jsonl"
  else
    echo "   failed (exit $?): $(grep -m1 -iE 'error|resource_exhausted|out of memory' "$out/$name.log" | cut -c1-300)"
  fi
}

bf16=--config.model.dtype=bfloat16
variant f32 configs/tpu_v4.py "$@"
variant bf16 configs/tpu_v4.py $bf16 "$@"
variant bf16_remat configs/tpu_v4.py $bf16 --config.model.remat=True "$@"
variant f32_remat configs/tpu_v4.py --config.model.remat=True "$@"
variant f32_micro64 configs/gpu.py "$@"
variant f32_frozen configs/tpu_v4.py --frozen "$@"

python3 - "$out/step.jsonl" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print(f"{'variant':12s} {'step s':>7s} {'clips/s':>8s} {'TFLOP':>6s} {'TFLOP/s':>8s} "
      f"{'of f32 mm':>9s} {'of bf16 mm':>10s} {'temp GB':>8s} {'peak GB':>8s} {'compile s':>9s}")
for r in rows:
  achieved = r["achieved_flops_per_s"]
  print(f"{r['variant']:12s} {r['step_s']:7.3f} {r['clips_per_s']:8.1f} {r['step_flops'] / 1e12:6.1f} "
        f"{achieved / 1e12:8.1f} {achieved / r['matmul_peak_f32']:9.1%} "
        f"{achieved / r['matmul_peak_bf16']:10.1%} {r['xla_temp_bytes'] / 1e9:8.1f} "
        f"{r['peak_memory_bytes'] / 1e9:8.1f} {r['compile_s']:9.1f}")
if rows:
  print(f"matmul peaks (bench step, same runs): f32 {rows[0]['matmul_peak_f32'] / 1e12:.0f} TFLOP/s, "
        f"bf16 {rows[0]['matmul_peak_bf16'] / 1e12:.0f} TFLOP/s")
EOF
