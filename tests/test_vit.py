import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from smtc_jax.models import vit


def _count(params):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def test_vit_s16_parameter_count_matches_dino():
  # DINO ViT-S/16 without a head: patch embedding 295,296 + cls 384 + position
  # 197*384 + 12 blocks of 1,774,464 + final norm 768 = 21,665,664.
  model = vit.VisionTransformer()
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))
  count = _count(shapes["params"])
  print(f"ViT-S/16 encoder parameters: {count:,} ({count / 1e6:.2f}M)")
  assert abs(count - 21.7e6) <= 0.1e6
  assert count == 21_665_664


def test_vit_returns_tokens_keys_and_cls_on_a_non_square_grid():
  model = vit.VisionTransformer(patch_size=8, dim=16, depth=2, num_heads=2, pretrain_grid=4)
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 24, 40, 3))
  variables = model.init(jax.random.PRNGKey(1), images)
  out = model.apply(variables, images)
  assert out["tokens"].shape == (2, 3, 5, 16)
  assert out["keys"].shape == (2, 3, 5, 16)
  assert out["prenorm_tokens"].shape == (2, 3, 5, 16)
  # The final LayerNorm turns the last block's output into the output tokens.
  norm = variables["params"]["norm"]
  x = out["prenorm_tokens"]
  normed = (x - x.mean(-1, keepdims=True)) / jnp.sqrt(x.var(-1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(normed * norm["scale"] + norm["bias"], out["tokens"], atol=1e-5)
  assert out["cls"].shape == (2, 16)
  assert all(np.isfinite(np.asarray(x)).all() for x in out.values())


def test_last_keys_are_the_key_slice_of_the_last_qkv_projection():
  model = vit.VisionTransformer(patch_size=8, dim=16, depth=2, num_heads=2, pretrain_grid=2)
  images = jax.random.normal(jax.random.PRNGKey(0), (1, 16, 16, 3))
  variables = model.init(jax.random.PRNGKey(1), images)
  _, state = model.apply(variables, images, capture_intermediates=True)
  # Recompute keys from the last block's normalised input.
  block_in = state["intermediates"]["blocks_0"]["__call__"][0][0]
  p = variables["params"]["blocks_1"]
  mean = block_in.mean(-1, keepdims=True)
  var = block_in.var(-1, keepdims=True)
  normed = (block_in - mean) / jnp.sqrt(var + 1e-6) * p["norm1"]["scale"] + p["norm1"]["bias"]
  qkv = normed @ p["attn"]["qkv"]["kernel"] + p["attn"]["qkv"]["bias"]
  expected = qkv[:, 1:, 16:32].reshape(1, 2, 2, 16)
  np.testing.assert_allclose(model.apply(variables, images)["keys"], expected, rtol=1e-4, atol=1e-5)


def test_bicubic_matrix_is_identity_at_scale_one_and_preserves_constants():
  np.testing.assert_allclose(vit.torch_bicubic_matrix(7, 7, 1.0), np.eye(7), atol=1e-12)
  for n_in, n_out in [(14, 16), (14, 30), (14, 53), (14, 8)]:
    matrix = vit.torch_bicubic_matrix(n_in, n_out, (n_out + 0.1) / n_in)
    assert matrix.shape == (n_out, n_in)
    np.testing.assert_allclose(matrix.sum(1), 1.0, atol=1e-12)


def test_bicubic_upsampling_matches_pytorch_values():
  # torch.nn.functional.interpolate(torch.tensor([[[[0., 1., 3., 2.]]]]),
  # scale_factor=(1, 2), mode="bicubic") as printed by PyTorch 2.13; the
  # a = -0.75 kernel overshoots, unlike jax.image.resize's a = -0.5.
  expected = np.array([-0.10546875, 0.15625, 0.5625, 1.59375,
                       2.6875, 2.984375, 2.296875, 1.89453125])
  got = vit.torch_bicubic_matrix(4, 8, 2.0) @ np.array([0.0, 1.0, 3.0, 2.0])
  np.testing.assert_allclose(got, expected, atol=1e-6)


def test_position_embedding_is_untouched_on_the_pretraining_grid():
  table = jax.random.normal(jax.random.PRNGKey(0), (16, 8))
  np.testing.assert_array_equal(vit.interpolate_pos_embed(table, 4, 4, 4), table)
  assert vit.interpolate_pos_embed(table, 4, 3, 7).shape == (21, 8)


def test_drop_path_zeroes_whole_images_and_keeps_the_mean():
  x = jnp.ones((4000, 3, 2))
  out = np.asarray(vit.drop_path(x, 0.25, jax.random.PRNGKey(0)))
  per_image = out.reshape(4000, -1)
  assert set(np.unique(per_image)) == {0.0, np.float32(1.0 / 0.75)}
  assert (per_image == per_image[:, :1]).all()  # one draw per image
  assert abs(per_image[:, 0].mean() - 1.0) < 0.05  # unbiased


def test_stochastic_depth_acts_in_training_mode_only():
  kwargs = dict(patch_size=8, dim=16, depth=3, num_heads=2, pretrain_grid=2)
  images = jax.random.normal(jax.random.PRNGKey(0), (6, 16, 16, 3))
  plain = vit.VisionTransformer(**kwargs)
  dropping = vit.VisionTransformer(drop_path_rate=0.5, **kwargs)
  variables = plain.init(jax.random.PRNGKey(1), images)
  reference = plain.apply(variables, images)["tokens"]
  # Evaluation (and the teacher) is deterministic whatever the rate.
  np.testing.assert_array_equal(dropping.apply(variables, images)["tokens"], reference)
  np.testing.assert_array_equal(plain.apply(variables, images, train=True)["tokens"], reference)
  rngs = {vit.RNG_DROP_PATH: jax.random.PRNGKey(2)}
  trained = np.asarray(dropping.apply(variables, images, train=True, rngs=rngs)["tokens"])
  assert np.abs(trained - np.asarray(reference)).max() > 1e-3
  again = dropping.apply(variables, images, train=True, rngs=rngs)["tokens"]
  np.testing.assert_array_equal(again, trained)  # a function of the rng
  other = dropping.apply(variables, images, train=True,
                         rngs={vit.RNG_DROP_PATH: jax.random.PRNGKey(3)})["tokens"]
  assert np.abs(np.asarray(other) - trained).max() > 1e-3


def test_gelu_is_the_exact_erf_gelu_and_its_derivative():
  # Against float64 x * Phi(x) from scipy, and its derivative Phi(x) + x * phi(x).
  x = np.linspace(-8.0, 8.0, 4001).astype(np.float32)
  x64 = x.astype(np.float64)
  np.testing.assert_allclose(vit.gelu(jnp.asarray(x)), x64 * special.ndtr(x64), rtol=1e-6, atol=1e-6)
  grad = jax.vmap(jax.grad(vit.gelu))(jnp.asarray(x))
  expected = special.ndtr(x64) + x64 * stats.norm.pdf(x64)
  np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-6)
  # The same function as flax's exact GELU (its erfc form).
  np.testing.assert_allclose(vit.gelu(jnp.asarray(x)), jax.nn.gelu(jnp.asarray(x), approximate=False),
                             rtol=1e-6, atol=1e-6)


def test_dinov2_parameter_counts_match_the_released_models():
  # dinov2_vits14: 22,056,576 parameters, dinov2_vitb14_reg4: 86,583,552, each
  # less its mask_token (one D-vector, used only by DINOv2's masked-image loss).
  for dim, heads, registers, count in [(384, 6, 0, 22_056_576 - 384), (768, 12, 4, 86_583_552 - 768)]:
    model = vit.VisionTransformer(patch_size=14, dim=dim, num_heads=heads, pretrain_grid=37,
                                  layer_scale=True, num_registers=registers)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 308, 3)))
    assert _count(shapes["params"]) == count
    assert shapes["params"]["blocks_0"]["ls1"]["gamma"].shape == (dim,)


