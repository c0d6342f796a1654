"""The paper's run (Sec. 4.2) on a Cloud TPU pod: ViT-S/16 initialised from DINO,
256x256, T=4 at stride 4, N=16, P=4, global batch 128, AdamW 2e-4, YouTube-VOS
frame folders. Those are base's values; this file adds only the pod's input
workers.

  python -m smtc_jax.main --config configs/tpu_v4.py --workdir gs://BUCKET/smtc \\
      --config.data.path=/data/youtube_vos --config.init.checkpoint=/data/dino_vits16

run on every worker of the slice (launch/tpu_pod.sh does that). `init.checkpoint`
is DINO's encoder converted by smtc_jax.convert --kind dino_vit.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.data.num_workers = 16  # grain worker processes per TPU host
  return config
