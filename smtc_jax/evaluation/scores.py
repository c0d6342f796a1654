"""Score tables: one video's predictions against its ground truth, and one
method's results over the videos, reduced as each benchmark's tool reduces them."""

import numpy as np

from smtc_jax.evaluation import davis, parts, pose, readers

DISCOVERY_TASKS = ("iou", "jf_discovery")  # what object discovery is scored by
# eval.protocol, how multi-object discovery is scored: the official DAVIS-2017 tool on
# the proposals' label maps, or the authors' copy of it on each frame's candidates.
PROTOCOLS = ("official", "authors")
MASK_PROPAGATION_TASKS = ("jf_propagation", "miou")  # what propagated masks are scored by


def discovery_truth(video: readers.Video, tasks):
  """Ground truth of discovery: DAVIS-2017's unsupervised annotations (required
  for multi-object J&F: the semi-supervised ones label other objects), else the
  single-object labels."""
  if video.unsupervised_labels is not None:
    return video.unsupervised_labels
  if "jf_discovery" in tasks:
    raise FileNotFoundError(f"video {video.name} has no Annotations_unsupervised/480p folder: "
                            f"multi-object discovery is scored on DAVIS-2017's unsupervised "
                            f"annotations")
  return video.labels


def score_discovery(video, proposals, tasks, matching: str,
                    max_proposals: int = davis.MAX_UNSUPERVISED_PROPOSALS,
                    candidates=None) -> dict:
  """Single-object IoU over annotated frames; multi-object (J, F) per object
  (eval.unsupervised_matching, at most eval.max_proposals proposals). With
  `candidates` (eval.protocol='authors': per frame, (K_t, h, w) soft masks),
  multi-object (J, F) scores those as the authors' tool does instead
  (davis.evaluate_authors)."""
  truth = discovery_truth(video, tasks)[video.annotated]
  proposals = proposals[video.annotated]
  out = {}
  if "iou" in tasks:
    foreground = (truth > 0) & (truth != davis.VOID_LABEL)
    void = truth == davis.VOID_LABEL
    out["iou"] = float(np.mean(davis.j_measures(foreground, proposals > 0, void)))
  if "jf_discovery" in tasks and candidates is not None:
    annotated = [m for m, scored in zip(candidates, video.annotated) if scored]
    out["jf_discovery"] = davis.evaluate_authors(truth, annotated)
  elif "jf_discovery" in tasks:
    out["jf_discovery"] = davis.evaluate_sequence(truth, proposals, "unsupervised", matching,
                                                  max_proposals)
  return out


def score_masks(video, predicted, tasks) -> dict:
  """Propagated labels: semi-supervised J&F (first and last frames excluded) and/or
  part confusion (annotated frames after the first)."""
  out = {}
  if "jf_propagation" in tasks:
    gt = video.labels
    out["jf_propagation"] = davis.evaluate_sequence(gt[1:-1], predicted[1:-1], "semi-supervised",
                                                    num_objects=davis.first_frame_objects(gt))
  if "miou" in tasks:
    scored = video.annotated.copy()
    scored[0] = False
    out["miou"] = parts.confusion(video.labels[scored], predicted[scored],
                                  readers.VIP_NUM_CLASSES)
  return out


class Scores:
  """One method's results over the videos, reduced as each benchmark's tool does:
  IoU averaged per video then over videos; J&F from every object's J and F
  means (the official global J&F-Mean); PCK pooled per joint over all frames;
  mIoU from one confusion matrix over all frames."""

  def __init__(self, thresholds):
    self.thresholds = tuple(thresholds)
    self.iou, self.distances, self.confusion = [], [], 0
    self.objects = {"jf_discovery": ([], []), "jf_propagation": ([], [])}
    self.per_video = []

  def add(self, video: str, values: dict) -> None:
    """values: iou -> float, jf_* -> (J, F) per object per frame, pck -> (F, J)
    normalised distances, miou -> confusion matrix."""
    row = {"video": video}
    for key, value in values.items():
      if key == "iou":
        self.iou.append(value)
        row[key] = value
      elif key in self.objects:
        j, f = value
        self.objects[key][0].extend(davis.statistics(x)[0] for x in j)
        self.objects[key][1].extend(davis.statistics(x)[0] for x in f)
        row[key] = davis.mean_jf(j, f)
      elif key == "pck":
        self.distances.append(value)
        row.update({f"pck@{a}": v for a, v in pose.pck(value, self.thresholds).items()})
      elif key == "miou":
        self.confusion = self.confusion + value
        row[key] = parts.mean_iou(value)
    self.per_video.append(row)

  def summary(self) -> dict:
    out = {}
    if self.iou:
      out["iou"] = float(np.mean(self.iou))
    for key, (j, f) in self.objects.items():
      if j:
        out[key] = float((np.mean(j) + np.mean(f)) / 2)
    if self.distances:
      out.update({f"pck@{a}": v for a, v in
                  pose.pck(np.concatenate(self.distances), self.thresholds).items()})
    if isinstance(self.confusion, np.ndarray):
      out["miou"] = parts.mean_iou(self.confusion)
    return out
