"""DAVIS region (J) and boundary (F) measures and a scorer for results folders,
computing what the official davis2017-evaluation computes, vectorised over
frames and parallel over sequences.

  python -m smtc_jax.evaluation.davis --davis_path DIR --results_path DIR \\
      --task semi-supervised|unsupervised [--set val]

writes `global_results-<set>.csv` and `per-sequence_results-<set>.csv` into the
results folder, byte for byte what the official tool writes, and prints them.

The official tool's per-object rows of the unsupervised task are a quirk: after
the Hungarian assignment, row `<seq>_<k>` is the k-th matched (proposal, object)
pair in proposal order, not ground-truth object k. We write the same by
default (`--row_order proposal`), so the file diffs cleanly against published
per-sequence results; `--row_order object` names rows by object instead. The
global figures do not depend on it.
"""

import csv
import functools
import multiprocessing
import os
import sys

import numpy as np
from PIL import Image
from scipy import spatial
from scipy.optimize import linear_sum_assignment

VOID_LABEL = 255
MAX_UNSUPERVISED_PROPOSALS = 20  # the official tool rejects more
GLOBAL_COLUMNS = ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]
SEQUENCE_COLUMNS = ["Sequence", "J-Mean", "F-Mean"]
DECAY_BINS = 4
# Unsupervised per-object rows: the k-th matched pair in proposal order (the
# official tool) or ground-truth object k.
ROW_ORDERS = ("proposal", "object")
# Unsupervised assignment of proposals to objects (eval.unsupervised_matching,
# --matching): once per video (the official tool) or per frame (the authors' copy).
MATCHINGS = ("video", "frame")
DAVIS_TASKS = ("semi-supervised", "unsupervised")  # the tool's --task


# ---------------------------------------------------------------------------
# Per-frame measures.
# ---------------------------------------------------------------------------

def j_measures(gt, pred, void=None):
  """Region similarity per frame: IoU of (F, H, W) boolean masks outside void;
  1 where both masks are empty."""
  gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
  if void is not None:
    keep = ~np.asarray(void, bool)
    gt, pred = gt & keep, pred & keep
  inter = np.sum(gt & pred, axis=(-2, -1))
  union = np.sum(gt | pred, axis=(-2, -1))
  with np.errstate(divide="ignore", invalid="ignore"):
    j = inter / union
  return np.where(np.isclose(union, 0), 1.0, j)


def j_measure(gt, pred, void=None) -> float:
  """Region similarity J of one (H, W) frame."""
  return float(j_measures(gt, pred, void))


def boundaries(masks):
  """One-pixel boundary maps of (..., H, W) boolean masks, as the official
  `_seg2bmap`: a pixel is on the boundary when it differs from its right,
  lower or lower-right neighbour (outside the image counts as background)."""
  seg = np.asarray(masks, bool)
  east = np.zeros_like(seg)
  south = np.zeros_like(seg)
  south_east = np.zeros_like(seg)
  east[..., :, :-1] = seg[..., :, 1:]
  south[..., :-1, :] = seg[..., 1:, :]
  south_east[..., :-1, :-1] = seg[..., 1:, 1:]
  b = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
  b[..., -1, :] = seg[..., -1, :] ^ east[..., -1, :]
  b[..., :, -1] = seg[..., :, -1] ^ south[..., :, -1]
  b[..., -1, -1] = False
  return b


def within_radius(points, targets, radius: float) -> np.ndarray:
  """(n,) bool: point i of `points` has a `targets` point within Euclidean
  distance `radius` in its own frame. Points are (frame, y, x) rows; frames are
  placed 2 radius + 1 apart, so they never reach each other. This equals the
  official tool's test (a boundary pixel hit by the other mask's boundary
  dilated with disk(radius)), computed on the boundary pixels alone."""
  if len(points) == 0 or len(targets) == 0:
    return np.zeros(len(points), bool)
  scale = np.asarray([2.0 * radius + 1.0, 1.0, 1.0])
  tree = spatial.cKDTree(targets * scale)
  # Integer offsets: the next distance above radius is >= sqrt(r^2 + 1) > r + 1e-6.
  distance, _ = tree.query(points * scale, k=1, distance_upper_bound=radius + 1e-6)
  return np.isfinite(distance)


