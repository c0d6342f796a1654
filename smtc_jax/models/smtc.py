"""The SMTC model (paper Sec. 3.1-3.3): encoder -> correlation -> fusion ->
semantic-aware masked slot attention -> object projection.

`SMTC.__call__(clip, instance_noise=None, partner=None, train=False)` takes a
clip (B, T, H, W, 3) of normalised frames (`train`: the student in training,
with the encoder's stochastic depth) and returns a dict (shapes with L = h * w
tokens):
  features         (B, T, L, D)     encoder features F_t, before fusion
  semantic_logits  (B, T, N, L)     last stage-1 logits (Q K^T / sqrt(D))
  semantic_masks   (B, T, N, L)     softmax over N of the logits: M of eq. 4
  semantic_binary  (B, T, N, L)     M-tilde of eq. 7
  semantic_slots   (B, T, N, D)     S
  instance_logits  (B, T, N, P, L)  last stage-2 logits
  instance_masks   (B, T, N, P, L)  softmax over P within each semantic
  object_masks     (B, T, N, P, L)  semantic_masks * instance_masks (inference)
  instance_slots   (B, T, N, P, D)  O
  objects          (B, T, N, P, D)  projected, L2-normalised O for L_obj
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from smtc_jax.models import resnet
from smtc_jax.models.slot_attention import MLP, SemanticAwareSlotAttention
from smtc_jax.models import vit
from smtc_jax.models.vit import VisionTransformer

RNG_INSTANCE = "instance"  # rng stream for the Gaussian samples of stage 2
RNG_PARTNER = "partner"  # rng stream for the random partner frame j != t
RNG_DROP_PATH = vit.RNG_DROP_PATH  # rng stream of the encoder's stochastic depth
# Encoder features by name (model.features, eval.prop_features) -> encoder output:
# output tokens F_t (paper), the last block's keys (code's slot-attention input),
# the last block's output before the final LayerNorm (code's label propagation).
FEATURES = {"tokens": "tokens", "last_keys": "keys", "prenorm_tokens": "prenorm_tokens"}
SLOT_FEATURES = ("tokens", "last_keys")  # model.features: the FEATURES slot attention reads
ENCODERS = ("vit", "resnet")  # model.encoder
DTYPES = ("float32", "bfloat16")  # model.dtype, the compute dtype
CORR_PARTNERS = ("random", "previous")  # model.corr_partner
CORRELATIONS = ("global", "local")  # model.correlation
FUSIONS = ("paper", "reference")  # model.fusion
SLOT_INPUTS = ("fused", "rgb", "correlation")  # model.slot_input


def partner_indices(rng, batch: int, num_frames: int, mode: str):
  """Index j of the partner frame for every (clip, frame t): (B, T) int32."""
  t = jnp.arange(num_frames)
  if mode == "previous":  # code: roll by one, frame 0 pairs with the last
    return jnp.broadcast_to((t - 1) % num_frames, (batch, num_frames))
  if mode == "random":  # paper: j drawn uniformly from the other T-1 frames
    if num_frames == 1:
      return jnp.zeros((batch, 1), jnp.int32)
    offset = jax.random.randint(rng, (batch, num_frames), 1, num_frames)
    return (t[None] + offset) % num_frames
  raise ValueError(f"model.corr_partner must be one of {CORR_PARTNERS}, got {mode!r}")


def check_features(name: str, encoder: nn.Module, field: str) -> str:
  """The encoder output key of features `name`, or a ValueError naming `field`."""
  if name not in FEATURES:
    raise ValueError(f"{field} must be one of {sorted(FEATURES)}, got {name!r}")
  if name != "tokens" and not isinstance(encoder, VisionTransformer):
    raise ValueError(f"{field}={name!r} needs the ViT encoder (model.encoder='vit')")
  return FEATURES[name]


def window_indices(grid, partner_grid, radius: int):
  """(L, K) flat partner-grid indices of the (2r+1)^2 cells around each token's
  position, and (L, K) bool: inside the partner grid. A token at cell (y, x) of
  `grid` sits at cell (y * gh / h, x * gw / w) of `partner_grid` (gh, gw), so a
  displacement is counted in partner cells at any input size."""
  h, w = grid
  gh, gw = partner_grid
  ys = (jnp.arange(h) * gh) // h  # (h,)
  xs = (jnp.arange(w) * gw) // w
  offsets = jnp.arange(-radius, radius + 1)
  rows = ys[:, None, None, None] + offsets[None, None, :, None]  # (h, 1, k, 1)
  cols = xs[None, :, None, None] + offsets[None, None, None, :]  # (1, w, 1, k)
  rows, cols = jnp.broadcast_arrays(rows, cols)  # (h, w, k, k)
  inside = (rows >= 0) & (rows < gh) & (cols >= 0) & (cols < gw)
  flat = jnp.clip(rows, 0, gh - 1) * gw + jnp.clip(cols, 0, gw - 1)
  return flat.reshape(h * w, -1), inside.reshape(h * w, -1)


def local_correlation(tokens, partner_grid, grid, radius: int, temperature: float):
  """Where each token went in the partner frame, whatever it looks like: the
  softmax over the (2r+1)^2 partner cells around its position of their cosine
  similarity to it, over `temperature`. tokens: (B, T, L, D) on `grid`;
  partner_grid: (B, T, gh, gw, D). Returns (B, T, L, (2r+1)^2)."""
  b, t, gh, gw, d = partner_grid.shape
  index, inside = window_indices(grid, (gh, gw), radius)
  unit = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)
  neighbours = jnp.take(unit(partner_grid).reshape(b, t, gh * gw, d), index, axis=2)  # (B,T,L,K,D)
  cosine = jnp.einsum("btld,btlkd->btlk", unit(tokens), neighbours)
  logits = jnp.where(inside, cosine / temperature, -jnp.inf)
  return jax.nn.softmax(logits, axis=-1)


def resize_grid(feats, grid):
  """Bilinear resize of (N, h, w, D) features to grid (gh, gw), without
  antialiasing, as torch's F.interpolate(mode='bilinear') does."""
  n, h, w, d = feats.shape
  if (h, w) == tuple(grid):
    return feats
  return jax.image.resize(feats, (n, *grid, d), "bilinear", antialias=False)


