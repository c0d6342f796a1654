"""`--mode=eval`: object discovery and label propagation on a benchmark
(`eval.benchmark`; the synthetic set by default), for the trained model and two
baselines that the evaluation computes itself: the untrained model (same seed)
and the trivial prediction (whole frame one object; the first frame's labels or
keypoints copied to every frame).

What each benchmark reports (paper Sec. 4):
  synthetic, davis2017   single-object IoU, multi-object J&F (unsupervised
                         annotations), label-propagation J&F (semi-supervised)
  davis2016, segtrack_v2, fbms   single-object IoU
  jhmdb                  PCK at eval.pck_thresholds (keypoint propagation)
  vip                    part mIoU (label propagation)

The weights and forward passes are in predictor.py, the score tables in
scores.py, what is written in writers.py; this file is the loop.
"""

import collections
import contextlib
import functools
import os
import time

import ml_collections
import numpy as np

from smtc_jax import console
from smtc_jax.data import synthetic
from smtc_jax.evaluation import davis, pose, readers, score_cache, scores, writers
from smtc_jax.evaluation.predictor import (Predictor, paper_inference_config,
                                           propagate_keypoints, propagate_masks,
                                           UNTRAINED, trained_variables,
                                           untrained_variables, uses_paper_inference)

EVAL_DIR = "eval"
TASKS = {
    "synthetic": ("iou", "jf_discovery", "jf_propagation"),
    "davis2017": ("iou", "jf_discovery", "jf_propagation"),
    "davis2016": ("iou",),
    "segtrack_v2": ("iou",),
    "fbms": ("iou",),
    "jhmdb": ("pck",),
    "vip": ("miou",),
}


def tasks_of(benchmark: str) -> tuple[str, ...]:
  if benchmark not in TASKS:
    raise ValueError(f"eval.benchmark must be one of {sorted(TASKS)}, got {benchmark!r}")
  return TASKS[benchmark]


def benchmark_data(config, workdir: str):
  """(root, video names, load) of the evaluated benchmark."""
  e = config.eval
  if e.benchmark == "synthetic":
    root = e.data_path or os.path.join(workdir, "synthetic_data")
    synthetic.ensure_synthetic_davis(root, synthetic.SyntheticSpec(**config.data.synthetic.to_dict()))
    names, load = readers.reader("davis2017")
  else:
    names, load = readers.reader(e.benchmark)
    root = e.data_path
    if not root:
      raise ValueError(f"eval.benchmark={e.benchmark} needs eval.data_path (the benchmark's folder)")
  videos = names(root, e.split)
  videos = videos[:e.max_videos] if e.max_videos else videos
  if not videos:
    raise ValueError(f"{root}: no video in split {e.split!r}")
  return root, videos, lambda name: load(root, e.split, name)


def _num_labels(video, tasks) -> int:
  if "miou" in tasks:
    return readers.VIP_NUM_CLASSES
  return davis.first_frame_objects(video.labels) + 1


class StageTimes:
  """Seconds per stage of an evaluation, summed over its videos: `with
  times("stage"): ...` (`python -m smtc_jax.bench eval` prints them)."""

  def __init__(self):
    self.seconds = collections.Counter()

  @contextlib.contextmanager
  def __call__(self, stage: str):
    start = time.perf_counter()
    try:
      yield
    finally:
      self.seconds[stage] += time.perf_counter() - start


def untimed(stage: str):  # pylint: disable=unused-argument
  return contextlib.nullcontext()


