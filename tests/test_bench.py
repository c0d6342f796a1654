"""The step benchmark's profile parsing (what it reports, not how fast anything is)."""

import jax
import jax.numpy as jnp
import numpy as np

from smtc_jax import bench
from smtc_jax.evaluation import readers


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


def test_step_flops_count_the_whole_batch_whatever_the_micro_batches():
  # A micro-batched step's module holds one micro-batch in a loop body that XLA's cost
  # analysis counts once; the benchmark counts the same step over the whole batch.
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from smtc_jax import sharding  # pylint: disable=g-import-not-at-top
  from smtc_jax.training import state as state_lib  # pylint: disable=g-import-not-at-top
  from smtc_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top
  config = tiny.get_config()
  config.data.batch_size = 2
  mesh = sharding.make_mesh()
  model, optimizer, state, state_sharding = state_lib.build(config, mesh)
  batch = bench.random_batch(config, mesh)

  def lowered_flops(microbatch):
    config.train.microbatch = microbatch
    step = step_lib.compile_train_steps(config, model, optimizer, mesh, state_sharding)[False]
    return bench._flops_of(step.lower(state, batch))  # pylint: disable=protected-access

  whole, looped = lowered_flops(0), lowered_flops(1)
  assert looped < 0.75 * whole
  counted = bench.step_flops(config, model, optimizer, mesh, state_sharding, state, batch, False)
  assert counted == whole


def test_the_propagation_video_is_written_as_a_davis_folder_our_reader_reads_back(tmp_path):
  t, y, x, c = np.meshgrid(np.arange(3), np.arange(32), np.arange(48), np.arange(3), indexing="ij")
  frames = (2 * x + 2 * y + 10 * t + 30 * c).astype(np.uint8)  # smooth: JPEG keeps it close
  labels = np.zeros((3, 32, 48), np.uint8)
  labels[:, 4:12, 8:20] = 1
  labels[:, 20:30, 30:44] = 2
  bench.write_davis_video(str(tmp_path), "bench", frames, labels)
  video = readers.davis2017_load(str(tmp_path), "val", "bench")
  np.testing.assert_array_equal(video.labels, labels)
  assert video.frames.shape == frames.shape  # JPEG: close, not equal
  assert np.abs(video.frames.astype(int) - frames).mean() < 3
  images, annotations = (tmp_path / "filelist.txt").read_text().split()
  assert images == str(tmp_path / "JPEGImages" / "480p" / "bench")
  assert annotations == str(tmp_path / "Annotations" / "480p" / "bench")


def test_the_fed_step_runs_one_step_per_batch_drawn_in_order():
  # --fed times the loop's pattern: the state it leaves is the one the same batches give
  # stepped one by one, and it draws exactly warmup + steps batches.
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from smtc_jax import sharding  # pylint: disable=g-import-not-at-top
  from smtc_jax.training import state as state_lib  # pylint: disable=g-import-not-at-top
  from smtc_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top
  config = tiny.get_config()
  config.data.batch_size = 2
  mesh = sharding.make_mesh()
  model, optimizer, state, state_sharding = state_lib.build(config, mesh)
  step = step_lib.compile_train_steps(config, model, optimizer, mesh, state_sharding)[False]
  rng = np.random.default_rng(0)
  shape = (2, config.data.num_frames, *config.data.resolution, 3)
  batches = [{k: rng.integers(0, 256, shape, dtype=np.uint8) for k in ("student", "teacher")}
             for _ in range(4)]
  expected = jax.tree.map(jnp.copy, state)
  for batch in batches[:3]:
    expected, _ = step(expected, sharding.global_batch(batch, mesh))
  iterator = iter(batches)
  holder = [state]
  seconds = bench.fed_step_seconds(step, holder, iterator, mesh, steps=2, warmup=1)
  assert seconds > 0
  assert int(holder[0].step) == 3
  assert next(iterator) is batches[3]
  for got, want in zip(jax.tree.leaves(holder[0].params), jax.tree.leaves(expected.params)):
    np.testing.assert_array_equal(got, want)
