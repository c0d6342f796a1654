"""Vision Transformer in DINO's layout (patch embedding, CLS token, learned
position embeddings, pre-norm blocks), returning patch tokens and last-block keys.

Parameter names mirror DINO's `vision_transformer.py` so that conversion is a
rename: `patch_embed`, `cls_token`, `pos_embed`, `blocks_{i}/{norm1,attn/qkv,
attn/proj,norm2,mlp/fc1,mlp/fc2}`, `norm`.

DINOv2's ViTs (S/14, B/14, with or without registers) are the same network with
two additions, both off by default: LayerScale (`layer_scale`: a per-channel
`gamma` on each residual branch, `blocks_{i}/ls1` and `ls2`) and register tokens
(`num_registers`: `register_tokens`, inserted after the CLS token once the
position embedding, which covers CLS and patches only, has been added; they are
dropped from every output). Their position embedding is stored for a 37x37
grid (518 px) and resized to the input's grid exactly as DINO's is: DINOv2's
`interpolate_pos_encoding` with the released models' settings (interpolate_offset
0.1, interpolate_antialias False) is DINO's bicubic resize below. timm's
`dynamic_img_size` path resizes differently (to the output size, with
antialiasing), so parity is checked against DINOv2's resize, not timm's.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# PyTorch's bicubic kernel parameter (upsample_bicubic2d); jax.image uses -0.5.
TORCH_BICUBIC_A = -0.75
# DINO adds 0.1 to the target grid before computing the interpolation scale
# factor, to avoid floating point error in PyTorch's output-size computation.
DINO_SCALE_OFFSET = 0.1
RNG_DROP_PATH = "drop_path"  # rng stream of stochastic depth (training mode only)
# model.vit.attention: the ViT's own einsums and softmax | jax.nn.dot_product_attention
# with XLA's implementation | with cuDNN's fused (flash) attention, GPUs only, bf16/fp16.
ATTENTION_IMPLEMENTATIONS = ("einsum", "xla", "cudnn")


def _cubic_weights(t: np.ndarray, a: float) -> np.ndarray:
  """Weights of the 4 taps at offsets -1, 0, 1, 2 for fractional position t."""

  def near(x):  # |x| <= 1
    return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a

  return np.stack([far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)], axis=-1)


def torch_bicubic_matrix(n_in: int, n_out: int, scale: float) -> np.ndarray:
  """(n_out, n_in) matrix equal to F.interpolate(mode='bicubic', scale_factor=scale,
  align_corners=False) along one axis: source x = (i + 0.5) / scale - 0.5, border
  samples clamped, cubic kernel with a = -0.75."""
  dst = np.arange(n_out, dtype=np.float64)
  src = (dst + 0.5) / scale - 0.5  # cubic mode does not clamp negative sources.
  base = np.floor(src)
  weights = _cubic_weights(src - base, TORCH_BICUBIC_A)  # (n_out, 4)
  matrix = np.zeros((n_out, n_in), dtype=np.float64)
  for tap in range(4):
    idx = np.clip(base.astype(np.int64) - 1 + tap, 0, n_in - 1)
    np.add.at(matrix, (np.arange(n_out), idx), weights[:, tap])
  return matrix


def interpolate_pos_embed(patch_pos: jax.Array, grid: int, h: int, w: int) -> jax.Array:
  """Resize a (grid*grid, D) patch position embedding to (h*w, D) as DINO does."""
  if (h, w) == (grid, grid):
    return patch_pos
  rows = torch_bicubic_matrix(grid, h, (h + DINO_SCALE_OFFSET) / grid)
  cols = torch_bicubic_matrix(grid, w, (w + DINO_SCALE_OFFSET) / grid)
  table = patch_pos.reshape(grid, grid, -1)
  # Separable: resize rows, then columns (float64 matrices cast to the table dtype).
  out = jnp.einsum("hy,yxd->hxd", jnp.asarray(rows, patch_pos.dtype), table,
                   precision=jax.lax.Precision.HIGHEST)
  out = jnp.einsum("wx,hxd->hwd", jnp.asarray(cols, patch_pos.dtype), out,
                   precision=jax.lax.Precision.HIGHEST)
  return out.reshape(h * w, -1)


def _dense_params(module: nn.Module, fan_in: int, features: int, use_bias: bool, dtype):
  """nn.Dense's parameters (same names, shapes and initialisers), cast to dtype."""
  kernel = module.param("kernel", nn.initializers.lecun_normal(), (fan_in, features))
  bias = (module.param("bias", nn.initializers.zeros_init(), (features,))
          if use_bias else jnp.zeros((features,)))
  return kernel.astype(dtype), bias.astype(dtype)


