"""The paper's model on one 80 GB GPU (or all GPUs of one host): same code and
model as configs/tpu_v4.py, a global batch that fits, the learning rate scaled
linearly with it (the paper's rule, Sec. 4.2: 2e-4 at 128).

  python -m smtc_jax.main --config configs/gpu.py --workdir /runs/smtc \\
      --config.data.path=/data/youtube_vos --config.init.checkpoint=/data/dino_vits16
"""

from configs import tpu_v4


def get_config():
  config = tpu_v4.get_config()
  config.data.batch_size = 64
  config.data.num_workers = 8
  config.optim.learning_rate = 2e-4 * config.data.batch_size / 128
  return config
