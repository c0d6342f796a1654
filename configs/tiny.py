"""A tiny model for tests: the paper's structure at toy sizes (seconds on CPU).

  python -m smtc_jax.bench step --config configs/tiny.py --config.data.batch_size=4
"""

from configs import base


def shrink(config):
  """`config` with a toy model and input (ViT of 2 blocks 32 wide, 32x32, T=3,
  N=4, P=3, 20 Sinkhorn iterations); every other field, the batch and the
  optimizer included, stays as it is."""
  v = config.model.vit
  v.patch_size = 8
  v.dim = 32
  v.depth = 2
  v.num_heads = 2
  v.pretrain_grid = 4
  config.model.num_semantics = 4
  config.model.num_instances = 3
  config.data.resolution = (32, 32)
  config.data.num_frames = 3
  config.loss.sinkhorn_iters = 20
  return config


def get_config():
  return shrink(base.get_config())
