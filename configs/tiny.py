"""A tiny model for tests: the paper's structure at toy sizes (seconds on CPU)."""

from configs import base


def get_config():
  config = base.get_config()
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
