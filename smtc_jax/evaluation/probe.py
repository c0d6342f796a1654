"""How well an encoder's features tell objects from background: a linear probe;
and how well the semantic stage does: the best union of its semantics.

For the workdir's trained weights and the untrained model, the encoder's features
(eval.prop_features, at the propagation size) of every frame of the benchmark's
training split fit a ridge-regression classifier of each feature cell's label
(object: most of the cell's pixels are some object; background otherwise); the
classifier is scored on the evaluated split as balanced accuracy (the mean of the
object and background recalls: 0.5 is chance, whatever the share of objects).
Supervised, so not a figure of the method: a diagnosis of whether the features
hold what discovery needs, apart from how the slots group them.

The semantic bound: in each video of the evaluated split, the semantics (argmax
of the semantic masks at the discovery size) whose pixels are mostly object are
united, and that union is scored as single-object IoU: what the best choice of
semantics could give, an upper bound for any proposal rule built on them.

The motion read: frames data.gap apart, each feature cell's best match among
the partner's cells around it (model.corr_radius, as model.correlation='local'
reads motion); the share of background cells whose best match is where they
are. The camera moves less than a cell in that time, so features that can tell
motion find the background still.

  python -m smtc_jax.evaluation.probe --config configs/cpu_synthetic.py --workdir W \\
      [--config.eval.benchmark=davis2017 --config.eval.data_path=SET]
"""

import jax.numpy as jnp
import ml_collections
import numpy as np

from smtc_jax.evaluation import davis, evaluate, predictor as predictor_lib, scores
from smtc_jax.models import smtc

PROBE_RIDGE = 1e-2  # ridge penalty on standardised features
TRAIN_SPLIT = "train"


