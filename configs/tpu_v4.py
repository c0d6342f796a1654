"""The paper's run (Sec. 4.2) on a Cloud TPU pod: ViT-S/16 initialised from DINO,
256x256, T=4 at stride 4, N=16, P=4, global batch 128, AdamW 2e-4, YouTube-VOS
frame folders.

  python -m smtc_jax.main --config configs/tpu_v4.py --workdir gs://BUCKET/smtc \\
      --config.data.path=/data/youtube_vos --config.init.checkpoint=/data/dino_vits16

`init.checkpoint` is an Orbax params checkpoint holding the DINO encoder (see
smtc_jax/convert.py); run on every worker of the slice.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.data.source = "frames"
  config.data.layout = "youtube_vos"
  config.data.batch_size = 128  # global, over all hosts and chips
  config.data.num_workers = 16
  config.optim.learning_rate = 2e-4 * config.data.batch_size / 128
  config.init.scope = "encoder"
  return config
