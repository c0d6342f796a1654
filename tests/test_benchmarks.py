"""Benchmark readers (on folders in the real layouts), JHMDB PCK, VIP mIoU, and
their evaluation path with oracle features."""

import os

import numpy as np
import pytest

from configs import tiny
from smtc_jax.evaluation import evaluate, parts, pose, predictor as predictor_lib, readers, scores
from smtc_jax.models import smtc
from tests import benchmark_layouts as layouts


@pytest.fixture(scope="module")
def data():
  return layouts.videos(count=3)


# --- Readers -------------------------------------------------------------------

def test_davis2016_reader_lists_sequences_and_binarises_masks(tmp_path, data):
  names = layouts.write_davis2016(str(tmp_path), data)
  listed, load = readers.reader("davis2016")
  assert listed(str(tmp_path), "val") == names
  video = load(str(tmp_path), "val", names[1])
  assert video.frames.shape == (8, 32, 32, 3) and video.annotated.all()
  np.testing.assert_array_equal(video.labels, data[1][1] > 0)


def test_segtrack_reader_unites_per_object_folders(tmp_path, data):
  names = layouts.write_segtrack_v2(str(tmp_path), data)
  listed, load = readers.reader("segtrack_v2")
  assert listed(str(tmp_path), "val") == names
  for name, (frames, labels) in zip(names, data):
    video = load(str(tmp_path), "val", name)
    np.testing.assert_array_equal(video.labels, labels > 0)
    np.testing.assert_array_equal(video.frames, frames)  # PNG: lossless


def test_segtrack_reader_names_a_folder_with_missing_masks(tmp_path, data):
  names = layouts.write_segtrack_v2(str(tmp_path), data)
  folder = tmp_path / "GroundTruth" / names[1]
  os.remove(sorted(folder.iterdir())[0])
  with pytest.raises(ValueError, match=f"{names[1]}.*7 masks for 8 frames"):
    readers.segtrack_v2_load(str(tmp_path), "val", names[1])


@pytest.mark.parametrize("benchmark, split, every", [("fbms", "Testset", 3), ("vip", "val", 2)])
def test_sparse_ground_truth_is_marked(tmp_path, data, benchmark, split, every):
  write = {"fbms": layouts.write_fbms, "vip": layouts.write_vip}[benchmark]
  names = write(str(tmp_path), data, every=every)
  listed, load = readers.reader(benchmark)
  assert listed(str(tmp_path), split) == names
  video = load(str(tmp_path), split, names[0])
  np.testing.assert_array_equal(np.nonzero(video.annotated)[0], np.arange(0, 8, every))
  truth = data[0][1][::every]
  # FBMS: single-object foreground from colour masks; VIP: the part ids themselves.
  np.testing.assert_array_equal(video.labels[video.annotated],
                                truth > 0 if benchmark == "fbms" else truth)
  assert not video.labels[~video.annotated].any()


def test_fbms_reader_names_a_missing_split(tmp_path, data):
  layouts.write_fbms(str(tmp_path), data)
  with pytest.raises(FileNotFoundError, match="Trainingset"):
    readers.fbms_names(str(tmp_path), "Trainingset")


def test_jhmdb_reader_keeps_the_test_split_and_converts_to_zero_based(tmp_path, data):
  names, keypoints = layouts.write_jhmdb(str(tmp_path), data)
  listed, load = readers.reader("jhmdb")
  assert listed(str(tmp_path), "val") == names[:-1]  # the last one is a training video
  assert listed(str(tmp_path), "train") == names[-1:]
  video = load(str(tmp_path), "val", names[0])
  assert video.keypoints.shape == (8, 6, 2)
  np.testing.assert_allclose(video.keypoints, keypoints[0], atol=1e-9)


def test_jhmdb_reader_names_a_missing_joint_file(tmp_path, data):
  names, _ = layouts.write_jhmdb(str(tmp_path), data)
  path = tmp_path / "joint_positions" / "wave" / names[0] / "joint_positions.mat"
  os.remove(path)
  with pytest.raises(FileNotFoundError, match="joint_positions.mat"):
    readers.jhmdb_load(str(tmp_path), "val", names[0])


