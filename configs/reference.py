"""The authors' released code's choices (github.com/shvdiwnkozbw/SMTC): their
model, losses, training recipe (start_twostage.sh, src/train.py, src/utils.py)
and inference (src/eval_multi.py, src/eval_prop.py), for parity with their
checkpoints and for paper-vs-code comparisons (docs/paper_vs_code.md). The
evaluation protocol stays the official one.

  python -m smtc_jax.main --config configs/reference.py --workdir DIR \\
      --config.data.path=/data/youtube_vos --config.init.checkpoint=/data/dino_vits16

Their released model, converted into DIR/export (smtc_jax.convert --kind smtc),
is evaluated with the same command and --mode=eval.
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
  # Their copy of DINO's ViT (src/model/vision_transformer.py) defaults to 0.1,
  # DINO's own to 0; only the student runs model.train().
  m.vit.drop_path_rate = 0.1
  l = config.loss
  l.sinkhorn_iters = 3
  l.sinkhorn_marginals = "feature_norm"
  l.valid_mask_tau = 0.3
  l.valid_strict = True  # train.py filter_valid_instance: similarity > 0.5, area > 0.2
  l.instance_form = "cosine"
  l.obj_same_frame_pairs = True
  # Their recipe (start_twostage.sh): 32 clips on each of 4 processes, lr 2e-5,
  # scaled linearly with the global batch as the paper's rule (Sec. 4.2).
  d = config.data
  d.batch_size = 32 * 4
  d.clip_sampling = "reference"  # data.py: random.choice of a video, centred clips
  o = config.optim
  o.learning_rate = 2e-5 * d.batch_size / (32 * 4)
  o.encoder_lr_mult = 0.01  # train.py: encoder parameter groups at lr x 0.01 ...
  o.grad_iter = 3000  # ... and x 0 for the first grad_iter steps
  config.train.num_steps = 10000  # num_train_steps
  config.train.ema_scope = "non_encoder"  # the teacher's encoder is never updated
  # Their augmentation (utils.Augment_GPU_pre): frames resized whole to 256x256
  # (data.readRGB), crop and flip commented out, grayscale before kornia's
  # ColorJitter (HSV hue). They normalise with ImageNet statistics in training
  # (base's data.mean / data.std; the Kinetics ones only in eval_multi.py).
  a = d.augment
  a.random_crop = False
  a.hflip_prob = 0.0
  a.gray_before_jitter = True
  a.hue_space = "hsv"
  # Their inference (eval_multi.py): proposals by the score cos(S_n, O_np) >= 0.5
  # alone, without eq. 11's area criterion, the model run on frames resized to 480 x 800.
  config.eval.candidates = "score"
  # eval.protocol stays 'official' (base): the figures then compare with published
  # ones and with the paper's; --config.eval.protocol=authors scores as their copy
  # of davis2017-evaluation does (their released model's 44.8).
  config.eval.discovery_resolution = (480, 800)
  # eval_prop.py propagates with the last block's output tokens, before the final
  # LayerNorm (not the keys that feed their slot attention).
  config.eval.prop_features = "prenorm_tokens"
  return config