class ObjectHead(nn.Module):
  """MLP D -> ratio*D -> D on instance slots, then L2 normalisation."""
  ratio: int = 2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = MLP(self.ratio * x.shape[-1], self.dtype, name="mlp")(x).astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class SMTC(nn.Module):
  """Encoder + correlation fusion + two-stage slot attention (see module doc)."""
  encoder: nn.Module
  slot_attention: SemanticAwareSlotAttention
  features: str = "tokens"  # tokens | last_keys
  corr_partner: str = "random"
  corr_grid: tuple[int, int] = (16, 16)
  correlation: str = "global"  # global (eq. 2) | local (local_correlation; ours)
  corr_radius: int = 3
  corr_temperature: float = 0.1
  fusion: str = "paper"  # paper | reference
  slot_input: str = "fused"  # fused | rgb | correlation
  object_head_ratio: int = 2
  dtype: Any = jnp.float32

  def encode(self, clip, train: bool = False, features: str | None = None):
    """Encoder features (B, T, h, w, D) of every frame of the clip: those named
    by `features` (a FEATURES key; default model.features, what slot attention
    reads); `train` turns on the encoder's stochastic depth."""
    b, t, height, width, c = clip.shape
    out = self.encoder(clip.reshape(b * t, height, width, c), train=train)
    feats = out[check_features(features or self.features, self.encoder, "model.features")]
    return feats.reshape(b, t, *feats.shape[1:])

  def correlation_head(self, tokens, feats, partner):
    """h_c(C_tj) (eq. 2-3): (B, T, L, D) from tokens (B, T, L, D), the grid
    features (B, T, h, w, D) and the partner index (B, T)."""
    b, t, h, w, d = feats.shape
    grid = resize_grid(feats.reshape(b * t, h, w, d), self.corr_grid)
    grid = grid.reshape(b, t, -1, d)  # (B, T, G, D)
    partner_feats = jnp.take_along_axis(grid, partner[:, :, None, None], axis=1)
    if self.correlation == "local":
      corr = local_correlation(tokens, partner_feats.reshape(b, t, *self.corr_grid, d), (h, w),
                               self.corr_radius, self.corr_temperature)  # (B, T, L, K)
    elif self.correlation == "global":
      corr = jnp.einsum("btld,btgd->btlg", tokens, partner_feats)  # C_tj, (B, T, L, G)
    else:
      raise ValueError(f"model.correlation must be one of {CORRELATIONS}, got {self.correlation!r}")
    return nn.Dense(d, dtype=self.dtype, name="h_c")(corr)  # linear over the last axis

  def feature_head(self, tokens):
    """h_f(F_t) (eq. 3): a linear head (paper) or the identity (code)."""
    if self.fusion == "paper":
      return nn.Dense(tokens.shape[-1], dtype=self.dtype, name="h_f")(tokens)
    if self.fusion == "reference":
      return tokens
    raise ValueError(f"model.fusion must be one of {FUSIONS}, got {self.fusion!r}")

  def fuse(self, feats, partner):
    """Slot-attention input (Table 6): R_t = h_f(F_t) + h_c(C_tj) (eq. 3), or one
    of its terms; only the heads the input uses are built and computed.
    feats: (B, T, h, w, D); partner: (B, T)."""
    b, t, h, w, d = feats.shape
    tokens = feats.reshape(b, t, h * w, d)
    if self.slot_input == "fused":
      return self.feature_head(tokens) + self.correlation_head(tokens, feats, partner)
    if self.slot_input == "rgb":
      return self.feature_head(tokens)
    if self.slot_input == "correlation":
      return self.correlation_head(tokens, feats, partner)
    raise ValueError(f"model.slot_input must be one of {SLOT_INPUTS}, got {self.slot_input!r}")

  def random_partner(self, batch: int, num_frames: int):
    """Partner frame j of every (clip, frame t): (B, T), from the 'partner' stream."""
    rng = self.make_rng(RNG_PARTNER) if self.corr_partner == "random" else None
    return partner_indices(rng, batch, num_frames, self.corr_partner)

  def random_noise(self, batch: int, num_frames: int, dim: int):
    """Standard normal (B, T, N, P, D) for the Gaussian samples of stage 2,
    from the 'instance' stream."""
    n, p = self.slot_attention.num_semantics, self.slot_attention.num_instances
    return jax.random.normal(self.make_rng(RNG_INSTANCE), (batch, num_frames, n, p, dim))

  def random_inputs(self, batch: int, num_frames: int, dim: int):
    """(instance_noise, partner) for `batch` clips, the numbers __call__ draws
    when given neither (the same streams and counters). Row i belongs to clip
    i, so the train step draws them once for its whole batch and gives each
    micro-batch its clips' rows: the draws do not depend on how the batch is
    split. Run as model.apply({}, b, t, d, rngs=..., method=SMTC.random_inputs)."""
    return self.random_noise(batch, num_frames, dim), self.random_partner(batch, num_frames)

  @nn.compact
  def __call__(self, clip, instance_noise=None, partner=None, train: bool = False):
    # clip: (B, T, H, W, 3); instance_noise: (B, T, N, P, D) or None (drawn from
    # the 'instance' rng); partner: (B, T) int or None (from corr_partner);
    # train: the student in training (encoder stochastic depth, 'drop_path' rng).
    b, t = clip.shape[:2]
    feats = self.encode(clip, train)
    d = feats.shape[-1]
    n = self.slot_attention.num_semantics
    if partner is None:
      partner = self.random_partner(b, t)
    fused = self.fuse(feats, partner)  # (B, T, L, D)
    if instance_noise is None:
      instance_noise = self.random_noise(b, t, d)
    p = instance_noise.shape[3]
    slots = self.slot_attention(fused.reshape(b * t, -1, d),
                                instance_noise.reshape(b * t, n, p, d))
    out = {k: v.reshape(b, t, *v.shape[1:]) for k, v in slots.items()}
    out["features"] = feats.reshape(b, t, -1, d).astype(jnp.float32)
    out["semantic_masks"] = jax.nn.softmax(out["semantic_logits"], axis=2)
    out["instance_masks"] = jax.nn.softmax(out["instance_logits"], axis=3)
    out["object_masks"] = out["semantic_masks"][:, :, :, None] * out["instance_masks"]
    out["objects"] = ObjectHead(self.object_head_ratio, self.dtype, name="object_head")(
        out["instance_slots"])
    return out


