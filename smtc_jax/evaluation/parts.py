"""Human part tracking (VIP): mean IoU over part classes, as the VIP evaluation
computes it: one confusion matrix accumulated over every scored frame of every
video, IoU_c = TP / (TP + FP + FN) per class, averaged over the classes that
occur (in the ground truth or the prediction). Void (255) pixels are ignored;
frame 0 (given) is not scored.
"""

import numpy as np


def confusion(gt, pred, num_classes: int, void: int = 255) -> np.ndarray:
  """(C, C) counts, rows = ground truth, columns = prediction."""
  gt, pred = np.asarray(gt).ravel(), np.asarray(pred).ravel()
  keep = gt != void
  gt, pred = gt[keep].astype(np.int64), pred[keep].astype(np.int64)
  if gt.size and (gt.max() >= num_classes or pred.max() >= num_classes):
    raise ValueError(f"labels must be < {num_classes}, got {max(gt.max(), pred.max())}")
  return np.bincount(gt * num_classes + pred, minlength=num_classes**2).reshape(
      num_classes, num_classes)


def class_ious(matrix) -> np.ndarray:
  """(C,) IoU per class; NaN for a class absent from both sides."""
  matrix = np.asarray(matrix, np.float64)
  tp = np.diag(matrix)
  union = matrix.sum(axis=0) + matrix.sum(axis=1) - tp
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(union > 0, tp / union, np.nan)


def mean_iou(matrix) -> float:
  return float(np.nanmean(class_ious(matrix)))
