"""The embedded default: a tiny encoder trained from scratch on the procedural
synthetic video set; finishes on 2 CPU cores.

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
  config.loss.sinkhorn_iters = 50
  return config