def build_encoder(config: ml_collections.ConfigDict) -> nn.Module:
  """The encoder named by `config.model.encoder`."""
  m = config.model
  dtype = jnp.dtype(m.dtype)
  if m.encoder == "vit":
    v = m.vit
    return VisionTransformer(
        patch_size=v.patch_size, dim=v.dim, depth=v.depth, num_heads=v.num_heads,
        mlp_ratio=v.mlp_ratio, qkv_bias=v.qkv_bias, pretrain_grid=v.pretrain_grid,
        layer_norm_eps=v.layer_norm_eps, drop_path_rate=v.drop_path_rate, remat=m.remat,
        dtype=dtype, layer_scale=v.layer_scale, num_registers=v.num_registers,
        attention=v.attention, attention_pad=v.attention_pad,
        attention_block=v.attention_block)
  if m.encoder == "resnet":
    r = m.resnet
    return resnet.ResNetEncoder(stage_blocks=tuple(r.stage_blocks),
                                stage_strides=tuple(r.stage_strides),
                                feature_stage=r.feature_stage, dtype=dtype)
  raise ValueError(f"model.encoder must be one of {ENCODERS}, got {m.encoder!r}")


def encoder_stride(config: ml_collections.ConfigDict) -> int:
  """Pixels per feature cell of the configured encoder."""
  m = config.model
  if m.encoder == "resnet":
    return resnet.feature_stride(m.resnet.feature_stage, m.resnet.stage_strides)
  return m.vit.patch_size


