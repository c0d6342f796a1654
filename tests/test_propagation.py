import os

import numpy as np
import pytest

from smtc_jax.data import palette, synthetic
from smtc_jax.evaluation import davis, propagation


def test_propagation_with_ground_truth_features_returns_the_ground_truth(tmp_path):
  spec = synthetic.SyntheticSpec(num_train=1, num_val=2, num_frames=10, size=32, seed=1)
  root = synthetic.ensure_synthetic_davis(str(tmp_path / "s"), spec)
  for video in ("val000", "val001"):
    folder = os.path.join(root, synthetic.ANNOTATION_DIR, video)
    labels = np.stack([palette.read_palette_png(os.path.join(folder, f))
                       for f in sorted(os.listdir(folder))])
    num = int(labels.max()) + 1
    feats = np.eye(num, dtype=np.float32)[labels]  # one-hot "features" at full resolution
    out = propagation.propagate_video(feats, feats[0], video_len=20, radius=3, topk=7,
                                      temperature=0.2)
    predicted = np.asarray(out).argmax(-1)
    # As in DAVIS, the objects are those of the first frame: one hidden there
    # cannot be propagated and counts as background. Parts of an object that
    # re-emerge from behind another farther than the radius from any visible part
    # cannot be recovered either (seen: 0.6% of the cells).
    present = np.isin(labels, np.unique(labels[0]))
    expected = np.where(present, labels, 0)
    assert np.mean(predicted == expected) > 0.99
    for k in np.unique(labels[0])[1:]:
      assert davis.j_measures(expected[1:] == k, predicted[1:] == k).mean() > 0.8


def test_radius_restricts_the_context():
  # 1 x 5 grid; context label 1 only at cell 4. Query cell 0 with radius 2 cannot
  # see it; with radius 4 it can.
  feats = np.ones((2, 1, 5, 3), np.float32)
  first = np.zeros((1, 5, 2), np.float32)
  first[..., 0] = 1.0
  first[0, 4] = [0.0, 1.0]
  near = propagation.propagate_video(feats, first, video_len=1, radius=2, topk=5,
                                     temperature=0.2)[1]
  far = propagation.propagate_video(feats, first, video_len=1, radius=4, topk=5,
                                    temperature=0.2)[1]
  assert float(near[0, 0, 1]) == 0.0
  assert float(far[0, 0, 1]) == pytest.approx(1 / 5)  # 5 equally similar cells


def test_topk_keeps_only_the_most_similar_cells():
  # Query cell 0's feature equals context cell 1's; others are orthogonal.
  feats = np.zeros((2, 1, 4, 4), np.float32)
  feats[0, 0] = np.eye(4)
  feats[1, 0, 0] = feats[0, 0, 1]
  feats[1, 0, 1:] = np.eye(4)[[0, 2, 3]]
  first = np.eye(4, dtype=np.float32)[None]  # cell i has label i
  out = propagation.propagate_video(feats, first, video_len=1, radius=10, topk=1,
                                    temperature=0.2)
  assert int(np.argmax(out[1, 0, 0])) == 1
  np.testing.assert_allclose(out[1, 0, 0], np.eye(4)[1])


def test_one_hot_on_grid_averages_areas():
  labels = np.zeros((4, 4), np.int64)
  labels[:2, :2] = 1
  labels[0, 3] = 2
  grid = propagation.one_hot_on_grid(labels, 3, (2, 2))
  np.testing.assert_allclose(grid[0, 0], [0, 1, 0])
  np.testing.assert_allclose(grid[0, 1], [0.75, 0, 0.25])
