import csv
import os

import numpy as np
from PIL import Image
import pytest

from smtc_jax.data import palette
from smtc_jax.evaluation import davis


def _stripe(left, right, size=100):
  mask = np.zeros((size, size), bool)
  mask[:, left:right] = True
  return mask


def test_j_on_hand_made_cases():
  empty, full = np.zeros((10, 10), bool), np.ones((10, 10), bool)
  assert davis.j_measure(empty, empty) == 1.0  # nothing to find, nothing found
  assert davis.j_measure(full, empty) == 0.0
  assert davis.j_measure(full, full) == 1.0
  # 20 columns vs 25 columns sharing 20: 20 / 25.
  assert davis.j_measure(_stripe(20, 40), _stripe(20, 45)) == pytest.approx(0.8)
  # Void pixels are removed from both masks.
  void = _stripe(40, 45)
  assert davis.j_measure(_stripe(20, 40), _stripe(20, 45), void) == 1.0


def test_f_on_hand_made_cases():
  # 100 x 100 image: tolerance ceil(0.008 * 141.4) = 2 pixels. A stripe's boundary
  # is the column before each edge (cols 19 and 39 for cols 20..39).
  gt = _stripe(20, 40)
  assert davis.boundary_tolerance(100, 100, 0.008) == 2
  assert davis.f_measure(gt, gt) == 1.0
  for shift, expected in [(1, 1.0), (2, 1.0), (3, 0.0), (5, 0.0)]:
    assert davis.f_measure(gt, _stripe(20 + shift, 40 + shift)) == expected, shift
  # One edge right (19), one 5 pixels off (44 vs 39): precision = recall = 1/2.
  assert davis.f_measure(gt, _stripe(20, 45)) == pytest.approx(0.5)
  # A tolerance given in pixels (>= 1) is used as is.
  assert davis.f_measure(gt, _stripe(23, 43), bound_th=3) == 1.0
  empty = np.zeros_like(gt)
  assert davis.f_measure(empty, empty) == 1.0
  assert davis.f_measure(gt, empty) == 0.0  # precision 1, recall 0
  assert davis.f_measure(empty, gt) == 0.0  # precision 0, recall 1
  # The official boundary map gives a mask covering the whole frame no boundary
  # pixel, so F(full, empty) = 1 there although J = 0.
  full = np.ones_like(gt)
  assert davis.boundaries(full).sum() == 0
  assert davis.f_measure(full, empty) == 1.0 and davis.j_measure(full, empty) == 0.0


def _random_blobs(rng, frames, shape):
  """(F, H, W) bool masks: a few random rectangles and discs, some frames empty."""
  masks = np.zeros((frames, *shape), bool)
  y, x = np.mgrid[0:shape[0], 0:shape[1]]
  for t in range(frames):
    for _ in range(rng.integers(0, 4)):
      cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(2, 25)
      if rng.uniform() < 0.5:
        masks[t] |= (y - cy)**2 + (x - cx)**2 <= r**2
      else:
        masks[t] |= (abs(y - cy) <= r) & (abs(x - cx) <= r / 2)
  return masks


