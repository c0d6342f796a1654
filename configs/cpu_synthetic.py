"""The embedded default: a tiny encoder trained from scratch on the procedural
synthetic video set (generated into WORKDIR/synthetic_data on first use);
finishes on 2 CPU cores in well under 15 minutes.

  python -m smtc_jax.main --config configs/cpu_synthetic.py --workdir /tmp/smtc_cpu
"""

from configs import base


def get_config():
  config = base.get_config()
  v = config.model.vit
  v.patch_size = 8
  v.dim = 64
  v.depth = 4
  v.num_heads = 4
  v.pretrain_grid = 8  # 64 / 8: trained from scratch at this grid
  config.model.num_semantics = 8
  config.model.num_instances = 4
  config.data.resolution = (64, 64)
  config.data.source = "synthetic"
  config.data.layout = "davis"
  config.data.batch_size = 8
  config.data.num_workers = 0  # two cores: decode in the main process
  config.loss.sinkhorn_iters = 50
  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 50
  # A short run needs a faster teacher than the paper's 0.999 (which averages
  # over ~1000 steps): with 0.999 no instance became valid within 1000 steps.
  config.train.ema_momentum = 0.99
  config.train.num_steps = 3000
  config.train.log_every = 100
  config.train.checkpoint_every = 500
  return config