def test_vip_reader_rejects_part_ids_out_of_range(tmp_path, data):
  names = layouts.write_vip(str(tmp_path), data, every=2)
  bad = tmp_path / "Annotations" / "Category_ids" / names[2] / "000002.png"
  layouts._save(str(bad), np.full((32, 32), 42, np.uint8))
  with pytest.raises(ValueError, match="part id 42"):
    readers.vip_load(str(tmp_path), "val", names[2])


def test_unknown_benchmark_is_named():
  with pytest.raises(ValueError, match="kitti"):
    readers.reader("kitti")
  with pytest.raises(ValueError, match="kitti"):
    evaluate.tasks_of("kitti")


# --- PCK -------------------------------------------------------------------------

def test_pck_on_a_hand_computed_example():
  # Two frames, three joints. Frame 1's ground-truth box: (0,0)-(30,40),
  # diagonal 50, normaliser 0.6 * 50 = 30.
  gt = np.array([[[0, 0], [30, 40], [10, 10]],
                 [[0, 0], [30, 40], [10, 10]]], np.float64)
  predicted = gt.copy()
  predicted[1, 0] += [0, 2.9]   # 2.9 / 30 = 0.097 -> correct at 0.1
  predicted[1, 1] += [4, 0]     # 4 / 30 = 0.133 -> wrong at 0.1, right at 0.2
  predicted[1, 2] += [0, 7]     # 7 / 30 = 0.233 -> wrong at both
  visible = np.ones((2, 3), bool)
  d = pose.normalised_distances(predicted, gt, visible)
  assert np.isnan(d[0]).all()  # frame 0 is given, never scored
  np.testing.assert_allclose(d[1], [2.9 / 30, 4 / 30, 7 / 30])
  result = pose.pck(d)
  assert result[0.1] == pytest.approx(1 / 3)
  assert result[0.2] == pytest.approx(2 / 3)
  # An invisible joint is neither scored nor part of the box.
  visible[1, 2] = False
  d = pose.normalised_distances(predicted, gt, visible)
  assert np.isnan(d[1, 2])
  assert pose.pck(d)[0.2] == pytest.approx(1.0)


def test_pck_averages_joints_not_detections():
  # Joint 0 scored in 4 frames (all right), joint 1 in 1 frame (wrong): the mean over
  # joints is 0.5, not 4/5.
  d = np.array([[0.0, np.nan], [0.0, np.nan], [0.0, np.nan], [0.0, 0.9]])
  assert pose.pck(d, (0.1,))[0.1] == pytest.approx(0.5)


def test_keypoint_maps_decode_back_to_the_keypoints():
  image, grid = (64, 96), (8, 12)  # 8 px cells
  keypoints = np.array([[3.5, 3.5], [43.5, 27.5], [91.5, 59.5]])  # cell centres
  maps = pose.keypoint_maps(keypoints, image, grid, sigma=0.5)
  assert maps.shape == (8, 12, 4)
  # Background where no joint reaches: 3 sigma = 1.5 cells covers the 3 x 3 cells
  # around a joint, cut by the border at the two corner joints.
  assert maps[..., 0].sum() == 8 * 12 - (4 + 9 + 4)
  cells, visible = pose.decode_keypoints(maps[None], topk=1)
  assert visible.all()
  np.testing.assert_allclose(pose.to_image(cells[0], image, grid), keypoints, atol=1e-6)
  # Top 5 = the joint's cell and its 4 equally strong neighbours: unbiased inside
  # the grid (at a corner two neighbours are missing and a diagonal cell pulls).
  cells, _ = pose.decode_keypoints(maps[None], topk=5)
  np.testing.assert_allclose(pose.to_image(cells[0, 1], image, grid), keypoints[1], atol=1e-6)
  assert np.linalg.norm(pose.to_image(cells[0, 0], image, grid) - keypoints[0]) < 8
  # A joint off the image is left out and decodes as invisible.
  maps = pose.keypoint_maps(np.array([[-20.0, 5.0]]), image, grid, sigma=0.5)
  assert not pose.decode_keypoints(maps[None], topk=3)[1].any()


