"""The step benchmark's profile parsing (what it reports, not how fast anything is)."""

import jax
import jax.numpy as jnp
import numpy as np

from smtc_jax import bench


def test_profile_groups_traced_ops_by_hlo_kind_and_shape(tmp_path):
  a = jnp.asarray(np.random.default_rng(0).normal(size=(64, 32)), jnp.float32)
  b = jnp.asarray(np.random.default_rng(1).normal(size=(32, 48)), jnp.float32)
  f = jax.jit(lambda x, y: jnp.exp(x @ y).sum(axis=0))
  compiled = f.lower(a, b).compile()
  kinds = bench.hlo_op_kinds(compiled.as_text())
  assert any("dot" in kind for _, kind in kinds.values())
  rows = bench.profile_ops(lambda: compiled(a, b), compiled, str(tmp_path), steps=2, top=5)
  assert rows and all(set(r) == {"kind", "shape", "ops", "ms_per_step", "share"} for r in rows)
  assert any("dot" in r["kind"] for r in rows)
  assert 0 < sum(r["share"] for r in rows) <= 1 + 1e-9