def boundary_tolerance(height: int, width: int, bound_th: float) -> int:
  """Matching distance in pixels: bound_th * image diagonal, rounded up."""
  return int(bound_th if bound_th >= 1 else np.ceil(bound_th * np.hypot(height, width)))


def f_measures(gt, pred, void=None, bound_th: float = 0.008):
  """Boundary F per frame of (F, H, W) boolean masks (void pixels removed)."""
  gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
  if gt.ndim == 2:
    gt, pred = gt[None], pred[None]
    void = None if void is None else np.asarray(void, bool)[None]
  if void is not None:
    keep = ~np.asarray(void, bool)
    gt, pred = gt & keep, pred & keep
  radius = boundary_tolerance(gt.shape[-2], gt.shape[-1], bound_th)
  gt_points, pred_points = np.argwhere(boundaries(gt)), np.argwhere(boundaries(pred))
  count = lambda rows: np.bincount(rows[:, 0], minlength=gt.shape[0]).astype(np.float64)
  n_pred, n_gt = count(pred_points), count(gt_points)
  pred_hit = pred_points[within_radius(pred_points, gt_points, radius)]
  gt_hit = gt_points[within_radius(gt_points, pred_points, radius)]
  with np.errstate(divide="ignore", invalid="ignore"):
    precision = count(pred_hit) / n_pred
    recall = count(gt_hit) / n_gt
  # Empty boundaries, as the official tool: none predicted -> precision 1;
  # none in the ground truth -> recall 1.
  precision = np.where(n_pred == 0, 1.0, precision)
  recall = np.where(n_gt == 0, 1.0, recall)
  precision = np.where((n_pred > 0) & (n_gt == 0), 0.0, precision)
  recall = np.where((n_pred == 0) & (n_gt > 0), 0.0, recall)
  with np.errstate(divide="ignore", invalid="ignore"):
    f = 2 * precision * recall / (precision + recall)
  return np.where(precision + recall == 0, 0.0, f)


def f_measure(gt, pred, void=None, bound_th: float = 0.008) -> float:
  """Boundary F of one (H, W) frame."""
  return float(f_measures(gt, pred, void, bound_th)[0])


def statistics(per_frame):
  """(Mean, Recall, Decay) of per-frame values, as the official db_statistics:
  recall = share of frames above 0.5; decay = mean of the first quarter of the
  frames minus the last quarter (4 bins with overlapping edges)."""
  values = np.asarray(per_frame, np.float64)
  mean = np.nanmean(values)
  recall = np.nanmean(values > 0.5)
  ids = (np.round(np.linspace(1, len(values), DECAY_BINS + 1) + 1e-10) - 1).astype(np.int64)
  bins = [values[ids[i]:ids[i + 1] + 1] for i in range(DECAY_BINS)]
  decay = np.nanmean(bins[0]) - np.nanmean(bins[-1])
  return mean, recall, decay


# ---------------------------------------------------------------------------
# Sequences and folders.
# ---------------------------------------------------------------------------

def read_label_png(path: str) -> np.ndarray:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"mask {path} does not exist")
  try:
    with Image.open(path) as image:
      return np.asarray(image)
  except OSError as e:
    raise ValueError(f"cannot read mask {path}: {e}") from e


def mean_jf(j, f) -> float:
  """J&F-Mean of one sequence from per-object, per-frame J and F."""
  return float((np.mean([statistics(x)[0] for x in j]) +
                np.mean([statistics(x)[0] for x in f])) / 2)


def object_masks(labels, num_objects: int):
  """(num_objects, F, H, W) boolean masks of labels 1..num_objects."""
  ids = np.arange(1, num_objects + 1)[:, None, None, None]
  return labels[None] == ids


