"""Learning you can watch: a quick object-discovery evaluation inside training.

Every train.eval_every steps, process 0 runs discovery on the first
train.eval_videos videos of the evaluation benchmark (`--mode=eval`'s data; for
a run on the user's own frames, only a benchmark the user names) with
the evaluated weights (eval.params) and reports single-object IoU and
multi-object J&F, plus one overlay strip (frames, semantic masks, proposals),
for TensorBoard. The figures are those `--mode=eval` computes, on fewer videos,
and with the model run at train.eval_resolution where that is set (a smaller
size than eval.discovery_resolution makes the watch cheap).
"""

import jax
import ml_collections
import numpy as np

from smtc_jax.evaluation import evaluate, scores, writers
from smtc_jax.evaluation.predictor import Predictor
from smtc_jax.models import smtc


def local_copy(tree):
  """Numpy copies of replicated arrays, from this process's own shard (works on
  one host and on many, where a global array is not fully addressable)."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def monitor_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The run's config with discovery at train.eval_resolution, if set."""
  if not config.train.eval_resolution:
    return config
  config = config.copy_and_resolve_references()
  config.eval.discovery_resolution = tuple(config.train.eval_resolution)
  return config


def watched_tasks(benchmark: str) -> tuple[str, ...]:
  """The discovery scores of `benchmark` that the watch reports (none for the
  keypoint and part benchmarks)."""
  return tuple(t for t in scores.DISCOVERY_TASKS if t in evaluate.TASKS.get(benchmark, ()))


def watch_plan(config: ml_collections.ConfigDict) -> tuple[bool, str]:
  """(whether the watch runs, the console line that says what it evaluates).

  Training on the synthetic set watches that set (eval.benchmark 'synthetic').
  Training on the user's frames (data.source 'frames' or 'tfds') watches only
  what the user names, eval.benchmark with eval.data_path: figures of a
  synthetic set it never trained on would mislead, and nothing generates one
  for the watch."""
  t, e = config.train, config.eval
  if not t.eval_every:
    return False, "watch: off (train.eval_every=0)"
  if config.data.source != "synthetic" and e.benchmark == "synthetic" and not e.data_path:
    return False, (f"watch: off: training reads data.source={config.data.source!r} and no "
                   f"benchmark is named; --config.eval.benchmark=davis2017 "
                   f"--config.eval.data_path=DIR watches one every {t.eval_every} steps")
  tasks = watched_tasks(e.benchmark)
  if not tasks:
    return False, (f"watch: off: eval.benchmark={e.benchmark!r} has no object-discovery score "
                   f"(--mode=eval scores it)")
  where = e.data_path or "the workdir's synthetic set"
  return True, (f"watch: {' and '.join(tasks)} on the first {t.eval_videos} videos of "
                f"{e.benchmark} ({where}) every {t.eval_every} steps")


class TrainingMonitor:
  """Discovery figures and an overlay of a train state on a few held-out videos
  of eval.benchmark (watch_plan says when there is one to watch)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    _, names, load = evaluate.benchmark_data(config, workdir)
    self.videos = [load(name) for name in names[:config.train.eval_videos]]
    self.predictor = Predictor(monitor_config(config))
    self.params = config.eval.params
    self.tasks = watched_tasks(config.eval.benchmark)

  def __call__(self, state) -> tuple[dict[str, float], np.ndarray]:
    """({'eval/iou', 'eval/jf_discovery'}, (H, W, 3) uint8 overlay strip of the
    first video)."""
    variables = smtc.model_variables(local_copy(getattr(state, self.params)),
                                     local_copy(state.batch_stats))
    figures, first = evaluate.discovery_scores(self.predictor, variables, self.videos, self.tasks)
    strip = writers.overlay_strip(self.videos[0].frames, first["semantic"], first["discovery"])
    return {f"eval/{k}": v for k, v in figures.items()}, strip

  def describe(self) -> str:
    """What the figures are of, for the console: '2 videos at 256 x 256'."""
    count = len(self.videos)
    return (f"{count} video{'s' if count != 1 else ''} at "
            f"{self.predictor.size[0]} x {self.predictor.size[1]}")