def feature_dim(config: ml_collections.ConfigDict) -> int:
  """D: the width of the configured encoder's features (the ViT's tokens and
  its concatenated keys are both vit.dim wide)."""
  m = config.model
  if m.encoder == "resnet":
    return resnet.feature_channels(m.resnet.feature_stage)
  return m.vit.dim


def build_model(config: ml_collections.ConfigDict) -> SMTC:
  """SMTC from a config; the correlation grid is the training token grid."""
  m = config.model
  dtype = jnp.dtype(m.dtype)
  stride = encoder_stride(config)
  slot_attention = SemanticAwareSlotAttention(
      num_semantics=m.num_semantics, num_instances=m.num_instances,
      num_iterations=m.num_iterations, slot_update=m.slot_update,
      mlp_min_hidden=m.mlp_min_hidden, attn_eps=m.attn_eps,
      mask_threshold_on=m.mask_threshold_on, tau=m.tau, stages=m.stages,
      sample_grad=m.sample_grad, detach_trick=m.detach_trick, dtype=dtype)
  return SMTC(
      encoder=build_encoder(config), slot_attention=slot_attention,
      features=m.features, corr_partner=m.corr_partner,
      corr_grid=tuple(r // stride for r in config.data.resolution),
      correlation=m.correlation, corr_radius=m.corr_radius,
      corr_temperature=m.corr_temperature,
      fusion=m.fusion, slot_input=m.slot_input,
      object_head_ratio=m.object_head_ratio, dtype=dtype)


# ---------------------------------------------------------------------------
# Model inputs, shared by training and evaluation.
# ---------------------------------------------------------------------------

def normalize(frames, config: ml_collections.ConfigDict):
  """uint8 (..., 3) frames -> float32 normalised with the data statistics."""
  mean = jnp.asarray(config.data.mean, jnp.float32) * 255.0
  std = jnp.asarray(config.data.std, jnp.float32) * 255.0
  return (frames.astype(jnp.float32) - mean) / std


def model_rngs(rng):
  """The rng streams `SMTC.apply` draws from, derived from one key (the
  stochastic-depth one folded in, so the others are those of runs before it)."""
  instance, partner = jax.random.split(rng)
  return {RNG_INSTANCE: instance, RNG_PARTNER: partner,
          RNG_DROP_PATH: jax.random.fold_in(rng, 1)}


def model_variables(params, batch_stats):
  """The variables model.apply takes: params, and BatchNorm statistics if any."""
  return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def draw_inputs(model: SMTC, config: ml_collections.ConfigDict, rng, batch: int,
                num_frames: int):
  """((instance_noise, partner), drop-path key): what the model draws for `batch`
  clips from one key (model_rngs' streams; SMTC.random_inputs), drawn ahead so
  that micro-batches can share them out."""
  rngs = model_rngs(rng)
  inputs = model.apply({}, batch, num_frames, feature_dim(config), rngs=rngs,
                       method=SMTC.random_inputs)
  return inputs, rngs[RNG_DROP_PATH]


def apply_on_frames(model: SMTC, config: ml_collections.ConfigDict, params, batch_stats,
                    frames, **kwargs):
  """model.apply on uint8 (B, T, H, W, 3) frames: normalised, with the
  BatchNorm statistics if any; kwargs go to SMTC.__call__ (and `rngs`)."""
  return model.apply(model_variables(params, batch_stats), normalize(frames, config), **kwargs)


def init_variables(config: ml_collections.ConfigDict, model: SMTC, rng):
  """(variables, rng left for the train state): the model initialised on a
  dummy clip of the configured size, as a run's step 0 before init.checkpoint."""
  d = config.data
  clip = jnp.zeros((1, d.num_frames, *d.resolution, 3), jnp.float32)
  params_rng, init_rng, state_rng = jax.random.split(rng, 3)
  return model.init({"params": params_rng, **model_rngs(init_rng)}, clip), state_rng


def abstract_variables(config: ml_collections.ConfigDict, model: SMTC):
  """The shapes and dtypes of init_variables' variables, computing nothing."""
  return jax.eval_shape(lambda: init_variables(config, model, jax.random.PRNGKey(0))[0])
