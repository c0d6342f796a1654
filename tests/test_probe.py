"""The object/background linear probe of encoder features (evaluation/probe.py)."""

import numpy as np

from smtc_jax.evaluation import probe


def test_a_cell_is_object_when_most_of_its_pixels_are():
  labels = np.zeros((1, 4, 4), np.uint8)
  labels[0, :2, :2] = 1  # the top-left cell is all object
  labels[0, 2, 2] = 3  # one pixel of four: background
  labels[0, :2, 2:] = 255  # void counts as background
  np.testing.assert_array_equal(probe.cell_labels(labels, (2, 2))[0], [[True, False], [False, False]])


def test_the_probe_finds_a_linear_boundary_and_chance_is_one_half():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2000, 8))
  y = x[:, 3] - 0.5 * x[:, 5] > 1.0  # a rare class (~13 %), linear in two features
  model = probe.fit_ridge(x[:1000], y[:1000])
  assert probe.balanced_accuracy(probe.predict(model, x[1000:]), y[1000:]) > 0.9
  noise = probe.fit_ridge(rng.normal(size=(1000, 8)), y[:1000])
  assert abs(probe.balanced_accuracy(probe.predict(noise, x[1000:]), y[1000:]) - 0.5) < 0.1
  # Saying "background" everywhere scores one half, however rare objects are.
  assert probe.balanced_accuracy(np.zeros(1000, bool), y[1000:]) == 0.5


def test_the_semantic_bound_unites_the_semantics_that_are_mostly_object():
  truth = np.zeros((1, 4, 4), np.uint8)
  truth[0, :2, :2] = 1
  truth[0, 3, 3] = 255  # void: neither counted nor scored
  semantic = np.zeros((1, 4, 4), np.uint8)
  semantic[0, :2, :] = 2  # 4 object pixels of 8: not mostly object
  semantic[0, 0, 0] = 3  # all object
  # Only semantic 3 is chosen: IoU 1 / 4.
  assert probe.semantic_bound(semantic, truth) == 0.25
  semantic[0, :2, 2:] = 5  # now semantic 2 is all object too
  assert probe.semantic_bound(semantic, truth) == 1.0


def test_still_background_counts_the_background_cells_matched_in_place():
  peaks = np.array([4, 4, 0, 8, 4])  # radius 1: index 4 is zero displacement
  background = np.array([True, True, True, False, False])
  assert probe.still_share(peaks, background, radius=1) == 2 / 3