def cell_labels(labels: np.ndarray, grid) -> np.ndarray:
  """(F, h, w) bool: a cell is object when over half its pixels are (void = background)."""
  f, height, width = labels.shape
  h, w = grid
  fg = ((labels > 0) & (labels != davis.VOID_LABEL)).astype(np.float32)
  fg = fg[:, : height // h * h, : width // w * w]
  return fg.reshape(f, h, height // h, w, width // w).mean((2, 4)) > 0.5


def fit_ridge(features: np.ndarray, targets: np.ndarray, ridge: float = PROBE_RIDGE):
  """A linear classifier of bool `targets` (N,) from `features` (N, D), classes
  weighted equally: (mean, std, weights (D+1,)) for `predict`."""
  mean, std = features.mean(0), features.std(0) + 1e-6
  x = np.concatenate([(features - mean) / std, np.ones((len(features), 1))], 1)
  y = np.where(targets, 1.0, -1.0)
  balance = np.where(targets, 0.5 / max(targets.mean(), 1e-6), 0.5 / max(1 - targets.mean(), 1e-6))
  xw = x * balance[:, None]
  weights = np.linalg.solve(x.T @ xw + ridge * len(x) * np.eye(x.shape[1]), xw.T @ y)
  return mean, std, weights


def predict(model, features: np.ndarray) -> np.ndarray:
  mean, std, weights = model
  return ((features - mean) / std) @ weights[:-1] + weights[-1] > 0


def balanced_accuracy(predicted: np.ndarray, truth: np.ndarray) -> float:
  recalls = [(predicted[truth == c] == c).mean() for c in (True, False) if (truth == c).any()]
  return float(np.mean(recalls))


def semantic_bound(semantic: np.ndarray, truth: np.ndarray) -> float:
  """IoU of objects (truth > 0, void excluded) with the union of the semantics
  (semantic: (F, H, W) ids) whose pixels are mostly object in this video."""
  objects = (truth > 0) & (truth != davis.VOID_LABEL)
  valid = truth != davis.VOID_LABEL
  ids = np.unique(semantic[valid])
  chosen = [i for i in ids if objects[(semantic == i) & valid].mean() > 0.5]
  union = np.isin(semantic, chosen) & valid
  return float((union & objects).sum() / max((union | objects).sum(), 1))


def still_share(peaks: np.ndarray, background: np.ndarray, radius: int) -> float:
  """Share of background cells (bool (N,)) whose best-match index (N,) in the
  (2 radius + 1)^2 window is its centre: zero displacement."""
  centre = (2 * radius + 1) ** 2 // 2
  return float((peaks[background] == centre).mean())


def _videos(config, workdir, split):
  """The benchmark's videos of `split`, loaded one at a time."""
  split_config = ml_collections.ConfigDict(config.to_dict())
  split_config.eval.split = split
  _, names, load = evaluate.benchmark_data(split_config, workdir)
  return (load(name) for name in names)


def _cells(feats, truth, annotated):
  """(features (N, D), object (N,)) of every cell of the annotated frames; feats:
  (F, h, w, D), truth: (F, H, W)."""
  return (feats[annotated].reshape(-1, feats.shape[-1]),
          cell_labels(truth[annotated], feats.shape[1:3]).reshape(-1))


def _still_shares(feats, truth, config) -> list[float]:
  """still_share of each frame and the frame data.gap later; feats: (F, h, w, D)."""
  gap, radius = config.data.gap, config.model.corr_radius
  objects = cell_labels(truth, feats.shape[1:3])  # (F, h, w)
  shares = []
  for t in range(0, len(feats) - gap, gap):
    tokens = jnp.asarray(feats[t].reshape(1, 1, -1, feats.shape[-1]))
    corr = smtc.local_correlation(tokens, jnp.asarray(feats[t + gap][None, None]),
                                  feats.shape[1:3], radius, config.model.corr_temperature)
    shares.append(still_share(np.asarray(corr[0, 0]).argmax(-1), ~objects[t].reshape(-1), radius))
  return shares


def probe(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """{method: {'probe': accuracy, 'semantic_bound': IoU, 'still_background': share}}
  for the trained and untrained weights (module doc); each video is read once."""
  predictor = predictor_lib.Predictor(config)
  methods = {"trained": predictor_lib.trained_variables(config, workdir)[0],
             "untrained": predictor_lib.untrained_variables(config)[0]}
  train = {m: [] for m in methods}
  for video in _videos(config, workdir, TRAIN_SPLIT):
    truth = scores.discovery_truth(video, ("iou",))
    for method, variables in methods.items():
      feats = np.asarray(predictor.features(variables, video.frames))  # (F, h, w, D)
      train[method].append(_cells(feats, truth, video.annotated))
  test = {m: {"cells": [], "bounds": [], "still": []} for m in methods}
  for video in _videos(config, workdir, config.eval.split):
    truth = scores.discovery_truth(video, ("iou",))
    for method, variables in methods.items():
      feats = np.asarray(predictor.features(variables, video.frames))
      _, semantic = predictor.proposals(variables, video.frames)
      test[method]["cells"].append(_cells(feats, truth, video.annotated))
      test[method]["bounds"].append(semantic_bound(semantic[video.annotated],
                                                   truth[video.annotated]))
      test[method]["still"].extend(_still_shares(feats, truth, config))
  out = {}
  for method in methods:
    train_x, train_y = map(np.concatenate, zip(*train[method]))
    test_x, test_y = map(np.concatenate, zip(*test[method]["cells"]))
    accuracy = balanced_accuracy(predict(fit_ridge(train_x, train_y), test_x), test_y)
    bound, still = float(np.mean(test[method]["bounds"])), float(np.mean(test[method]["still"]))
    out[method] = {"probe": accuracy, "semantic_bound": bound, "still_background": still}
    print(f"{method}: object/background linear probe, balanced accuracy {accuracy:.3f} "
          f"({len(train_y)} training cells, {len(test_y)} {config.eval.split} cells, "
          f"{test_y.mean():.2f} object); best union of semantics: IoU {bound:.3f}; "
          f"background found still {config.data.gap} frames on: {still:.2f}")
  return out


def main(argv):
  del argv
  probe(main_lib.FLAGS.config, main_lib.FLAGS.workdir)


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  from smtc_jax import main as main_lib  # pylint: disable=g-import-not-at-top  (its flags)
  app.run(main)