def test_keypoints_follow_the_motion_with_position_features():
  # A 6 x 6 grid whose content shifts right one cell per frame: features are the
  # one-hot of the content's original cell, so propagation must track the shift.
  h = w = 6
  frames = 4
  feats = np.zeros((frames, h, w, h * w), np.float32)
  for t in range(frames):
    for y in range(h):
      for x in range(w):
        feats[t, y, x, y * w + max(x - t, 0)] = 1.0
  keypoint = np.array([[1.0, 2.0]])  # cell (x=1, y=2); grid == image here
  maps = pose.keypoint_maps(keypoint, (h, w), (h, w), sigma=0.5)
  from smtc_jax.evaluation import propagation  # pylint: disable=g-import-not-at-top
  out = np.asarray(propagation.propagate_video(feats, maps, video_len=1, radius=2, topk=1,
                                               temperature=0.05))
  cells, visible = pose.decode_keypoints(out, topk=1)
  assert visible.all()
  np.testing.assert_allclose(cells[:, 0], [[1, 2], [2, 2], [3, 2], [4, 2]])


# --- mIoU --------------------------------------------------------------------------

def test_miou_against_a_direct_per_class_formula():
  rng = np.random.default_rng(0)
  gt = rng.integers(0, 6, (5, 20, 20))
  pred = np.where(rng.uniform(size=gt.shape) < 0.7, gt, rng.integers(0, 6, gt.shape))
  gt[0, :3] = 255  # void
  matrix = parts.confusion(gt, pred, num_classes=8)  # classes 6, 7 absent
  keep = gt != 255
  expected = []
  for c in range(6):
    inter = np.sum((gt == c) & (pred == c) & keep)
    union = np.sum(((gt == c) | (pred == c)) & keep)
    expected.append(inter / union)
  assert parts.mean_iou(matrix) == pytest.approx(np.mean(expected))
  assert np.isnan(parts.class_ious(matrix)[6:]).all()
  assert matrix.sum() == keep.sum()


def test_confusion_rejects_labels_out_of_range():
  with pytest.raises(ValueError, match="< 4"):
    parts.confusion(np.zeros((2, 2), int), np.full((2, 2), 5), num_classes=4)


# --- The evaluation path with oracle features ----------------------------------------

