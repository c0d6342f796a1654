"""The paper's run (configs/tpu_v4.py) with DINOv2's ViT-S/14 as the encoder
instead of DINO's ViT-S/16: LayerScale, patch 14, position embedding stored
for 37x37 (518 px), at 252x252. Convert DINOv2's released weights
(dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth), then train:

  python -m smtc_jax.convert --kind dinov2_vit --input dinov2_vits14_pretrain.pth \\
      --output /data/dinov2_vits14 --config configs/dinov2.py
  python -m smtc_jax.main --config configs/dinov2.py --workdir gs://BUCKET/smtc_dinov2 \\
      --config.data.path=/data/youtube_vos --config.init.checkpoint=/data/dinov2_vits14

The other released ViTs are variants of this file, named as DINOv2's files are
(vits14, vits14_reg4, vitb14, vitb14_reg4), given after a colon, the same for
the convert command's --config:

  python -m smtc_jax.main --config configs/dinov2.py:vits14_reg4 --workdir /runs/smtc_reg4 \\
      --config.data.path=/data/youtube_vos --config.init.checkpoint=/data/dinov2_vits14_reg4

Its train step alone runs anywhere:

  python -m smtc_jax.bench step --config configs/dinov2.py --config.data.batch_size=2
"""

from configs import tpu_v4

# DINOv2's released ViTs without SwiGLU: the model.vit fields that differ between
# them. All have patch 14, 12 blocks, MLP ratio 4, qkv biases, LayerScale and a
# position embedding for 518 / 14 = 37 x 37 patches; the _reg4 ones 4 registers.
VARIANTS = {
    "vits14": {"dim": 384, "num_heads": 6, "num_registers": 0},
    "vits14_reg4": {"dim": 384, "num_heads": 6, "num_registers": 4},
    "vitb14": {"dim": 768, "num_heads": 12, "num_registers": 0},
    "vitb14_reg4": {"dim": 768, "num_heads": 12, "num_registers": 4},
}
PATCH = 14
PRETRAIN_GRID = 37


def get_config(variant: str = "vits14"):
  if variant not in VARIANTS:
    raise ValueError(f"configs/dinov2.py has no variant {variant!r}: one of {', '.join(VARIANTS)}")
  config = tpu_v4.get_config()
  v = config.model.vit
  v.patch_size = PATCH
  v.pretrain_grid = PRETRAIN_GRID
  v.depth = 12
  v.mlp_ratio = 4.0
  v.qkv_bias = True
  v.layer_norm_eps = 1e-6
  v.layer_scale = True
  for field, value in VARIANTS[variant].items():
    v[field] = value
  # The paper trains at 256 x 256; 252 is the nearest multiple of the patch (18 x 18
  # tokens against ViT-S/16's 16 x 16: the same pixels cut finer, 27 % more tokens).
  # 224 would keep 16 x 16 tokens but show the encoder 23 % fewer pixels.
  config.data.resolution = (18 * PATCH, 18 * PATCH)
  return config
