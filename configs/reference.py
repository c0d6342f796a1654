"""The authors' released code's choices (REFERENCE_NOTES.md), for parity with
their checkpoints and for paper-vs-code comparisons.

  python -m smtc_jax.main --config configs/reference.py --workdir DIR
"""

from configs import base


def get_config():
  config = base.get_config()
  m = config.model
  m.features = "last_keys"
  m.corr_partner = "previous"
  m.fusion = "reference"
  m.slot_update = "residual"
  m.mask_threshold_on = "logit"
  m.tau = 0.3
  m.sample_grad = "none"
  m.detach_trick = True
  l = config.loss
  l.sinkhorn_iters = 3
  l.sinkhorn_marginals = "feature_norm"
  l.valid_mask_tau = 0.3
  l.instance_form = "cosine"
  l.obj_same_frame_pairs = True
  return config
