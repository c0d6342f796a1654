"""Semantic-aware masked slot attention (paper Sec. 3.3, eq. 4-7).

Stage 1 starts N slots at the learnable means mu and decomposes the frame into
N semantic masks. Stage 2 draws P slots per semantic from N(mu_n, sigma_n) and
lets them compete for the tokens inside semantic n's binarised mask only. Both
stages share the LayerNorms, q/k/v projections and the slot update; all N
semantics run in parallel as one batched einsum.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def sigma_init(key, shape, dtype=jnp.float32):
  """Xavier-uniform over (N, D) as torch initialises the code's (1, N, 1, D) log-sigma."""
  n, d = shape
  bound = np.sqrt(6.0 / ((n + 1) * d))
  return jax.random.uniform(key, shape, dtype, -bound, bound)


class MLP(nn.Module):
  """Two-layer ReLU MLP: D -> hidden -> D."""
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(x))
    return nn.Dense(x.shape[-1], dtype=self.dtype, name="fc2")(y)


def attend(queries, keys, values, eps, mask=None):
  """One slot-attention read-out (eq. 4-5, or eq. 7 with `mask`).

  queries: (B, ..., S, D) with the competing slots on axis -2; keys, values: (B, L, D);
  mask: (B, ..., L) in {0, 1} or None. Returns the logits (B, ..., S, L) and the
  updates (B, ..., S, D): values averaged with weights softmax-over-slots, masked,
  then normalised over tokens.
  """
  d = queries.shape[-1]
  logits = jnp.einsum("b...sd,bld->b...sl", queries, keys).astype(jnp.float32) * d**-0.5
  attn = jax.nn.softmax(logits, axis=-2) + eps
  if mask is not None:
    attn = attn * mask[..., None, :]
  attn = attn / (jnp.sum(attn, axis=-1, keepdims=True) + eps)
  updates = jnp.einsum("b...sl,bld->b...sd", attn.astype(values.dtype), values)
  return logits, updates


SLOT_UPDATES = ("gru", "residual")  # model.slot_update
MASK_THRESHOLDS = ("prob", "logit")  # model.mask_threshold_on
STAGES = ("both", "semantic", "instance")  # model.stages
SAMPLE_GRADS = ("reparam", "none")  # model.sample_grad


def binarize_semantic_masks(semantic_logits, threshold_on: str, tau: float):
  """M-tilde of eq. 7 from stage-1 logits (B, N, L): softmax-over-N > tau (paper)
  or logit > tau (code). No gradient flows through a hard threshold."""
  if threshold_on == "prob":
    scores = jax.nn.softmax(semantic_logits, axis=-2)
  elif threshold_on == "logit":
    scores = semantic_logits
  else:
    raise ValueError(f"model.mask_threshold_on must be one of {MASK_THRESHOLDS}, "
                     f"got {threshold_on!r}")
  return jax.lax.stop_gradient((scores > tau).astype(jnp.float32))