class HeadSplitDense(nn.Module):
  """nn.Dense to `parts` x `heads` outputs laid out head-major: (B, L, D) ->
  (parts, B, H, L, C). Parameters are stored as nn.Dense stores them, so
  converted DINO weights load unchanged; keeping heads outside the token axis
  lets XLA run the attention matmuls without transposes."""
  features: int
  parts: int
  heads: int
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel, bias = _dense_params(self, x.shape[-1], self.features, self.use_bias, self.dtype)
    c = self.features // (self.parts * self.heads)
    kernel = kernel.reshape(x.shape[-1], self.parts, self.heads, c)
    y = jnp.einsum("bld,dphc->pbhlc", x.astype(self.dtype), kernel)
    return y + bias.reshape(self.parts, 1, self.heads, 1, c)


class HeadMergeDense(nn.Module):
  """nn.Dense over concatenated heads, from head-major input: (B, H, L, C) ->
  (B, L, features)."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    _, h, _, c = x.shape
    kernel, bias = _dense_params(self, h * c, self.features, True, self.dtype)
    return jnp.einsum("bhlc,hcd->bld", x, kernel.reshape(h, c, self.features)) + bias


def gelu(x):
  """Exact (erf) GELU as torch computes it, x / 2 * (1 + erf(x / sqrt(2))): the
  same function as nn.gelu(approximate=False), whose erfc form XLA expands into
  two polynomials, an exp and selects (the MLP 1.14x slower on CPU)."""
  return 0.5 * x * (1.0 + jax.lax.erf(x * (2.0 ** -0.5)))


def padded_attention(q, k, v, implementation: str, multiple: int, pad_value: float = 0.0):
  """softmax(q k^T / sqrt(C)) v by jax.nn.dot_product_attention on (B, H, L, C) inputs,
  the tokens padded with `pad_value` up to a multiple of `multiple` and the true
  length L passed as the query and key/value lengths: padded keys are masked out
  and padded query rows dropped, so the result is the unpadded attention's."""
  b, _, l, _ = q.shape
  padded = -(-l // multiple) * multiple

  def tokens_major(t):  # (B, H, L, C) -> (B, L_padded, H, C), dot_product_attention's layout
    t = t.transpose(0, 2, 1, 3)
    return jnp.pad(t, ((0, 0), (0, padded - l), (0, 0), (0, 0)), constant_values=pad_value)

  lengths = jnp.full((b,), l, jnp.int32)
  out = jax.nn.dot_product_attention(
      tokens_major(q), tokens_major(k), tokens_major(v), query_seq_lengths=lengths,
      key_value_seq_lengths=lengths, implementation=implementation)
  return out[:, :l].transpose(0, 2, 1, 3)


def softmax_weighted(logits, weigh, dtype):
  """weigh(softmax(logits)) with the normalisation after `weigh` (the value
  matmul, (..., L) weights -> (..., C)): the same function as jax.nn.softmax
  first (the max shift cancels), with a cheaper backward pass."""
  weights = jnp.exp(logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True)))
  return weigh(weights.astype(dtype)) / jnp.sum(weights, axis=-1)[..., None].astype(dtype)


def einsum_attention(q, k, v, dtype):
  """softmax(q k^T / sqrt(C)) v on (B, H, L, C) inputs by the ViT's own einsums."""
  logits = jnp.einsum("bhlc,bhmc->bhlm", q * q.shape[-1]**-0.5, k).astype(jnp.float32)
  return softmax_weighted(logits, lambda w: jnp.einsum("bhlm,bhmc->bhlc", w, v), dtype)