def test_registers_attend_but_leave_the_token_grid():
  kwargs = dict(patch_size=7, dim=16, depth=2, num_heads=2, pretrain_grid=5)
  model = vit.VisionTransformer(num_registers=3, **kwargs)
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 21, 35, 3))
  variables = model.init(jax.random.PRNGKey(1), images)
  assert variables["params"]["register_tokens"].shape == (1, 3, 16)
  out = model.apply(variables, images)
  for name in ("tokens", "keys", "prenorm_tokens"):
    assert out[name].shape == (2, 3, 5, 16)
  # The registers are in the sequence (other registers change every patch token) ...
  other = jax.random.normal(jax.random.PRNGKey(2), (1, 3, 16))
  params = dict(variables["params"], register_tokens=other)
  moved = model.apply({"params": params}, images)["tokens"]
  assert np.abs(np.asarray(moved - out["tokens"])).max() > 1e-3
  # ... and without them the same weights are a ViT over CLS and patches alone.
  plain = vit.VisionTransformer(**kwargs)
  rest = {k: v for k, v in variables["params"].items() if k != "register_tokens"}
  assert plain.apply({"params": rest}, images)["tokens"].shape == (2, 3, 5, 16)


def test_layer_scale_scales_each_residual_branch():
  # With every gamma 0 each block is the identity: the last block's output is the
  # patch embedding plus the position embedding.
  model = vit.VisionTransformer(patch_size=8, dim=16, depth=2, num_heads=2, pretrain_grid=2,
                                layer_scale=True)
  images = jax.random.normal(jax.random.PRNGKey(0), (1, 16, 16, 3))
  params = model.init(jax.random.PRNGKey(1), images)["params"]
  np.testing.assert_allclose(params["blocks_0"]["ls2"]["gamma"], 1e-5)  # DINOv2's init
  zero = jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.zeros_like(x) if "gamma" in jax.tree_util.keystr(path) else x, params)
  out = model.apply({"params": zero}, images)["prenorm_tokens"]
  embed = params["patch_embed"]
  patches = jax.lax.conv_general_dilated(images, embed["kernel"], (8, 8), "VALID",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
  expected = patches + embed["bias"] + params["pos_embed"][0, 1:].reshape(2, 2, 16)
  np.testing.assert_allclose(out, expected, atol=1e-5)


def _tiny_vit(attention, dtype=jnp.float32):
  # 1 + 5x7 = 36 tokens, not a multiple of the pad (16): 12 padded keys to mask.
  return vit.VisionTransformer(patch_size=4, dim=16, depth=2, num_heads=2, pretrain_grid=4,
                               dtype=dtype, attention=attention, attention_pad=16)


def test_padded_xla_attention_equals_the_einsum_path_forward_and_gradients():
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 20, 28, 3))
  variables = jax.jit(_tiny_vit("einsum").init)(jax.random.PRNGKey(1), images)
  # The same parameters (names and shapes) load under either implementation.
  assert (jax.eval_shape(_tiny_vit("xla").init, jax.random.PRNGKey(1), images)
          == jax.eval_shape(lambda: variables))

  def loss(params, attention):
    out = _tiny_vit(attention).apply({"params": params}, images)
    return jnp.sum(out["tokens"] ** 2) + jnp.sum(jnp.sin(out["keys"])), out

  value_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
  (_, want), grads_want = value_and_grad(variables["params"], "einsum")
  (_, got), grads_got = value_and_grad(variables["params"], "xla")
  for name in ("tokens", "keys", "prenorm_tokens", "cls"):
    np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=name)
  for path, g in jax.tree_util.tree_leaves_with_path(grads_got):
    assert np.isfinite(np.asarray(g)).all(), path
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               grads_got, grads_want)
  # bf16 compute runs and stays near the float32 result.
  bf16 = jax.jit(_tiny_vit("xla", jnp.bfloat16).apply)(variables, images)["tokens"]
  assert bf16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(bf16, np.float32), want["tokens"], atol=0.1)