def _f_by_dilation(gt, pred, bound_th=0.008):
  """F of one frame exactly as the official tool's steps: boundary maps, each
  dilated by a disk, matched pixels counted (ndimage in place of cv2)."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  r = davis.boundary_tolerance(*gt.shape, bound_th)
  yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
  disk = xx**2 + yy**2 <= r**2
  gt_b, pred_b = davis.boundaries(gt), davis.boundaries(pred)
  n_pred, n_gt = pred_b.sum(), gt_b.sum()
  if n_pred == 0 and n_gt > 0:
    return 0.0
  if n_pred > 0 and n_gt == 0:
    return 0.0
  if n_pred == 0 and n_gt == 0:
    return 1.0
  precision = (pred_b & ndimage.binary_dilation(gt_b, disk)).sum() / n_pred
  recall = (gt_b & ndimage.binary_dilation(pred_b, disk)).sum() / n_gt
  return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def test_f_equals_disk_dilation_of_the_boundaries():
  # The nearest-boundary search in f_measures against the official dilation steps,
  # frame by frame, on 120 x 200 frames (tolerance 2 px) and bound_th = 6 px.
  rng = np.random.default_rng(0)
  gt, pred = _random_blobs(rng, 12, (120, 200)), _random_blobs(rng, 12, (120, 200))
  pred[:4] = gt[:4] ^ _random_blobs(rng, 4, (120, 200))  # some frames close to the truth
  for bound_th in (0.008, 6):
    ours = davis.f_measures(gt, pred, bound_th=bound_th)
    expected = [_f_by_dilation(g, p, bound_th) for g, p in zip(gt, pred)]
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)


@pytest.mark.skipif(not os.environ.get("DAVIS_REFERENCE_METRICS"),
                    reason="set DAVIS_REFERENCE_METRICS to davis2017-evaluation's "
                           "davis2017/metrics.py or davisinteractive's metrics/jaccard.py "
                           "(needs cv2 and skimage)")
def test_j_and_f_equal_the_davis_reference_implementation():
  j_ref, f_ref = davis.reference_measures(os.environ["DAVIS_REFERENCE_METRICS"])
  rng = np.random.default_rng(1)
  gt, pred = _random_blobs(rng, 10, (240, 427)), _random_blobs(rng, 10, (240, 427))
  pred[:5] = gt[:5] ^ _random_blobs(rng, 5, (240, 427))
  np.testing.assert_array_equal(davis.j_measures(gt, pred), j_ref(gt, pred))
  np.testing.assert_allclose(davis.f_measures(gt, pred), f_ref(gt, pred), rtol=0, atol=1e-12)


def test_f_excludes_void_pixels():
  gt, pred = _stripe(20, 40), _stripe(20, 45)
  assert davis.f_measure(gt, pred, void=_stripe(40, 50)) == 1.0


def test_statistics_reproduce_mean_recall_decay_by_hand():
  values = [1.0, 1.0, 0.5, 0.0, 0.0, 0.2, 0.4, 0.8]
  mean, recall, decay = davis.statistics(values)
  assert mean == pytest.approx(3.9 / 8)
  assert recall == pytest.approx(3 / 8)  # strictly above 0.5
  # Bin edges round(linspace(1, 8, 5)) - 1 = [0, 2, 3, 5, 7]: first bin frames
  # 0..2, last bin frames 5..7.
  assert decay == pytest.approx((1.0 + 1.0 + 0.5) / 3 - (0.2 + 0.4 + 0.8) / 3)


def test_unsupervised_assignment_once_per_video_and_per_frame():
  # Two objects (left, right) over two frames; proposal 1 covers the left object in
  # frame 0 and the right one in frame 1, proposal 2 the other way round.
  left, right = _stripe(10, 30), _stripe(60, 80)
  gt = np.stack([left * 1 + right * 2, left * 1 + right * 2]).astype(np.uint8)
  res = np.stack([left * 1 + right * 2, left * 2 + right * 1]).astype(np.uint8)
  j_video, _ = davis.evaluate_sequence(gt, res, "unsupervised", "video")
  j_frame, _ = davis.evaluate_sequence(gt, res, "unsupervised", "frame")
  np.testing.assert_allclose(j_video.mean(), 0.5)  # one assignment: right in one frame only
  np.testing.assert_allclose(j_frame, 1.0)  # per frame: always right
  one_object = np.ones((2, 4, 30), np.uint8)
  proposals = np.broadcast_to(np.arange(1, 31, dtype=np.uint8) % 22, (2, 4, 30))  # labels 0..21
  with pytest.raises(ValueError, match="21 proposals, more than the 20"):
    davis.evaluate_sequence(one_object, proposals, "unsupervised")


def _write_sequence(root, sub, name, labels):
  for t, frame in enumerate(labels):
    palette.write_palette_png(os.path.join(root, sub, name, f"{t:05d}.png"), frame)


def test_scorer_writes_the_official_csv_files(tmp_path):
  davis_root, results = str(tmp_path / "davis"), str(tmp_path / "results")
  gt = np.stack([_stripe(20, 40, 64).astype(np.uint8)] * 6)
  gt[:, :, 50:52] = 255  # void
  _write_sequence(davis_root, os.path.join("Annotations", "480p"), "seqa", gt)
  os.makedirs(os.path.join(davis_root, "ImageSets", "2017"))
  with open(os.path.join(davis_root, "ImageSets", "2017", "val.txt"), "w") as f:
    f.write("seqa\n")
  pred = np.stack([_stripe(20, 40, 64)] * 6).astype(np.uint8)
  pred[4] = 0  # one miss among the scored frames 1..4
  _write_sequence(results, "", "seqa", pred)
  row, per_object = davis.score_folder(davis_root, results, "semi-supervised", "val", processes=1)
  # Scored frames 1..4 have J = 1, 1, 1, 0.
  assert row["J-Mean"] == pytest.approx(0.75)
  assert row["J-Recall"] == pytest.approx(0.75)
  global_csv, seq_csv = davis.write_results(results, "val", row, per_object)
  with open(global_csv) as f:
    rows = list(csv.reader(f))
  assert rows[0] == davis.GLOBAL_COLUMNS and rows[1][1] == "0.750"
  with open(seq_csv) as f:
    assert list(csv.reader(f))[1] == ["seqa_1", "0.750", "0.750"]


def test_scorer_command_line(tmp_path, capsys):
  davis_root, results = str(tmp_path / "davis"), str(tmp_path / "results")
  gt = np.stack([_stripe(10, 30, 48).astype(np.uint8) + 2 * _stripe(35, 40, 48)] * 4)
  _write_sequence(davis_root, os.path.join("Annotations_unsupervised", "480p"), "s", gt)
  os.makedirs(os.path.join(davis_root, "ImageSets", "2017"))
  with open(os.path.join(davis_root, "ImageSets", "2017", "val.txt"), "w") as f:
    f.write("s\n")
  swapped = np.where(gt == 1, 2, np.where(gt == 2, 1, 0)).astype(np.uint8)
  _write_sequence(results, "", "s", swapped)  # proposal ids need not match object ids
  assert davis.main(["--davis_path", davis_root, "--results_path", results,
                     "--task", "unsupervised", "--processes", "1"]) == 0
  out = capsys.readouterr().out
  assert "unsupervised, video matching" in out
  with open(os.path.join(results, "global_results-val.csv")) as f:
    assert list(csv.reader(f))[1][0] == "1.000"


def test_scorer_names_a_missing_result_file(tmp_path):
  davis_root = str(tmp_path / "davis")
  _write_sequence(davis_root, os.path.join("Annotations_unsupervised", "480p"), "s",
                  np.ones((3, 8, 8), np.uint8))
  os.makedirs(os.path.join(davis_root, "ImageSets", "2017"))
  with open(os.path.join(davis_root, "ImageSets", "2017", "val.txt"), "w") as f:
    f.write("s\n")
  with pytest.raises(FileNotFoundError, match="00000.png"):
    davis.score_folder(davis_root, str(tmp_path / "none"), "unsupervised", "val", processes=1)


def _one_sequence(tmp_path, proposals, gt=None):
  """A DAVIS folder of one unsupervised sequence 's' (3 frames, 8x8) and a
  results folder holding `proposals` (a list of (H, W) label maps)."""
  davis_root, results = str(tmp_path / "davis"), str(tmp_path / "results")
  gt = np.ones((3, 8, 8), np.uint8) if gt is None else gt
  _write_sequence(davis_root, os.path.join("Annotations_unsupervised", "480p"), "s", gt)
  os.makedirs(os.path.join(davis_root, "ImageSets", "2017"))
  with open(os.path.join(davis_root, "ImageSets", "2017", "val.txt"), "w") as f:
    f.write("s\n")
  _write_sequence(results, "", "s", proposals)
  return davis_root, results


def _cli_error(davis_root, results, capsys, processes="2"):
  assert davis.main(["--davis_path", davis_root, "--results_path", results, "--task",
                     "unsupervised", "--processes", processes]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1, err
  return err[0]


def test_the_scorer_command_line_names_sequence_and_frame_of_bad_results(tmp_path, capsys):
  many = np.arange(64, dtype=np.uint8).reshape(8, 8) % 30  # 29 proposals in frame 1
  davis_root, results = _one_sequence(tmp_path, [np.ones((8, 8), np.uint8), many,
                                                 np.ones((8, 8), np.uint8)])
  line = _cli_error(davis_root, results, capsys, processes="1")
  assert line.startswith("error: sequence s, frame 00001: ") and "29 proposals" in line
  assert "more than the 20 allowed" in line
  palette.write_palette_png(os.path.join(results, "s", "00001.png"), np.ones((8, 8), np.uint8))
  os.remove(os.path.join(results, "s", "00002.png"))  # through the pool of workers
  line = _cli_error(davis_root, results, capsys)
  assert line.startswith("error: sequence s, frame 00002: ") and "00002.png" in line
  # A result of another size than its ground truth.
  palette.write_palette_png(os.path.join(results, "s", "00002.png"), np.ones((6, 8), np.uint8))
  line = _cli_error(davis_root, results, capsys, processes="1")
  assert line.startswith("error: sequence s, frame 00002: ") and "(6, 8)" in line


def test_annotations_of_mixed_sizes_are_named(tmp_path):
  davis_root, _ = _one_sequence(tmp_path, [np.ones((8, 8), np.uint8)] * 3)
  palette.write_palette_png(
      os.path.join(davis_root, "Annotations_unsupervised", "480p", "s", "00001.png"),
      np.ones((8, 6), np.uint8))
  with pytest.raises(ValueError, match=r"00001\.png is 8x6, .*00000\.png 8x8"):
    davis.read_annotations(davis_root, "s", os.path.join("Annotations_unsupervised", "480p"))


def _write_davis_tree(root, sequences, subset="val"):
  """A DAVIS-2017 folder: {name: (semi (F, H, W), unsupervised (F, H, W))} labels,
  grey JPEG frames, ImageSets/2017/<subset>.txt."""
  for name, (semi, unsupervised) in sequences.items():
    _write_sequence(root, os.path.join("Annotations", "480p"), name, semi)
    _write_sequence(root, os.path.join("Annotations_unsupervised", "480p"), name, unsupervised)
    folder = os.path.join(root, "JPEGImages", "480p", name)
    os.makedirs(folder, exist_ok=True)
    for t in range(len(semi)):
      Image.fromarray(np.full((*semi.shape[1:], 3), 128, np.uint8)).save(
          os.path.join(folder, f"{t:05d}.jpg"))
  os.makedirs(os.path.join(root, "ImageSets", "2017"), exist_ok=True)
  with open(os.path.join(root, "ImageSets", "2017", f"{subset}.txt"), "w") as f:
    f.write("".join(f"{name}\n" for name in sequences))


def _sequence_rows(path):
  with open(path) as f:
    return {row[0]: row[1:] for row in list(csv.reader(f))[1:]}


def test_unsupervised_rows_are_named_in_proposal_order_as_the_official_tool():
  # Objects: 1 = left stripe, 2 = right stripe. Proposal 1 is junk, proposal 2 covers
  # the right object exactly, proposal 3 half of the left one. The assignment pairs
  # (2, right) and (3, left); the official tool lists the pairs by proposal, so row 1
  # is the right object (J = 1) and row 2 the left one (J = 0.5).
  left, right, half_left = _stripe(10, 30), _stripe(60, 80), _stripe(10, 20)
  gt = np.stack([left * 1 + right * 2] * 3).astype(np.uint8)
  junk = _stripe(90, 95)
  res = np.stack([junk * 1 + right * 2 + half_left * 3] * 3).astype(np.uint8)
  j, _ = davis.evaluate_sequence(gt, res, "unsupervised")
  np.testing.assert_allclose(j.mean(axis=1), [1.0, 0.5])
  j_objects, _ = davis.evaluate_sequence(gt, res, "unsupervised", row_order="object")
  np.testing.assert_allclose(j_objects.mean(axis=1), [0.5, 1.0])
  # Per-frame matching (the authors' tool) lists each frame's pairs by proposal too.
  j_frame, _ = davis.evaluate_sequence(gt, res, "unsupervised", "frame")
  np.testing.assert_allclose(j_frame, j)
  with pytest.raises(ValueError, match="row_order must be one of"):
    davis.evaluate_sequence(gt, res, "unsupervised", row_order="name")


def test_scorer_rows_follow_the_official_naming_by_default(tmp_path):
  davis_root, results = str(tmp_path / "davis"), str(tmp_path / "results")
  left, right = _stripe(10, 30, 64), _stripe(40, 60, 64)
  gt = np.stack([left * 1 + right * 2] * 4).astype(np.uint8)
  _write_davis_tree(davis_root, {"s": (gt, gt)})
  # Proposal 1 = the right object, proposal 2 = a third of the left one.
  _write_sequence(results, "", "s", np.stack([right * 1 + _stripe(10, 17, 64) * 2] * 4)
                  .astype(np.uint8))
  assert davis.main(["--davis_path", davis_root, "--results_path", results,
                     "--task", "unsupervised", "--processes", "1"]) == 0
  rows = _sequence_rows(os.path.join(results, "per-sequence_results-val.csv"))
  assert rows == {"s_1": ["1.000", "1.000"], "s_2": ["0.350", rows["s_2"][1]]}
  _, by_object = davis.score_folder(davis_root, results, "unsupervised", processes=1,
                                    row_order="object")
  assert [round(r[1], 3) for r in by_object] == [0.35, 1.0]


def _random_labels(rng, frames, shape, objects):
  """(F, H, W) uint8 labels 0..objects from drifting random discs and boxes."""
  y, x = np.mgrid[0:shape[0], 0:shape[1]]
  labels = np.zeros((frames, *shape), np.uint8)
  centres = rng.uniform([0, 0], shape, size=(objects, 2))
  sizes = rng.uniform(5, 18, size=objects)
  for t in range(frames):
    for k in range(objects):
      cy, cx = centres[k] + t * rng.uniform(-2, 2, 2)
      if k % 2:
        inside = (y - cy)**2 + (x - cx)**2 <= sizes[k]**2
      else:
        inside = (abs(y - cy) <= sizes[k]) & (abs(x - cx) <= sizes[k] * 0.7)
      labels[t][inside] = k + 1
  return labels


def _official_fixture(root, results_semi, results_unsup, seed=0):
  """Three sequences with void borders, results with missed and extra objects,
  proposals in a random order and extra junk proposals."""
  rng = np.random.default_rng(seed)
  sequences = {}
  for index, objects in enumerate((2, 3, 1)):
    semi = _random_labels(rng, 9, (60, 96), objects)
    semi[:, :, :2] = 255  # void
    unsup = _random_labels(rng, 9, (60, 96), objects + 1)
    unsup[:, -3:] = 255
    name = f"seq{index}"
    sequences[name] = semi, unsup
    noisy = lambda labels: np.where(rng.uniform(size=labels.shape) < 0.03, 0, labels)
    pred = noisy(np.where(semi == 255, 0, semi)).astype(np.uint8)
    pred[:, :10] = np.where(pred[:, :10] == 0, 1, pred[:, :10])  # spills over
    if objects > 1:
      pred[4:] = np.where(pred[4:] == objects, 0, pred[4:])  # a lost object
    _write_sequence(results_semi, "", name, pred)
    permutation = rng.permutation(np.arange(1, objects + 2)) + 2  # ids 3.., shuffled
    lookup = np.zeros(256, np.uint8)
    lookup[1:objects + 2] = permutation
    proposals = lookup[np.where(unsup == 255, 0, unsup)]
    proposals = noisy(proposals).astype(np.uint8)
    proposals[:, 40:44, 10:20] = 1  # junk proposals 1 and 2
    proposals[::2, 50:55, 60:80] = 2
    _write_sequence(results_unsup, "", name, proposals)
  _write_davis_tree(root, sequences)


def _official_tool():
  """(davis2017-evaluation checkout, the Python that runs it) from DAVIS_EVALUATION
  and DAVIS_EVALUATION_PYTHON; CI always has them (.ci/run), so there a missing
  tool fails instead of skipping."""
  import sys  # pylint: disable=g-import-not-at-top
  tool = os.environ.get("DAVIS_EVALUATION")
  if not tool:
    if os.environ.get("CI"):
      pytest.fail("DAVIS_EVALUATION is not set in CI (.ci/run sets it to the shared "
                  "davis2017-evaluation and its venv)")
    pytest.skip("set DAVIS_EVALUATION to a davis2017-evaluation checkout (and "
                "DAVIS_EVALUATION_PYTHON to a Python with its numpy, opencv, scikit-image, pandas, "
                "tqdm, if not this one)")
  return tool, os.environ.get("DAVIS_EVALUATION_PYTHON", sys.executable)


@pytest.mark.parametrize("task", ["semi-supervised", "unsupervised"])
def test_scorer_writes_the_official_tools_files_byte_for_byte(tmp_path, task):
  import shutil  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  tool, python = _official_tool()
  root = str(tmp_path / "davis")
  _official_fixture(root, str(tmp_path / "semi-supervised"), str(tmp_path / "unsupervised"))
  ours, official = str(tmp_path / task), str(tmp_path / f"official-{task}")
  shutil.copytree(ours, official)
  proc = subprocess.run([python, os.path.join(tool, "evaluation_method.py"), "--davis_path", root,
                         "--results_path", official, "--task", task, "--set", "val"],
                        cwd=tool, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert davis.main(["--davis_path", root, "--results_path", ours, "--task", task,
                     "--processes", "1"]) == 0
  for name in ("global_results-val.csv", "per-sequence_results-val.csv"):
    with open(os.path.join(ours, name), "rb") as a, open(os.path.join(official, name), "rb") as b:
      assert a.read() == b.read(), name
  if task == "unsupervised":  # the fixture tells the two namings apart
    _, by_object = davis.score_folder(root, ours, task, processes=1, row_order="object")
    official_rows = _sequence_rows(os.path.join(official, "per-sequence_results-val.csv"))
    assert any(official_rows[n] != [f"{j:.3f}", f"{f:.3f}"] for n, j, f in by_object)


# ---------------------------------------------------------------------------
# The SMTC authors' protocol (their copy of davis2017-evaluation).
# ---------------------------------------------------------------------------

def _their_reading(gt_labels, frame_candidates):
  """Their scorer written out from their code, pixel by pixel: results.py
  load_davis resizes each candidate with F.interpolate's default 'nearest'
  (source = floor(i * (in / out)), float32), min-max normalises it over the frame,
  keeps > 0.3 and zero-pads every frame to the largest count; evaluation.py
  _evaluate_unsupervised pads to the object count, scores every (proposal, object)
  in every frame with void removed and assigns them per frame (Hungarian on J + F);
  objects are the first frame's labels (davis.py get_all_masks)."""
  from scipy.optimize import linear_sum_assignment  # pylint: disable=g-import-not-at-top
  frames, height, width = gt_labels.shape
  void = gt_labels == 255
  labels = np.where(void, 0, gt_labels)
  objects = [labels == i for i in range(1, int(labels[0].max()) + 1)]
  count = max(max(len(c) for c in frame_candidates), len(objects))
  res = np.zeros((count, frames, height, width), bool)
  for t, candidates in enumerate(frame_candidates):
    for k, small in enumerate(candidates):
      h, w = small.shape
      big = np.zeros((height, width), np.float32)
      for y in range(height):
        for x in range(width):
          sy = min(int(np.floor(np.float32(y) * (np.float32(h) / np.float32(height)))), h - 1)
          sx = min(int(np.floor(np.float32(x) * (np.float32(w) / np.float32(width)))), w - 1)
          big[y, x] = small[sy, sx]
      with np.errstate(invalid="ignore"):
        res[k, t] = (big - big.min()) / (big.max() - big.min()) > 0.3
  js, fs = [], []
  for t in range(frames):
    j = np.array([[davis.j_measure(o[t], r[t], void[t]) for o in objects] for r in res])
    f = np.array([[davis.f_measure(o[t], r[t], void[t]) for o in objects] for r in res])
    rows, cols = linear_sum_assignment(-(j + f))
    js.append(j[rows, cols])
    fs.append(f[rows, cols])
  return np.stack(js, axis=-1), np.stack(fs, axis=-1)