def evaluate_sequence(gt_labels, res_labels, task: str, matching: str = "video",
                      max_proposals: int = MAX_UNSUPERVISED_PROPOSALS, num_objects=None,
                      row_order: str = "proposal"):
  """Per-object, per-frame J and F of one sequence.

  gt_labels, res_labels: (F, H, W) integer label maps (void = 255 in the ground
  truth). Objects are the ground truth's labels 1..num_objects (default: the
  largest label of the first frame, as the official tool counts them). The
  semi-supervised task scores result object k against ground-truth object k
  without void; the unsupervised one assigns proposals to objects once per video
  (Hungarian on J and F averaged over frames) with void removed, or per frame
  (`matching='frame'`, the authors' repository; not the official protocol).
  Returns (J, F), each (num_objects, F); unsupervised rows are the matched pairs
  in proposal order (official; per frame with `matching='frame'`, as the
  authors' tool) or, with row_order='object', ground-truth object k in row k.
  """
  if row_order not in ROW_ORDERS:
    raise ValueError(f"row_order must be one of {ROW_ORDERS}, got {row_order!r}")
  gt, void = _objects(gt_labels, num_objects)
  num_objects = gt.shape[0]
  num_res = int(np.asarray(res_labels).max())
  res = object_masks(np.asarray(res_labels), num_res)
  if task == "semi-supervised":
    if num_res > num_objects:
      raise ValueError(f"result has object index {num_res}, the sequence has {num_objects}")
    res = np.concatenate([res, np.zeros((num_objects - num_res, *res.shape[1:]), bool)])
    j = np.stack([j_measures(gt[i], res[i]) for i in range(num_objects)])
    f = np.stack([f_measures(gt[i], res[i]) for i in range(num_objects)])
    return j, f
  if task != "unsupervised":
    raise ValueError(f"task must be one of {DAVIS_TASKS}, got {task!r}")
  if num_res > max_proposals:
    raise ValueError(f"result has {num_res} proposals, more than the {max_proposals} allowed")
  return _unsupervised(gt, void, lambda k: res[k], num_res, matching, row_order)


def evaluate_proposals(gt_labels, proposal, count: int, matching: str = "video",
                       num_objects=None, row_order: str = "proposal"):
  """evaluate_sequence's unsupervised task for proposals that may overlap, given
  one at a time: proposal(k) -> (F, H, W) bool for k < count (the SMTC authors'
  tool reads such masks, matching per frame)."""
  gt, void = _objects(gt_labels, num_objects)
  return _unsupervised(gt, void, proposal, count, matching, row_order)


def _objects(gt_labels, num_objects):
  """((objects, F, H, W) bool masks, (F, H, W) bool void) of ground-truth labels;
  num_objects None: the first frame's largest label."""
  gt_labels = np.asarray(gt_labels)
  void = gt_labels == VOID_LABEL
  gt_labels = np.where(void, 0, gt_labels)
  if num_objects is None:
    num_objects = int(gt_labels[0].max())
  return object_masks(gt_labels, num_objects), void


def _unsupervised(gt, void, proposal, count: int, matching: str, row_order: str):
  """(J, F) of the unsupervised task: (objects, F, H, W) gt masks against proposals
  proposal(k) for k < count, padded with empty ones up to the object count."""
  num_objects = gt.shape[0]
  if row_order not in ROW_ORDERS:
    raise ValueError(f"row_order must be one of {ROW_ORDERS}, got {row_order!r}")
  empty = np.zeros(gt.shape[1:], bool)
  masks = (proposal(k) if k < count else empty for k in range(max(count, num_objects)))
  pairs = [[(j_measures(g, r, void), f_measures(g, r, void)) for g in gt] for r in masks]
  j, f = (np.asarray([[pair[i] for pair in row] for row in pairs]) for i in (0, 1))
  # j, f: (proposals, objects, frames)
  if matching == "video":
    rows, cols = _assign(j.mean(axis=2), f.mean(axis=2), row_order)
    return j[rows, cols], f[rows, cols]
  if matching == "frame":
    j_out = np.zeros((num_objects, j.shape[2]))
    f_out = np.zeros_like(j_out)
    for t in range(j.shape[2]):
      rows, cols = _assign(j[:, :, t], f[:, :, t], row_order)
      j_out[:, t], f_out[:, t] = j[rows, cols, t], f[rows, cols, t]
    return j_out, f_out
  raise ValueError(f"matching must be one of {MATCHINGS}, got {matching!r}")