def evaluate_method(predictor, variables, video, tasks, paper=None, timer=untimed):
  """Scores of one model on one video, and its predictions: {'discovery': (F, H, W)
  proposals, 'semantic': (F, H, W), 'propagation': (F, H, W) labels, 'keypoints':
  ((F, J, 2), (F, J) visible)}, those the benchmark's tasks produce. With `paper`
  (a Predictor with the paper's inference rules), the discovery scores of its
  proposals from the same forward passes come too, under PAPER_KEY. `timer`
  (a StageTimes) receives the time of each stage."""
  e = predictor.config.eval
  values, predictions = {}, {}
  if any(t in tasks for t in scores.DISCOVERY_TASKS):
    with timer("model on the clips"):
      clips = predictor.clips(variables, video.frames)
    # eval.protocol='authors': multi-object J&F scores each frame's candidates instead.
    candidates = lambda method: (method.candidates_of_clips(clips, video.frames.shape[0])
                                 if e.protocol == "authors" else None)
    with timer("proposals"):
      predictions["discovery"], predictions["semantic"] = predictor.proposals_of_clips(
          clips, video.frames.shape[:3])
    with timer("discovery scores"):
      values.update(scores.score_discovery(video, predictions["discovery"], tasks,
                                           e.unsupervised_matching, e.max_proposals,
                                           candidates(predictor)))
    if paper is not None:
      with timer("paper's inference: proposals and scores"):
        proposals, _ = paper.proposals_of_clips(clips, video.frames.shape[:3])
        values[PAPER_KEY] = scores.score_discovery(video, proposals, tasks,
                                                   e.unsupervised_matching, e.max_proposals,
                                                   candidates(paper))
  if any(t in tasks for t in scores.MASK_PROPAGATION_TASKS):
    with timer("label propagation"):
      predictions["propagation"] = propagate_masks(predictor, variables, video.frames,
                                                   video.labels[0], _num_labels(video, tasks))
    with timer("propagation scores"):
      values.update(scores.score_masks(video, predictions["propagation"], tasks))
  if "pck" in tasks:
    with timer("keypoint propagation and PCK"):
      keypoints, visible = propagate_keypoints(predictor, variables, video.frames,
                                               video.keypoints[0])
      predictions["keypoints"] = keypoints, visible
      values["pck"] = pose.normalised_distances(keypoints, video.keypoints, visible)
  return values, predictions


PAPER_KEY = "paper_inference"  # evaluate_method's scores under the paper's inference
PAPER_METHOD = "trained_paper"  # the results row of the trained model under it


def evaluate_trivial(video, tasks, e):
  """Whole frame = one object; frame 0's labels / keypoints copied to every frame.
  Under the authors' protocol the whole frame is matched per frame, as their tool
  would score it (their min-max rule would empty a constant candidate)."""
  values = {}
  count = video.frames.shape[0]
  if any(t in tasks for t in scores.DISCOVERY_TASKS):
    matching = "frame" if e.protocol == "authors" else e.unsupervised_matching
    values.update(scores.score_discovery(video, np.ones(video.frames.shape[:3], np.uint8), tasks,
                                         matching, e.max_proposals))
  if any(t in tasks for t in scores.MASK_PROPAGATION_TASKS):
    first = np.where(video.labels[0] == davis.VOID_LABEL, 0, video.labels[0])
    values.update(scores.score_masks(video, np.repeat(first[None], count, axis=0), tasks))
  if "pck" in tasks:
    copied = np.repeat(video.keypoints[:1], count, axis=0)
    values["pck"] = pose.normalised_distances(copied, video.keypoints,
                                              np.ones(copied.shape[:2], bool))
  return values


def discovery_scores(predictor: Predictor, variables, videos, tasks=scores.DISCOVERY_TASKS):
  """Object discovery of one model on already-loaded videos, reduced as
  `--mode=eval` reduces it; cheap enough for a quick evaluation inside training.

  predictor: a Predictor of the run's config (build it once: its forward is
  jitted); variables: the model's variables, e.g. smtc.model_variables(
  state.ema_params, state.batch_stats); videos: readers.Video (multi-object J&F
  needs their unsupervised_labels); tasks: of ('iou', 'jf_discovery').
  Returns ({'iou': single-object IoU, 'jf_discovery': multi-object J&F (DAVIS-2017
  unsupervised protocol, eval.unsupervised_matching)} for the tasks asked, the
  first video's predictions as evaluate_method returns them), so a caller that
  also draws that video does not run the model on it twice.
  """
  table = scores.Scores(predictor.config.eval.pck_thresholds)
  first = None
  for video in videos:
    values, predictions = evaluate_method(predictor, variables, video, tasks)
    table.add(video.name, values)
    first = predictions if first is None else first
  return table.summary(), first


