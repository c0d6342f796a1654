"""Encoder pretraining (smtc_jax/pretrain.py): view geometry, the teacher's
balanced targets, the loss, and the stage chained before SMTC training."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from smtc_jax import checkpoint, pretrain, sharding
from smtc_jax.data import pipeline
from smtc_jax.models import smtc


def _no_photometric(spec):
  return dataclasses.replace(spec, jitter_prob=0.0, gray_prob=0.0, blur_prob=0.0)


def test_identical_views_map_every_token_onto_itself():
  centres = jnp.asarray(pretrain.token_centres(4, 6))
  box = jnp.array([0.1, 0.2, 0.5, 0.6, 0.0])
  points, inside = pretrain.corresponding_points(centres, box, box)
  np.testing.assert_allclose(points, centres, atol=1e-6)
  assert bool(inside.all())


def test_a_flipped_half_frame_view_lands_mirrored_in_the_whole_frame():
  centres = jnp.asarray(pretrain.token_centres(2, 2))  # (y, x) at 1/4 and 3/4
  left_half = jnp.array([0.0, 0.0, 1.0, 0.5, 0.0])
  whole_flipped = jnp.array([0.0, 0.0, 1.0, 1.0, 1.0])
  points, inside = pretrain.corresponding_points(centres, left_half, whole_flipped)
  # x = 1/4 of the left half is 1/8 of the frame, 7/8 of the flipped view.
  np.testing.assert_allclose(points[:, 1], [0.875, 0.625, 0.875, 0.625], atol=1e-6)
  np.testing.assert_allclose(points[:, 0], centres[:, 0], atol=1e-6)
  assert bool(inside.all())
  _, inside = pretrain.corresponding_points(centres, whole_flipped, left_half)
  # The right half of the frame (the flipped view's left tokens) is outside.
  np.testing.assert_array_equal(inside, [False, True, False, True])


def test_bilinear_sample_reads_cell_centres_exactly_and_interpolates_between():
  maps = jnp.arange(12.0).reshape(3, 4, 1)
  centres = jnp.asarray(pretrain.token_centres(3, 4))
  np.testing.assert_allclose(pretrain.bilinear_sample(maps, centres)[:, 0], np.arange(12.0))
  between = jnp.array([[0.5 / 3, 1.0 / 4]])  # row 0, halfway between columns 0 and 1
  np.testing.assert_allclose(pretrain.bilinear_sample(maps, between)[0, 0], 0.5, atol=1e-6)


def test_views_show_the_same_frame_content_at_corresponding_points(tmp_path):
  """The boxes a SampleViews example carries locate view A's pixels in view B:
  on a smooth frame, the colours there agree."""
  size = 64
  y, x = np.mgrid[0:size, 0:size].astype(np.float32)
  frame = np.stack([x * 4, y * 4, (x + y) * 2], -1).clip(0, 255).astype(np.uint8)
  spec = _no_photometric(dataclasses.replace(
      pipeline.ClipSpec.from_config(tiny.get_config().data), resolution=(32, 32),
      crop_scale=(0.3, 0.6), hflip_prob=0.5))
  sample = pipeline.SampleViews(spec, local_side=(0.4, 0.7))
  video = {"name": "ramp", "frames": frame[None]}
  checked = 0
  for seed in range(6):
    example = sample.random_map(video, np.random.default_rng(seed))
    views, boxes = example["views"].astype(np.float32), jnp.asarray(example["boxes"])
    centres = jnp.asarray(pretrain.token_centres(8, 8))
    # Every point of the local view lies in the global one.
    points, inside = pretrain.corresponding_points(centres, boxes[1], boxes[0])
    mine = pretrain.bilinear_sample(jnp.asarray(views[1]), centres)
    theirs = pretrain.bilinear_sample(jnp.asarray(views[0]), points)
    inside = np.asarray(inside)
    assert inside.all()
    checked += inside.sum()
    # The ramp rises 4 levels a frame pixel: a misplaced point is off by tens.
    np.testing.assert_allclose(np.asarray(mine)[inside], np.asarray(theirs)[inside], atol=6.0)
  assert checked > 100


def test_teacher_targets_are_distributions_balanced_over_the_prototypes():
  scores = jax.random.uniform(jax.random.PRNGKey(0), (256, 8), minval=-1.0, maxval=1.0)
  targets = pretrain.balanced_assignments(scores, epsilon=0.05, num_iters=100)
  np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-5)
  # Each prototype receives the same total mass, n / K tokens' worth.
  np.testing.assert_allclose(targets.sum(0), 256 / 8, rtol=1e-2)
  # Without balancing, the argmax of the raw scores is far from uniform in general;
  # the balanced targets still prefer higher-scoring prototypes for each token.
  assert float(jnp.mean(jnp.argmax(targets, -1) == jnp.argmax(scores, -1))) > 0.3


def test_distillation_loss_is_lowest_when_the_local_student_matches_the_global_teacher():
  b, h, w, k = 2, 4, 4, 6
  teacher = jax.random.normal(jax.random.PRNGKey(1), (b, 2, h, w, k))
  boxes = jnp.tile(jnp.array([0.0, 0.0, 1.0, 1.0, 0.0]), (b, 2, 1))  # identical views
  args = dict(temperature=0.1, epsilon=0.05, num_iters=50)
  targets = pretrain.balanced_assignments(teacher[:, 0].reshape(-1, k), epsilon=0.05,
                                          num_iters=50).reshape(b, h, w, k)
  # The local view's student predicts the global view's teacher: softmax(matched / 0.1)
  # is the global view's target; the student's global view plays no part.
  matched = jnp.stack([jnp.zeros_like(targets), jnp.log(targets + 1e-9) * 0.1], axis=1)
  loss_matched, metrics = pretrain.dense_distillation_loss(matched, teacher, boxes, **args)
  noise = jax.random.normal(jax.random.PRNGKey(2), teacher.shape)
  loss_random, _ = pretrain.dense_distillation_loss(noise, teacher, boxes, **args)
  loss_other, _ = pretrain.dense_distillation_loss(matched.at[:, 0].set(noise[:, 0]), teacher,
                                                   boxes, **args)
  assert float(loss_matched) < float(loss_random)
  assert float(loss_other) == float(loss_matched)
  assert float(metrics["agreement"]) > 0.99 and float(metrics["overlap"]) == 1.0


def _pretrain_config(tmp_path):
  config = tiny.get_config()
  config.data.source = "synthetic"
  config.data.layout = "davis"
  config.data.num_workers = 0
  s = config.data.synthetic
  s.num_train, s.num_val, s.num_frames, s.size = 3, 1, 6, 32
  config.data.batch_size = 2
  config.pretrain.num_steps = 3
  config.pretrain.batch_size = 4
  config.pretrain.resolution = (16, 16)
  config.pretrain.crop_scale = (0.5, 1.0)
  config.pretrain.num_prototypes = 8
  config.pretrain.head_hidden = 16
  config.pretrain.head_bottleneck = 8
  config.train.num_steps = 2
  config.train.log_every = 1
  config.train.checkpoint_every = 2
  return config


@pytest.mark.slow
def test_pretraining_exports_the_teacher_encoder_that_training_starts_from(tmp_path):
  config = _pretrain_config(tmp_path)
  workdir = str(tmp_path / "run")
  out = pretrain.run(config, workdir)
  assert out == pretrain.export_dir(workdir)
  exported = checkpoint.load_params(out)["params"]
  saved = checkpoint.load_params(os.path.join(workdir, "pretrain", "checkpoints", "3", "state"))
  # The teacher (EMA) of the last step is what SMTC starts from, not the student.
  for leaf, teacher, student in zip(jax.tree.leaves(exported["encoder"]),
                                    jax.tree.leaves(saved["ema_params"]["encoder"]),
                                    jax.tree.leaves(saved["params"]["encoder"])):
    np.testing.assert_array_equal(leaf, teacher)
  assert any(not np.array_equal(t, s) for t, s in zip(
      jax.tree.leaves(saved["ema_params"]["encoder"]), jax.tree.leaves(saved["params"]["encoder"])))
  # A second call reuses the export; the SMTC state loads its encoder.
  assert pretrain.run(config, workdir) == out
  config.init.checkpoint = out
  from smtc_jax.training import state as state_lib  # pylint: disable=g-import-not-at-top
  _, _, state, _ = state_lib.build(config, sharding.make_mesh())
  for got, want in zip(jax.tree.leaves(state.params["encoder"]),
                       jax.tree.leaves(exported["encoder"])):
    np.testing.assert_array_equal(np.asarray(got), want)