def _authors_fixture():
  """Three 12 x 17 frames, two objects (the second gone in frame 2, void in frame 1)
  and each frame's soft candidates on a 3 x 5 grid: overlapping ones, one whose values
  all lie below 0.3 (min-max lifts it), one at exactly 0.3 in places, one constant
  (empty); counts 3, 1 and 2."""
  rng = np.random.default_rng(4)
  gt = np.zeros((3, 12, 17), np.uint8)
  gt[:, 2:7, 3:9] = 1
  gt[:2, 6:11, 9:15] = 2
  gt[1, 0, :] = 255
  low = np.full((3, 5), 0.1, np.float32)
  low[0:2, 1:3] = 0.2
  candidates = [
      np.stack([low, rng.uniform(size=(3, 5)), np.array([0.0, 0.3, 1.0])[np.arange(15).reshape(
          3, 5) % 3]]),  # the last: cells exactly at the threshold after min-max
      rng.uniform(size=(1, 3, 5)),
      np.stack([np.full((3, 5), 0.7), low.T[:3, :3].repeat(2, 1)[:, :5]]),
  ]
  return gt, [c.astype(np.float32) for c in candidates]


def test_authors_protocol_scores_as_their_scorer_reads_and_matches():
  gt, candidates = _authors_fixture()
  j, f = davis.evaluate_authors(gt, candidates)
  their_j, their_f = _their_reading(gt, candidates)
  np.testing.assert_allclose(j, their_j)
  np.testing.assert_allclose(f, their_f)
  assert j.shape == (2, 3)
  # The rule's parts, each visible: min-max lifts the low candidate (no pixel above
  # 0.3 before it), the constant one is empty, and the absent object of frame 2
  # meets an empty padding proposal (J = 1).
  assert davis.authors_mask(candidates[0][0], (12, 17)).any()
  assert not davis.authors_mask(candidates[2][0], (12, 17)).any()
  assert j[:, 2].max() == 1.0
  # Scored as one labelled map per frame instead, the figure differs.
  labels = np.stack([np.argmax(np.concatenate([np.zeros((1, 12, 17)), np.stack(
      [davis.authors_mask(c, (12, 17)) for c in frame])]), axis=0) for frame in candidates])
  official = davis.evaluate_sequence(gt, labels, "unsupervised", "frame")
  assert davis.mean_jf(*official) != pytest.approx(davis.mean_jf(j, f))


@pytest.mark.parametrize("size_in,size_out", [(2, 282), (3, 423), (30, 480), (50, 854), (7, 5)])
def test_nearest_indices_are_pytorchs_default_resize(size_in, size_out):
  # (2, 282) and (3, 423): floor(i * in / out) in exact arithmetic differs from PyTorch's.
  torch = pytest.importorskip("torch")
  source = torch.arange(size_in, dtype=torch.float32).view(1, 1, 1, size_in)
  expected = torch.nn.functional.interpolate(source, (1, size_out))[0, 0, 0].numpy()
  np.testing.assert_array_equal(davis.nearest_indices(size_in, size_out), expected.astype(int))