def evaluate(config: ml_collections.ConfigDict, workdir: str, timer=untimed) -> dict:
  """Evaluate and print a table; writes WORKDIR/eval/<benchmark>/results.csv
  (naming the weights evaluated), per_video.csv, the trained model's predictions
  and overlays (one folder per benchmark, so one evaluation never overwrites
  another's). Returns {method: {metric: value}}. `timer`: a StageTimes."""
  e = config.eval
  tasks = tasks_of(e.benchmark)
  with timer("set-up: data, weights, models"):
    root, names, load = benchmark_data(config, workdir)
    predictor = Predictor(config)
    # The paper's inference from the same forward passes, where ours differs from it.
    paper = (Predictor(paper_inference_config(config), predictor.model)
             if e.paper_inference and not uses_paper_inference(config)
             and any(t in tasks for t in scores.DISCOVERY_TASKS) else None)
    # The untrained model is initialised when a video first needs it (none when
    # eval.reuse_untrained finds every video's scores).
    untrained = functools.cache(lambda: untrained_variables(config, predictor.model)[0])
    trained, trained_weights = trained_variables(config, workdir, predictor.model)
    methods = {"trained": (lambda: trained, trained_weights),
               "untrained": (untrained, UNTRAINED)}
  console.say(f"evaluating {e.params} of {methods['trained'][1].describe()}")
  out_dir = os.path.join(workdir, EVAL_DIR, e.benchmark)
  rows = ("trained", *([PAPER_METHOD] if paper else []), "untrained", "trivial")
  tables = {m: scores.Scores(e.pck_thresholds) for m in rows}
  cache = score_cache.ScoreCache(config) if e.reuse_untrained else None
  reused = 0
  began = time.time()
  for index, name in enumerate(names):
    with timer("reading videos"):
      video = load(name)
    for method, (variables_of, _) in methods.items():
      if method == "untrained" and cache and (values := cache.get(video)) is not None:
        tables[method].add(name, values)
        reused += 1
        continue
      with timer(f"{method}: weights"):
        variables = variables_of()
      values, predictions = evaluate_method(
          predictor, variables, video, tasks, paper if method == "trained" else None,
          timer=lambda stage, method=method: timer(f"{method}: {stage}"))
      if method == "untrained" and cache:
        cache.put(video, values)
      if PAPER_KEY in values:
        tables[PAPER_METHOD].add(name, values.pop(PAPER_KEY))
      tables[method].add(name, values)
      if method == "trained":
        with timer("writing predictions"):
          writers.write_predictions(out_dir, video, predictions, overlay=index < e.overlays)
    with timer("trivial"):
      tables["trivial"].add(name, evaluate_trivial(video, tasks, e))
    eta = (time.time() - began) / (index + 1) * (len(names) - index - 1)
    console.say(f"evaluated {name} ({index + 1}/{len(names)}) | ETA {eta / 60:.1f} min")
  if reused:
    console.say(f"untrained: the scores of {reused} of {len(names)} videos reused from "
                f"{cache.folder} (eval.reuse_untrained)")
  summary = {m: table.summary() for m, table in tables.items()}
  weights = {m: w for m, (_, w) in methods.items()}
  if paper:
    weights[PAPER_METHOD] = weights["trained"]
  writers.write_tables(out_dir, summary, tables, weights, e)
  writers.print_summary(summary, weights, e, len(names), root)
  print(f"results in {out_dir}: results.csv, per_video.csv and the trained model's predictions")
  return summary