AUTHORS_THRESHOLD = 0.3  # their results.py load_davis: a candidate min-max normalised, > 0.3
AUTHORS_MAX_PROPOSALS = 300  # their evaluation.py _evaluate_unsupervised's limit


def nearest_indices(size_in: int, size_out: int) -> np.ndarray:
  """(size_out,) source index of each output pixel under PyTorch's default
  'nearest' resize (F.interpolate): floor(i * in / out), in float32 as it computes."""
  scale = np.float32(size_in) / np.float32(size_out)
  index = np.floor(np.arange(size_out, dtype=np.float32) * scale).astype(np.int64)
  return np.minimum(index, size_in - 1)


def authors_mask(candidate, size) -> np.ndarray:
  """(H, W) bool: an (h, w) soft candidate mask as the SMTC authors' results.py
  `load_davis` reads it: nearest-upsampled to the annotation's size, min-max
  normalised, above AUTHORS_THRESHOLD. A constant candidate is empty (their
  0 / 0 is NaN, never above the threshold)."""
  rows, cols = (nearest_indices(n, m) for n, m in zip(np.shape(candidate), size))
  big = np.asarray(candidate, np.float32)[rows][:, cols]
  low, high = big.min(), big.max()
  if not high > low:
    return np.zeros(size, bool)
  return (big - low) / (high - low) > np.float32(AUTHORS_THRESHOLD)


def evaluate_authors(gt_labels, frame_candidates, num_objects=None):
  """Per-object, per-frame (J, F) of each frame's soft candidates as the SMTC
  authors' copy of davis2017-evaluation scores them: read by authors_mask (so
  they may overlap), padded with empty masks to the most any frame has, the
  (proposal, object) pairs assigned in each frame. frame_candidates: per frame,
  (K_t, h, w) candidate masks without ids, as their eval_multi.py saves them."""
  count = max((len(m) for m in frame_candidates), default=0)
  if count > AUTHORS_MAX_PROPOSALS:
    raise ValueError(f"a frame has {count} candidates, more than the {AUTHORS_MAX_PROPOSALS} "
                     f"the authors' tool allows")
  size = np.asarray(gt_labels).shape[1:]
  empty = np.zeros(size, bool)
  proposal = lambda k: np.stack([authors_mask(m[k], size) if k < len(m) else empty
                                 for m in frame_candidates])
  return evaluate_proposals(gt_labels, proposal, count, "frame", num_objects)


def _assign(j, f, row_order: str):
  """(proposal, object) index pairs maximising J + F over (proposals, objects)
  scores: in proposal order (scipy's, which the official tool keeps) or sorted
  by object."""
  rows, cols = linear_sum_assignment(-(j + f) / 2)
  if row_order == "object":
    order = np.argsort(cols)
    rows, cols = rows[order], cols[order]
  return rows, cols


def stack_same_size(arrays, paths) -> np.ndarray:
  """np.stack of a video's frames or masks read from `paths`, after checking
  they share the first one's (H, W); a ValueError names the first that does not."""
  first = arrays[0].shape[:2]
  for array, path in zip(arrays, paths):
    if array.shape[:2] != first:
      raise ValueError(f"{path} is {array.shape[0]}x{array.shape[1]}, {paths[0]} "
                       f"{first[0]}x{first[1]}: a video's frames and masks share one size")
  return np.stack(arrays)


def read_annotations(davis_path: str, sequence: str, gt_dir: str):
  """(frame names, (F, H, W) labels) of a sequence's annotation folder."""
  mask_dir = os.path.join(davis_path, gt_dir, sequence)
  if not os.path.isdir(mask_dir):
    raise FileNotFoundError(f"annotations folder {mask_dir} for sequence {sequence} not found")
  names = sorted(f[:-4] for f in os.listdir(mask_dir) if f.endswith(".png"))
  if not names:
    raise FileNotFoundError(f"no annotation PNG in {mask_dir}")
  paths = [os.path.join(mask_dir, f"{n}.png") for n in names]
  return names, stack_same_size([read_label_png(p) for p in paths], paths)


