#!/usr/bin/env bash
# `python -m smtc_jax.bench step` at the paper's shapes (configs/tpu_v4.py unchanged:
# ViT-S/16, 256x256, T=4, global batch 128) on one GPU, as one of two sets of variants:
#   SET=paper (the default; the README's GPU rows): float32 and bf16 compute, with the
#     encoder rematerialised, in micro-batches of 64 (configs/gpu.py) and with the
#     encoder frozen. About 90 s a variant on an H200 (jax 0.11.2), most of it compiling.
#   SET=attention: the encoder's attention by cuDNN's fused kernel
#     (model.vit.attention=cudnn, the tokens padded and masked; bf16 compute, which
#     cuDNN needs), trained and frozen, against the default attention and against the
#     same padding through XLA (model.vit.attention=xla). Five variants, 2 warm-up and
#     5 timed steps each unless the flags say otherwise: about 8 minutes.
# Each variant runs in its own process (memory peaks stay apart); one that fails (out
# of memory, past VARIANT_TIMEOUT seconds) is reported and the rest still run.
#
#   [SET=attention] launch/bench_gpu.sh [OUT_DIR] [bench flags for every variant, e.g. --steps 5]
#
# Writes OUT_DIR (default $OUT)/<variant>.log and OUT_DIR/step.jsonl (bench's JSON line
# of each), then prints a table, with the model FLOP utilisation against the datasheet's
# dense peak (PEAK_BF16, PEAK_TF32 in FLOP/s: H100 and H200 SXM's 989e12 and 495e12;
# float32 matmuls run as TF32). CONFIG and ATTENTION replace the attention set's
# configs/tpu_v4.py and cudnn; PYTHON the interpreter. Only the first visible GPU is
# used. No --trace_dir: its op grouping reads XLA:CPU's trace and found no ops in a
# GPU's (README, Performance).
set -uo pipefail
if [[ $# -ge 1 && $1 != -* ]]; then
  out=$1
  shift
else
  out=${OUT:?usage: [SET=paper|attention] launch/bench_gpu.sh OUT_DIR [bench flags] (or set OUT)}
fi
SET=${SET:-paper}
PYTHON=${PYTHON:-python3}
mkdir -p "$out"
: > "$out/step.jsonl"
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
# The f32 step of 128 clips needs most of the card; JAX's default pool is 75 %.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
if [[ $SET == attention ]]; then
  VARIANT_TIMEOUT=${VARIANT_TIMEOUT:-120}
else
  VARIANT_TIMEOUT=${VARIANT_TIMEOUT:-240}
fi
export PEAK_BF16=${PEAK_BF16:-989e12} PEAK_TF32=${PEAK_TF32:-495e12}

variant() {  # NAME CONFIG [flags]
  local name=$1 config=$2
  shift 2
  echo "== $name: $config $*"
  if timeout "$VARIANT_TIMEOUT" "$PYTHON" -m smtc_jax.bench step --config "$config" "$@" \
      > "$out/$name.log" 2>&1; then
    tail -n 1 "$out/$name.log" | "$PYTHON" -c \
        "import json, sys; r = json.load(sys.stdin); r['variant'] = '$name'; print(json.dumps(r))" \
        >> "$out/step.jsonl"
  else
    echo "   failed (exit $?): $(grep -m1 -iE 'error|resource_exhausted|out of memory' "$out/$name.log" | cut -c1-300)"
  fi
}

bf16=--config.model.dtype=bfloat16
case $SET in
  paper)
    variant f32 configs/tpu_v4.py "$@"
    variant bf16 configs/tpu_v4.py $bf16 "$@"
    variant bf16_remat configs/tpu_v4.py $bf16 --config.model.remat=True "$@"
    variant f32_remat configs/tpu_v4.py --config.model.remat=True "$@"
    variant f32_micro64 configs/gpu.py "$@"
    variant f32_frozen configs/tpu_v4.py --frozen "$@"
    ;;
  attention)
    config=${CONFIG:-configs/tpu_v4.py}
    fused=--config.model.vit.attention=${ATTENTION:-cudnn}
    short=(--warmup 2 --steps 5)
    variant bf16 "$config" $bf16 "${short[@]}" "$@"
    variant bf16_fused "$config" $bf16 "$fused" "${short[@]}" "$@"
    variant bf16_padded_xla "$config" $bf16 --config.model.vit.attention=xla "${short[@]}" "$@"
    variant bf16_frozen "$config" $bf16 --frozen "${short[@]}" "$@"
    variant bf16_fused_frozen "$config" $bf16 "$fused" --frozen "${short[@]}" "$@"
    ;;
  *)
    echo "SET=$SET is not one of paper, attention" >&2
    exit 2
    ;;
esac

"$PYTHON" - "$out/step.jsonl" <<'EOF'
import json, os, sys
datasheet = {"bfloat16": float(os.environ["PEAK_BF16"]), "float32": float(os.environ["PEAK_TF32"])}
rows = [json.loads(line) for line in open(sys.argv[1])]
# MFU counts the model's FLOPs: those of the default attention's run where there is one
# (XLA's count of a fused or padded run misses the cuDNN call or adds the padding).
model_flops = {r["variant"]: r["step_flops"] for r in rows}
for r in rows:
  plain = r["variant"].replace("_fused", "").replace("_padded_xla", "")
  r["mfu"] = model_flops.get(plain, r["step_flops"]) / r["step_s"] / datasheet[r["dtype"]]
print(f"{'variant':17s} {'step s':>7s} {'clips/s':>8s} {'TFLOP':>6s} {'TFLOP/s':>8s} "
      f"{'of f32 mm':>9s} {'of bf16 mm':>10s} {'MFU':>6s} {'temp GB':>8s} {'peak GB':>8s} {'compile s':>9s}")
for r in rows:
  achieved = r["achieved_flops_per_s"]
  print(f"{r['variant']:17s} {r['step_s']:7.3f} {r['clips_per_s']:8.1f} {r['step_flops'] / 1e12:6.1f} "
        f"{achieved / 1e12:8.1f} {achieved / r['matmul_peak_f32']:9.1%} "
        f"{achieved / r['matmul_peak_bf16']:10.1%} {r['mfu']:6.1%} "
        f"{r['xla_temp_bytes'] / 1e9:8.1f} "
        f"{r['peak_memory_bytes'] / 1e9:8.1f} {r['compile_s']:9.1f}")
if rows:
  print(f"matmul peaks (bench step, same runs): f32 {rows[0]['matmul_peak_f32'] / 1e12:.0f} TFLOP/s, "
        f"bf16 {rows[0]['matmul_peak_bf16'] / 1e12:.0f} TFLOP/s; MFU against the datasheet's "
        f"bf16 {datasheet['bfloat16'] / 1e12:.0f}, TF32 {datasheet['float32'] / 1e12:.0f} TFLOP/s")
EOF
