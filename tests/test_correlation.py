"""The local (motion) correlation, model.correlation='local'."""

import jax
import jax.numpy as jnp
import numpy as np

from configs import tiny
from smtc_jax.models import smtc


def test_the_window_is_counted_in_partner_cells_at_any_token_grid():
  index, inside = smtc.window_indices((8, 8), (4, 4), radius=1)
  assert index.shape == (64, 9)
  # Token (5, 2) of the 8 x 8 grid sits at cell (2, 1) of the 4 x 4 partner grid.
  np.testing.assert_array_equal(index[5 * 8 + 2].reshape(3, 3), [[4, 5, 6], [8, 9, 10], [12, 13, 14]])
  assert inside[5 * 8 + 2].all()
  assert inside[0].reshape(3, 3).tolist() == [[False] * 3, [False, True, True], [False, True, True]]


def test_each_token_finds_where_its_content_moved_whatever_it_looks_like():
  rng = np.random.default_rng(0)
  frame = rng.normal(size=(1, 1, 8, 8, 16)).astype(np.float32)
  moved = np.roll(frame, (1, -2), axis=(2, 3))  # the content moves 1 down, 2 left
  corr = smtc.local_correlation(jnp.asarray(frame.reshape(1, 1, 64, 16)), jnp.asarray(moved),
                                (8, 8), radius=2, temperature=0.05)
  np.testing.assert_allclose(np.asarray(corr).sum(-1), 1.0, rtol=1e-5)
  peak = np.asarray(corr[0, 0]).argmax(-1).reshape(8, 8)
  offset = (1 + 2) * 5 + (-2 + 2)  # (dy, dx) = (1, -2) in the 5 x 5 window
  assert (peak[1:6, 2:6] == offset).all()  # every token whose window holds its match
  # The same motion of other content gives the same answer.
  other = rng.normal(size=frame.shape).astype(np.float32) * 3
  corr2 = smtc.local_correlation(jnp.asarray(other.reshape(1, 1, 64, 16)),
                                 jnp.asarray(np.roll(other, (1, -2), axis=(2, 3))), (8, 8), 2, 0.05)
  np.testing.assert_array_equal(np.asarray(corr2[0, 0]).argmax(-1).reshape(8, 8)[1:6, 2:6], offset)


def test_the_model_reads_the_switch():
  config = tiny.get_config()
  clip = jax.random.uniform(jax.random.PRNGKey(1), (1, config.data.num_frames,
                                                    *config.data.resolution, 3)) * 255
  outs = {}
  for kind in ("global", "local"):
    config.model.correlation = kind
    model = smtc.build_model(config)
    variables, _ = smtc.init_variables(config, model, jax.random.PRNGKey(0))
    rngs = smtc.model_rngs(jax.random.PRNGKey(2))
    outs[kind] = model.apply(variables, smtc.normalize(clip, config), rngs=rngs)
    h_c = variables["params"]["h_c"]["kernel"]
    grid = np.prod([r // config.model.vit.patch_size for r in config.data.resolution])
    assert h_c.shape[0] == (grid if kind == "global" else (2 * config.model.corr_radius + 1) ** 2)
  assert not np.allclose(outs["global"]["semantic_masks"], outs["local"]["semantic_masks"])