def _score_sequence(sequence, davis_path, results_path, task, matching, row_order):
  """(sequence, (J, F)) of one sequence folder against its ground truth."""
  gt_dir = os.path.join("Annotations" if task == "semi-supervised" else
                        "Annotations_unsupervised", "480p")
  names, gt = read_annotations(davis_path, sequence, gt_dir)
  num_objects = first_frame_objects(gt)
  if task == "semi-supervised":  # first and last frames are not scored
    names, gt = names[1:-1], gt[1:-1]
  limit = MAX_UNSUPERVISED_PROPOSALS if task == "unsupervised" else num_objects
  res = np.stack([_result_frame(results_path, sequence, n, g.shape, limit)
                  for n, g in zip(names, gt)])
  return sequence, evaluate_sequence(gt, res, task, matching, num_objects=num_objects,
                                     row_order=row_order)


def _result_frame(results_path: str, sequence: str, name: str, shape, limit: int) -> np.ndarray:
  """One result PNG, checked against its ground truth's `shape` and the most
  ids a result may hold (`limit`); the error (FileNotFoundError or ValueError)
  names sequence and frame in a message that crosses worker processes whole."""
  path = os.path.join(results_path, sequence, f"{name}.png")
  try:
    labels = read_label_png(path)
  except (OSError, ValueError) as e:
    kind = FileNotFoundError if isinstance(e, FileNotFoundError) else ValueError
    raise kind(f"sequence {sequence}, frame {name}: {e}") from None
  if labels.shape != tuple(shape):
    raise ValueError(f"sequence {sequence}, frame {name}: {path} is {labels.shape}, its ground "
                     f"truth {tuple(shape)}")
  if int(labels.max()) > limit:
    raise ValueError(f"sequence {sequence}, frame {name}: {path} has {int(labels.max())} "
                     f"proposals (its largest id), more than the {limit} allowed")
  return labels


def read_list(path: str) -> list[str]:
  """The non-empty lines of a list file (sequence or video names)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"list file {path} does not exist")
  with open(path) as f:
    return [line.strip() for line in f if line.strip()]


def read_sequences(davis_path: str, image_set: str) -> list[str]:
  return read_list(os.path.join(davis_path, "ImageSets", "2017", f"{image_set}.txt"))


def first_frame_objects(gt_labels) -> int:
  """How many objects a sequence has: the largest label of its first frame, void
  (255) excluded, as the official tool counts them."""
  first = np.asarray(gt_labels[0])
  return int(np.where(first == VOID_LABEL, 0, first).max())


def score_folder(davis_path: str, results_path: str, task: str, image_set: str = "val",
                 matching: str = "video", processes: int = 0, row_order: str = "proposal"):
  """Score every sequence of the set; returns (global row, per-object rows).

  global row: dict over GLOBAL_COLUMNS; per-object rows: [name_k, J-Mean, F-Mean]
  named `<sequence>_<k>` as the official tool names them (unsupervised: the k-th
  matched pair in proposal order; row_order='object': object k).
  """
  sequences = read_sequences(davis_path, image_set)
  work = functools.partial(_score_sequence, davis_path=davis_path, results_path=results_path,
                           task=task, matching=matching, row_order=row_order)
  processes = processes or min(len(sequences), os.cpu_count() or 1)
  if processes > 1:
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
      scored = pool.map(work, sequences)
  else:
    scored = [work(s) for s in sequences]
  stats = {"J": [], "F": []}
  per_object = []
  for sequence, (j, f) in scored:
    for k in range(j.shape[0]):
      j_stats, f_stats = statistics(j[k]), statistics(f[k])
      stats["J"].append(j_stats)
      stats["F"].append(f_stats)
      per_object.append([f"{sequence}_{k + 1}", j_stats[0], f_stats[0]])
  jm, jr, jd = np.mean(np.asarray(stats["J"]), axis=0)
  fm, fr, fd = np.mean(np.asarray(stats["F"]), axis=0)
  values = [(jm + fm) / 2, jm, jr, jd, fm, fr, fd]
  return dict(zip(GLOBAL_COLUMNS, values)), per_object


def write_results(results_path: str, image_set: str, global_row, per_object) -> tuple[str, str]:
  """The official tool's two CSV files (3 decimals, '\n' line ends as pandas writes)."""
  global_csv = os.path.join(results_path, f"global_results-{image_set}.csv")
  sequence_csv = os.path.join(results_path, f"per-sequence_results-{image_set}.csv")
  with open(global_csv, "w", newline="") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(GLOBAL_COLUMNS)
    writer.writerow([f"{global_row[c]:.3f}" for c in GLOBAL_COLUMNS])
  with open(sequence_csv, "w", newline="") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(SEQUENCE_COLUMNS)
    for name, j, fm in per_object:
      writer.writerow([name, f"{j:.3f}", f"{fm:.3f}"])
  return global_csv, sequence_csv