def test_padded_tokens_do_not_leak_into_the_attention():
  q, k, v = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 3, 13, 8))  # (B, H, L, C) each
  logits = jnp.einsum("bhlc,bhmc->bhlm", q, k) / np.sqrt(8)
  want = jnp.einsum("bhlm,bhmc->bhlc", jax.nn.softmax(logits, axis=-1), v)
  attention = jax.jit(lambda q, k, v, pad: vit.padded_attention(q, k, v, "xla", 8, pad))
  for pad_value in (0.0, 1e3, -7.0):
    got = attention(q, k, v, pad_value)  # 13 tokens padded to 16
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=str(pad_value))


def test_cudnn_attention_off_a_gpu_is_refused_in_one_line():
  if jax.default_backend() == "gpu":
    pytest.skip("a GPU backend runs cuDNN's attention")
  images = jnp.zeros((1, 20, 28, 3))
  with pytest.raises(ValueError) as error:
    jax.eval_shape(_tiny_vit("cudnn", jnp.bfloat16).init, jax.random.PRNGKey(0), images)
  assert str(error.value) == "model.vit.attention='cudnn' needs a GPU backend, this one is 'cpu'"


def test_query_blocked_attention_is_the_softmax_attention_rows_and_gradients():
  # 13 queries in blocks of at most 4: 4 blocks of 8 rows (a multiple of 8), 19 padded rows.
  q, k, v = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 3, 13, 8))  # (B, H, L, C) each
  logits = jnp.einsum("bhlc,bhmc->bhlm", q, k) / np.sqrt(8)
  want = jnp.einsum("bhlm,bhmc->bhlc", jax.nn.softmax(logits, axis=-1), v)
  for block in (1, 4, 12):
    got = jax.jit(vit.query_blocked_attention, static_argnums=(3, 4))(q, k, v, jnp.float32, block)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=str(block))

  def loss(q, k, v, blocked):
    out = (vit.query_blocked_attention(q, k, v, jnp.float32, 4) if blocked
           else vit.einsum_attention(q, k, v, jnp.float32))
    return jnp.sum(jnp.sin(out))

  grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)
  for got, want_grad in zip(grad(q, k, v, True), grad(q, k, v, False)):
    np.testing.assert_allclose(got, want_grad, rtol=1e-5, atol=1e-6)


def test_attention_block_leaves_the_vit_outputs_unchanged():
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 20, 28, 3))  # 36 tokens
  whole = vit.VisionTransformer(patch_size=4, dim=16, depth=2, num_heads=2, pretrain_grid=4)
  variables = jax.jit(whole.init)(jax.random.PRNGKey(1), images)
  want = jax.jit(whole.apply)(variables, images)
  got = jax.jit(whole.clone(attention_block=10).apply)(variables, images)  # 4 blocks of 16
  for name in ("tokens", "keys", "prenorm_tokens", "cls"):
    np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)