class SemanticAwareSlotAttention(nn.Module):
  """Two-stage slot attention over inputs (B, L, D).

  Returns a dict with `semantic_logits` (B, N, L), `semantic_slots` (B, N, D),
  `semantic_binary` (B, N, L), `instance_logits` (B, N, P, L) and
  `instance_slots` (B, N, P, D); with `stages='semantic'` P is 1 and the instance
  outputs are the semantic ones.
  """
  num_semantics: int = 16
  num_instances: int = 4
  num_iterations: int = 3
  slot_update: str = "gru"
  mlp_min_hidden: int = 128
  attn_eps: float = 1e-8
  mask_threshold_on: str = "prob"
  tau: float = 0.5
  stages: str = "both"
  sample_grad: str = "reparam"
  detach_trick: bool = False
  layer_norm_eps: float = 1e-5  # torch.nn.LayerNorm's default, as in the authors' code
  dtype: Any = jnp.float32

  def setup_checks(self):
    if self.slot_update not in SLOT_UPDATES:
      raise ValueError(f"model.slot_update must be one of {SLOT_UPDATES}, got {self.slot_update!r}")
    if self.stages not in STAGES:
      raise ValueError(f"model.stages must be one of {STAGES}, got {self.stages!r}")
    if self.sample_grad not in SAMPLE_GRADS:
      raise ValueError(f"model.sample_grad must be one of {SAMPLE_GRADS}, got {self.sample_grad!r}")

  @nn.compact
  def __call__(self, inputs, instance_noise):
    # inputs: (B, L, D); instance_noise: (B, N, P, D) standard normal.
    self.setup_checks()
    b, l, d = inputs.shape
    n = self.num_semantics
    dense = lambda name: nn.Dense(d, dtype=self.dtype, name=name)
    # Modules shared by every iteration of both stages, built once.
    norm = functools.partial(nn.LayerNorm, epsilon=self.layer_norm_eps, dtype=self.dtype)
    norm_slots = norm(name="norm_slots")
    norm_mlp = norm(name="norm_mlp")
    project_q = dense("project_q")
    mlp = MLP(max(d, self.mlp_min_hidden), self.dtype, name="mlp")
    gru = nn.GRUCell(d, dtype=self.dtype, name="gru") if self.slot_update == "gru" else None

    inputs = norm(name="norm_inputs")(inputs)
    keys = dense("project_k")(inputs)  # (B, L, D)
    values = dense("project_v")(inputs)  # (B, L, D)
    mu = self.param("mu", nn.initializers.normal(1.0), (n, d))
    log_sigma = self.param("log_sigma", sigma_init, (n, d))

    def update(slots_prev, updates):
      if gru is None:  # code: residual update
        slots = slots_prev + updates
      else:  # eq. 6
        flat_prev = slots_prev.reshape(-1, d)
        slots, _ = gru(flat_prev, updates.reshape(-1, d))
        slots = slots.reshape(slots_prev.shape)
      return slots + mlp(norm_mlp(slots))

    def iterate(init, mask):
      slots, logits = init, None
      for it in range(self.num_iterations):
        logits, updates = attend(project_q(norm_slots(slots)), keys, values, self.attn_eps, mask)
        slots = update(slots, updates)
        if self.detach_trick and it == self.num_iterations - 2:
          slots = (jax.lax.stop_gradient(slots) - jax.lax.stop_gradient(init) + init)
      return slots, logits

    # Stage 1: semantic decomposition from S = mu (eq. 4-6).
    semantic_init = jnp.broadcast_to(mu.astype(self.dtype), (b, n, d))
    if self.stages == "instance":
      semantic_slots = semantic_init
      semantic_logits = jnp.zeros((b, n, l), jnp.float32)  # uniform masks
      semantic_binary = None  # Ours-C: instances attend without semantic masks.
    else:
      semantic_slots, semantic_logits = iterate(semantic_init, None)
      semantic_binary = binarize_semantic_masks(semantic_logits, self.mask_threshold_on, self.tau)

    if self.stages == "semantic":  # Ours-B: one instance per semantic, itself.
      return {
          "semantic_logits": semantic_logits,
          "semantic_slots": semantic_slots,
          "semantic_binary": semantic_binary,
          "instance_logits": jnp.zeros((b, n, 1, l), jnp.float32),
          "instance_slots": semantic_slots[:, :, None],
      }

    # Stage 2: P Gaussian samples per semantic, masked aggregation (eq. 7).
    sigma = jnp.exp(log_sigma)
    instance_init = (mu[:, None] + sigma[:, None] * instance_noise).astype(self.dtype)
    if self.sample_grad == "none":  # torch.normal passes no gradient to mu, sigma
      instance_init = jax.lax.stop_gradient(instance_init)
    instance_slots, instance_logits = iterate(instance_init, semantic_binary)
    if semantic_binary is None:
      semantic_binary = jnp.ones((b, n, l), jnp.float32)
    return {
        "semantic_logits": semantic_logits,
        "semantic_slots": semantic_slots,
        "semantic_binary": semantic_binary,
        "instance_logits": instance_logits,
        "instance_slots": instance_slots,
    }