class OraclePredictor:
  """Predictor stand-in whose 'features' are one-hot instance labels on the grid."""

  def __init__(self, config, labels, stride):
    self.config = config
    self.labels, self.stride = labels, stride

  def feature_size(self, size):
    return size

  def features(self, variables, frames):
    del variables, frames
    s = self.stride
    one_hot = np.eye(int(self.labels.max()) + 1, dtype=np.float32)[self.labels]
    f, h, w, c = one_hot.shape
    return one_hot.reshape(f, h // s, s, w // s, s, c).mean(axis=(2, 4))


def _oracle_config():
  config = tiny.get_config()
  config.eval.prop_radius, config.eval.prop_temperature = 3.0, 0.05
  return config


def test_vip_with_instance_oracle_features(tmp_path, data):
  config = _oracle_config()
  e = config.eval
  tasks = evaluate.tasks_of("vip")
  oracle, trivial = scores.Scores(e.pck_thresholds), scores.Scores(e.pck_thresholds)
  for i, name in enumerate(layouts.write_vip(str(tmp_path), data)):
    video = readers.vip_load(str(tmp_path), "val", name)
    values, _ = evaluate.evaluate_method(OraclePredictor(config, data[i][1], stride=4), None,
                                         video, tasks)
    oracle.add(name, values)
    trivial.add(name, evaluate.evaluate_trivial(video, tasks, e))
  # The oracle loses only at boundaries (8 x 8 grid for 32 x 32 frames).
  assert oracle.summary()["miou"] > 0.7
  assert oracle.summary()["miou"] > trivial.summary()["miou"] + 0.3


class MotionOracle:
  """Features that are the one-hot of each cell's content in frame 0, for content
  moving one cell right every other frame and wrapping around, so every cell's
  content is in frame 0 (an unmatched cell would take the mean of arbitrary ties)."""

  def __init__(self, config, grid):
    self.config = config
    self.grid = grid

  def feature_size(self, size):
    return size

  def features(self, variables, frames):
    del variables
    h, w = self.grid
    feats = np.zeros((len(frames), h, w, h * w), np.float32)
    for t in range(len(frames)):
      for y in range(h):
        for x in range(w):
          feats[t, y, x, y * w + (x - t // 2) % w] = 1.0
    return feats


def test_jhmdb_pck_with_motion_oracle_features(tmp_path):
  # Joints at cell centres of an 8 x 8 grid (4 px cells), moving with the content.
  frames = np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
  cells = np.array([[1, 1], [2, 4], [3, 6]], np.float64)  # (x, y), clear of the borders
  keypoints = np.stack([(cells + [t // 2, 0]) * 4 + 1.5 for t in range(8)])  # (F, 3, 2)
  data = [(frames, None), (frames, None)]
  names, _ = layouts.write_jhmdb(str(tmp_path), data, keypoints=[keypoints, keypoints])
  config = _oracle_config()
  e = config.eval
  e.prop_radius = 10.0  # wrapped content is found across the grid
  tasks = evaluate.tasks_of("jhmdb")
  oracle, trivial = scores.Scores(e.pck_thresholds), scores.Scores(e.pck_thresholds)
  video = readers.jhmdb_load(str(tmp_path), "val", names[0])
  values, _ = evaluate.evaluate_method(MotionOracle(config, (8, 8)), None, video, tasks)
  oracle.add(names[0], values)
  trivial.add(names[0], evaluate.evaluate_trivial(video, tasks, e))
  assert oracle.summary()["pck@0.1"] == 1.0
  # Copying frame 0's joints: right while they have not moved (frame 1), then off by
  # 4-12 px against a box diagonal of ~23 px.
  assert trivial.summary()["pck@0.1"] == pytest.approx(1 / 7)


def test_propagation_size_is_a_stride_multiple_and_can_be_scaled_down():
  config = tiny.get_config()
  predictor = predictor_lib.Predictor(config)
  stride = config.model.vit.patch_size
  assert predictor.feature_size((480, 854)) == (480 // stride * stride, 854 // stride * stride)
  config.eval.prop_short_side = 240
  size = predictor_lib.Predictor(config).feature_size((1080, 1920))
  assert size[0] == 240 // stride * stride and size[1] == 427 // stride * stride


def test_propagation_reads_the_features_eval_prop_features_names():
  from configs import reference  # pylint: disable=g-import-not-at-top
  config = reference.get_config()
  config.model.vit = tiny.get_config().model.vit
  config.model.num_semantics, config.model.num_instances = 4, 3
  config.data.resolution = (32, 32)
  predictor = predictor_lib.Predictor(config)
  variables, _ = predictor_lib.untrained_variables(config)
  frames = np.random.default_rng(0).integers(0, 255, (2, 32, 48, 3), dtype=np.uint8)
  encoder = smtc.build_encoder(config)
  images = smtc.normalize(frames, config)
  out = encoder.apply({"params": variables["params"]["encoder"]}, images)
  feats = predictor.features(variables, frames)  # the code's choice, eval_prop.py
  np.testing.assert_allclose(feats, out["prenorm_tokens"], rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(out["prenorm_tokens"]) - np.asarray(out["keys"])).max() > 1e-3
  config.eval.prop_features = "tokens"
  np.testing.assert_allclose(predictor_lib.Predictor(config).features(variables, frames),
                             out["tokens"], rtol=1e-5, atol=1e-5)
  config.model.encoder, config.eval.prop_features = "resnet", "prenorm_tokens"
  with pytest.raises(ValueError, match="eval.prop_features='prenorm_tokens' needs the ViT"):
    predictor_lib.Predictor(config)


def test_multi_object_discovery_needs_the_unsupervised_annotations(data):
  frames, labels = data[0]
  video = readers.Video("bear", frames, np.ones(len(frames), bool), labels)
  with pytest.raises(FileNotFoundError, match="bear has no Annotations_unsupervised"):
    scores.score_discovery(video, labels, ("iou", "jf_discovery"), "video")
  assert scores.score_discovery(video, labels, ("iou",), "video")["iou"] == 1.0