def query_blocked_attention(q, k, v, dtype, block: int):
  """einsum_attention over at most `block` query rows at a time (lax.map): each
  row's softmax still spans every key, so the rows are the unblocked ones, while
  the (rows, L) logits stay a cache-sized working set at inference lengths
  (4,097 tokens: the encoder 1.15-1.2x faster on CPU). Batch and heads share one
  matmul batch axis and the keys are transposed once, outside the loop. The
  queries are padded to equal blocks, a multiple of 8 rows; padded rows are
  computed and dropped, and no key is padded."""
  b, h, l, c = q.shape
  num_blocks = -(-l // block)
  rows = -(-l // (8 * num_blocks)) * 8
  keys_t = jnp.swapaxes(k.reshape(b * h, l, c), 1, 2)  # (BH, C, L)
  values = v.reshape(b * h, l, c)
  batched = (((2,), (1,)), ((0,), (0,)))  # (BH, R, X) x (BH, X, Y) -> (BH, R, Y)

  def attend(queries):  # (BH, rows, C)
    logits = jax.lax.dot_general(queries * c**-0.5, keys_t, batched).astype(jnp.float32)
    return softmax_weighted(logits, lambda w: jax.lax.dot_general(w, values, batched), dtype)

  padded = jnp.pad(q.reshape(b * h, l, c), ((0, 0), (0, num_blocks * rows - l), (0, 0)))
  out = jax.lax.map(attend, jnp.moveaxis(padded.reshape(b * h, num_blocks, rows, c), 1, 0))
  return jnp.moveaxis(out, 0, 1).reshape(b, h, num_blocks * rows, c)[:, :, :l]


class Attention(nn.Module):
  """Multi-head self-attention; also returns the keys, heads concatenated.
  `attention` picks the implementation (ATTENTION_IMPLEMENTATIONS): "einsum" is
  the module's own, over `attention_block` query rows at a time when the tokens
  are more (0: all at once; query_blocked_attention); "xla" and "cudnn" call
  jax.nn.dot_product_attention with the tokens padded to a multiple of
  `attention_pad` and masked (`padded_attention`).
  All three hold the same parameters."""
  num_heads: int
  qkv_bias: bool = True
  dtype: Any = jnp.float32
  attention: str = "einsum"
  attention_pad: int = 64
  attention_block: int = 0

  @nn.compact
  def __call__(self, x):
    # x: (B, L, D)
    b, l, d = x.shape
    q, k, v = HeadSplitDense(3 * d, 3, self.num_heads, self.qkv_bias, self.dtype,
                             name="qkv")(x)  # each (B, H, L, C)
    if self.attention == "einsum" and 0 < self.attention_block < l:
      out = query_blocked_attention(q, k, v, self.dtype, self.attention_block)
    elif self.attention == "einsum":
      out = einsum_attention(q, k, v, self.dtype)  # (B, H, L, C)
    elif self.attention in ("xla", "cudnn"):
      if self.attention == "cudnn" and jax.default_backend() != "gpu":
        raise ValueError(f"model.vit.attention='cudnn' needs a GPU backend, "
                         f"this one is {jax.default_backend()!r}")
      out = padded_attention(q, k, v, self.attention, self.attention_pad)
    else:
      raise ValueError(f"model.vit.attention={self.attention!r} is not one of "
                       f"{', '.join(repr(a) for a in ATTENTION_IMPLEMENTATIONS)}")
    keys = k.transpose(0, 2, 1, 3).reshape(b, l, d)
    return HeadMergeDense(d, self.dtype, name="proj")(out), keys


class Mlp(nn.Module):
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    x = nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(x)
    x = gelu(x)  # torch.nn.GELU is the exact erf form.
    return nn.Dense(d, dtype=self.dtype, name="fc2")(x)


def drop_path(x, rate: float, rng):
  """Stochastic depth on a residual branch x (B, ...): each sample's branch is
  dropped with probability `rate` and the kept ones scaled by 1 / (1 - rate)
  (DINO's `drop_path`, one draw per image)."""
  keep = 1.0 - rate
  mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(mask, x / keep, jnp.zeros_like(x))


class LayerScale(nn.Module):
  """DINOv2's LayerScale: a residual branch scaled per channel by `gamma`
  (1e-5 at initialisation, as DINOv2 trains it; converted weights bring theirs)."""
  init_value: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    gamma = self.param("gamma", nn.initializers.constant(self.init_value), (x.shape[-1],))
    return x * gamma.astype(self.dtype)


class Block(nn.Module):
  """Pre-norm transformer block: x + attn(LN(x)); x + mlp(LN(x)), each branch
  with stochastic depth at `drop_path_rate` unless `deterministic`, and with
  `layer_scale` scaled by LayerScale first (DINOv2's `ls1`, `ls2`)."""
  num_heads: int
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  layer_norm_eps: float = 1e-6
  drop_path_rate: float = 0.0
  deterministic: bool = True
  dtype: Any = jnp.float32
  layer_scale: bool = False
  attention: str = "einsum"
  attention_pad: int = 64
  attention_block: int = 0

  def branch(self, y, scale_name: str):
    """A residual branch, scaled by LayerScale `scale_name` if the block has it,
    then dropped per image in training mode."""
    if self.layer_scale:
      y = LayerScale(dtype=self.dtype, name=scale_name)(y)
    if self.deterministic or self.drop_path_rate == 0.0:
      return y
    return drop_path(y, self.drop_path_rate, self.make_rng(RNG_DROP_PATH))

  @nn.compact
  def __call__(self, x):
    norm = functools.partial(nn.LayerNorm, epsilon=self.layer_norm_eps, dtype=self.dtype)
    attention = Attention(self.num_heads, self.qkv_bias, self.dtype, self.attention,
                          self.attention_pad, self.attention_block, name="attn")
    y, keys = attention(norm(name="norm1")(x))
    x = x + self.branch(y, "ls1")
    hidden = int(x.shape[-1] * self.mlp_ratio)
    x = x + self.branch(Mlp(hidden, self.dtype, name="mlp")(norm(name="norm2")(x)), "ls2")
    return x, keys


LAYER_SCALES = (False, True)  # model.vit.layer_scale: DINO's ViT | DINOv2's


class VisionTransformer(nn.Module):
  """DINO-layout ViT. Input (B, H, W, 3) normalised images, H and W multiples of
  the patch size. Returns {'tokens', 'keys', 'prenorm_tokens': (B, h, w, D),
  'cls': (B, D)}: the output tokens (after the final LayerNorm), the last
  block's keys (heads concatenated) and output tokens before the final LayerNorm.
  With `train`, block i drops its residual branches with probability
  drop_path_rate * i / (depth - 1) (DINO's stochastic depth decay rule; rng
  stream 'drop_path'). DINOv2's ViTs set `layer_scale` and, with registers,
  `num_registers` (see the module doc). `attention`, `attention_pad` and
  `attention_block` pick the attention's implementation (Attention), not its
  function or parameters."""
  patch_size: int = 16
  dim: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  pretrain_grid: int = 14
  layer_norm_eps: float = 1e-6
  drop_path_rate: float = 0.0
  remat: bool = False
  dtype: Any = jnp.float32
  layer_scale: bool = False
  num_registers: int = 0
  attention: str = "einsum"
  attention_pad: int = 64
  attention_block: int = 0

  @nn.compact
  def __call__(self, images, train: bool = False):
    # images: (B, H, W, 3)
    b, height, width, _ = images.shape
    p = self.patch_size
    if height % p or width % p:
      raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {p}")
    h, w = height // p, width // p
    x = nn.Conv(self.dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                name="patch_embed")(images.astype(self.dtype))
    x = x.reshape(b, h * w, self.dim)
    init = nn.initializers.truncated_normal(0.02)
    cls = self.param("cls_token", init, (1, 1, self.dim))
    pos = self.param("pos_embed", init, (1, 1 + self.pretrain_grid**2, self.dim))
    patch_pos = interpolate_pos_embed(pos[0, 1:], self.pretrain_grid, h, w)
    pos = jnp.concatenate([pos[0, :1], patch_pos], axis=0)[None]
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.dim)).astype(self.dtype), x], axis=1)
    x = x + pos.astype(self.dtype)
    if self.num_registers:  # after the CLS token, without a position embedding
      registers = self.param("register_tokens", nn.initializers.normal(1e-6),
                             (1, self.num_registers, self.dim))
      registers = jnp.broadcast_to(registers, (b, self.num_registers, self.dim))
      x = jnp.concatenate([x[:, :1], registers.astype(self.dtype), x[:, 1:]], axis=1)
    block_cls = nn.remat(Block) if self.remat else Block
    rates = np.linspace(0.0, self.drop_path_rate, self.depth)
    keys = None
    for i in range(self.depth):
      x, keys = block_cls(self.num_heads, self.mlp_ratio, self.qkv_bias, self.layer_norm_eps,
                          float(rates[i]), not train, self.dtype, layer_scale=self.layer_scale,
                          attention=self.attention, attention_pad=self.attention_pad,
                          attention_block=self.attention_block, name=f"blocks_{i}")(x)
    prenorm = x
    x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm")(x)
    patches = 1 + self.num_registers  # the patch tokens follow CLS and the registers
    return {
        "tokens": x[:, patches:].reshape(b, h, w, self.dim),
        "keys": keys[:, patches:].reshape(b, h, w, self.dim),
        "prenorm_tokens": prenorm[:, patches:].reshape(b, h, w, self.dim),
        "cls": x[:, 0],
    }
