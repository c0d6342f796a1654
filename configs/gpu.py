"""The paper's run of configs/tpu_v4.py on one GPU of 40-80 GB (or all GPUs of one
host): the same experiment (global batch 128, AdamW 2e-4, same schedule), with
each step accumulated over micro-batches of at most 64 clips per GPU
(train.microbatch), so one step's loss and gradient are those of the whole
batch of 128. With 2 or more GPUs a device's share is already at most 64 clips
and nothing is accumulated. Only memory and speed differ from tpu_v4.py.

  python -m smtc_jax.main --config configs/gpu.py --workdir /runs/smtc \\
      --config.data.path=/data/youtube_vos --config.init.checkpoint=/data/dino_vits16
"""

from configs import tpu_v4


def get_config():
  config = tpu_v4.get_config()
  config.data.num_workers = 8
  # 64 clips at once: half the memory of all 128 for ~22 % more time a step
  # (docs/performance.md). A card that holds 128 clips runs configs/tpu_v4.py
  # as is; bf16 or model.remat=True also fit less.
  config.train.microbatch = 64
  return config