def reference_measures(path: str):
  """(J, F) per-frame functions, (F, H, W) bool masks -> (F,), of a DAVIS team
  metrics file, to check and time this module against: davis2017-evaluation's
  `davis2017/metrics.py` (db_eval_iou, db_eval_boundary) or davisinteractive's
  `metrics/jaccard.py` (batched_jaccard, batched_f_measure). Both need cv2 and
  skimage; their removed numpy aliases (np.int, np.bool, np.float) are restored."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  for name, kind in (("int", int), ("bool", bool), ("float", float)):
    if name not in np.__dict__:
      setattr(np, name, kind)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"reference metrics file {path} does not exist")
  spec = importlib.util.spec_from_file_location("davis_reference_metrics", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if hasattr(module, "db_eval_iou"):
    return module.db_eval_iou, module.db_eval_boundary
  if hasattr(module, "batched_jaccard"):
    per_frame = lambda fn: lambda gt, pred: fn(gt.astype(int), pred.astype(int),
                                               average_over_objects=False, nb_objects=1)[:, 0]
    return per_frame(module.batched_jaccard), per_frame(module.batched_f_measure)
  raise ValueError(f"{path} has neither db_eval_iou/db_eval_boundary nor "
                   f"batched_jaccard/batched_f_measure")


def main(argv=None) -> int:
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--davis_path", required=True)
  parser.add_argument("--results_path", required=True)
  parser.add_argument("--task", required=True, choices=list(DAVIS_TASKS))
  parser.add_argument("--set", default="val", dest="image_set")
  parser.add_argument("--matching", default="video", choices=list(MATCHINGS),
                      help="unsupervised assignment: once per video (official) or per frame "
                           "(the SMTC authors' repository; not comparable with the leaderboard)")
  parser.add_argument("--row_order", default="proposal", choices=list(ROW_ORDERS),
                      help="unsupervised per-object rows: <seq>_<k> is the k-th matched pair in "
                           "proposal order (the official tool's naming) or object k")
  parser.add_argument("--processes", type=int, default=0)
  args = parser.parse_args(argv)
  try:
    global_row, per_object = score_folder(args.davis_path, args.results_path, args.task,
                                          args.image_set, args.matching, args.processes,
                                          args.row_order)
  except (OSError, ValueError) as e:  # a missing or bad file: one line naming it
    print(f"error: {e}", file=sys.stderr)
    return 1
  paths = write_results(args.results_path, args.image_set, global_row, per_object)
  protocol = f"{args.task}" + (f", {args.matching} matching" if args.task == "unsupervised" else "")
  print(f"DAVIS {args.image_set} ({protocol}):")
  print("  ".join(f"{c:>9s}" for c in GLOBAL_COLUMNS))
  print("  ".join(f"{global_row[c]:9.3f}" for c in GLOBAL_COLUMNS))
  print("written:", *paths)
  return 0


if __name__ == "__main__":
  sys.exit(main())
