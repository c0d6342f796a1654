"""Pose tracking by label propagation (JHMDB, the CRW protocol) and PCK.

Each joint of the first frame becomes a Gaussian heat map on the feature grid
(plus a background channel where no joint is); the maps are propagated like
masks; a joint's location in a later frame is the mean of its `topk` strongest
cells weighted by their values. PCK@alpha, as the evaluation script CRW and
later work use: a joint is correct when its distance to the ground truth is
at most alpha times 0.6 x the diagonal of the box around the frame's ground-truth
joints; frame 0 (given) is not scored; PCK is computed per joint over all
videos and frames, then averaged over joints.
"""

import numpy as np

BOX_SCALE = 0.6  # the normaliser is 0.6 x the joints' box diagonal


def to_grid(keypoints, image_size: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
  """(..., 2) pixel (x, y) -> feature-cell coordinates (cell centres at integers)."""
  scale = np.asarray([grid[1] / image_size[1], grid[0] / image_size[0]])
  return (np.asarray(keypoints, np.float64) + 0.5) * scale - 0.5


def to_image(cells, image_size: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
  """Inverse of to_grid."""
  scale = np.asarray([image_size[1] / grid[1], image_size[0] / grid[0]])
  return (np.asarray(cells, np.float64) + 0.5) * scale - 0.5


def keypoint_maps(keypoints, image_size: tuple[int, int], grid: tuple[int, int],
                  sigma: float) -> np.ndarray:
  """(h, w, 1 + J) label maps of one frame's (J, 2) pixel keypoints: channel 0
  is background (1 where no joint reaches), channel 1 + j a Gaussian of std
  `sigma` cells around joint j, cut at 3 sigma. Joints off the grid are left out."""
  h, w = grid
  cells = to_grid(keypoints, image_size, grid)  # (J, 2)
  ys, xs = np.mgrid[0:h, 0:w]
  d2 = (xs[None] - cells[:, 0, None, None])**2 + (ys[None] - cells[:, 1, None, None])**2
  maps = np.exp(-d2 / (2 * sigma**2)) * (d2 <= (3 * sigma)**2)  # (J, h, w)
  inside = ((cells[:, 0] > -0.5) & (cells[:, 0] < w - 0.5) &
            (cells[:, 1] > -0.5) & (cells[:, 1] < h - 0.5))
  maps = maps * inside[:, None, None]
  background = (maps.sum(axis=0) == 0).astype(np.float32)
  return np.concatenate([background[..., None], maps.transpose(1, 2, 0)], -1).astype(np.float32)


def decode_keypoints(maps, topk: int) -> tuple[np.ndarray, np.ndarray]:
  """Joint locations of (F, h, w, 1 + J) propagated maps: the value-weighted mean
  of each joint's `topk` largest cells. Returns ((F, J, 2) cell (x, y), (F, J)
  bool: the joint has any mass)."""
  f, h, w, c = maps.shape
  flat = np.asarray(maps, np.float64)[..., 1:].reshape(f, h * w, c - 1)
  top = np.argsort(-flat, axis=1)[:, :topk]  # (F, k, J)
  values = np.take_along_axis(flat, top, axis=1)
  total = values.sum(axis=1)
  visible = total > 0
  weights = values / np.where(visible, total, 1.0)[:, None]
  xs, ys = top % w, top // w
  coords = np.stack([(weights * xs).sum(axis=1), (weights * ys).sum(axis=1)], -1)
  return coords, visible


def normalised_distances(predicted, gt, visible) -> np.ndarray:
  """(F, J) distance / (0.6 x box diagonal of the frame's visible ground-truth
  joints); NaN where the joint is not scored (invisible, or frame 0)."""
  gt = np.asarray(gt, np.float64)
  box_pts = np.where(visible[..., None], gt, np.nan)
  diagonal = np.linalg.norm(np.nanmax(box_pts, axis=1) - np.nanmin(box_pts, axis=1), axis=-1)
  with np.errstate(divide="ignore", invalid="ignore"):  # one visible joint: no box
    dist = np.linalg.norm(np.asarray(predicted, np.float64) - gt, axis=-1) / (
        BOX_SCALE * diagonal[:, None])
  dist = np.where(visible, dist, np.nan)
  dist[0] = np.nan
  return dist


def pck(distances, thresholds=(0.1, 0.2)) -> dict[float, float]:
  """{alpha: PCK}: per joint the share of scored (non-NaN) distances <= alpha,
  pooled over every frame given, then averaged over joints. distances: (N, J)."""
  d = np.asarray(distances, np.float64)
  scored = ~np.isnan(d)
  out = {}
  for alpha in thresholds:
    with np.errstate(invalid="ignore"):
      per_joint = np.sum(scored & (d <= alpha), axis=0) / np.sum(scored, axis=0)
    out[alpha] = float(np.nanmean(per_joint))
  return out
