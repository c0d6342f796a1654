"""The guard of learning: a short run of the embedded default finds the objects
of held-out synthetic videos clearly better than the whole-frame guess. A
change anywhere on the training path (data, augmentation, encoder, losses,
optimizer, EMA, inference) that stops the model from learning fails here."""

import json

import numpy as np
import pytest

from configs import cpu_synthetic
from smtc_jax import sharding, train
from smtc_jax.data import pipeline
from smtc_jax.evaluation import evaluate, scores
from smtc_jax.models import smtc
from smtc_jax.training import state as state_lib
from smtc_jax.training import step as step_lib

# Margins over the trivial whole-frame prediction (IoU 0.150, J&F 0.020 on these
# four videos) on the same videos: about half of what the run below gained (IoU
# 0.659, J&F 0.321 at seed 0, lit set); untrained, the default scores 0.02-0.05 on
# both on the whole validation set (README, "Does the default learn?").
IOU_MARGIN = 0.25
JF_MARGIN = 0.13


def short_default_config():
  """The default, shortened: fewer training videos, half the batch, a few hundred
  steps, the in-training monitor evaluating the last step on four validation videos
  at 256²."""
  config = cpu_synthetic.get_config()
  config.data.batch_size = 4
  config.data.synthetic.num_train = 16
  config.data.synthetic.num_val = 4
  config.train.num_steps = 300
  config.train.checkpoint_every = 300
  config.train.async_checkpoints = False
  config.train.eval_every = 300
  config.train.eval_videos = 4
  # The monitor runs at the default's train.eval_resolution, 256², where the
  # margins were set.
  assert tuple(config.train.eval_resolution) == (256, 256)
  return config


@pytest.mark.slow
def test_a_short_default_run_finds_the_objects_better_than_the_whole_frame(tmp_path):
  config = short_default_config()
  train.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / "metrics.jsonl") as f:
    watched = [row for row in map(json.loads, f) if "eval/iou" in row]
  assert [row["step"] for row in watched] == [300]
  trained = watched[-1]
  _, names, load = evaluate.benchmark_data(config, str(tmp_path))
  trivial = scores.Scores(config.eval.pck_thresholds)
  for name in names[:config.train.eval_videos]:
    trivial.add(name, evaluate.evaluate_trivial(load(name), scores.DISCOVERY_TASKS, config.eval))
  trivial = trivial.summary()
  assert trivial["iou"] <= 0.2 and trivial["jf_discovery"] <= 0.05  # the set is not easy
  assert trained["eval/iou"] >= trivial["iou"] + IOU_MARGIN, (trained, trivial)
  assert trained["eval/jf_discovery"] >= trivial["jf_discovery"] + JF_MARGIN, (trained, trivial)


def _watch(state, step_fn, batches):
  """(top semantic share, teacher centred): the metrics of the steps run on `batches`."""
  shares, centred = [], []
  for batch in batches:
    state, metrics = step_fn(state, batch)
    shares.append(float(metrics["semantic_top_share"]))
    centred.append(float(metrics["teacher_centred"]))
  return shares, centred


@pytest.mark.slow
def test_a_collapsed_start_leaves_its_collapse_only_with_the_teacher_centred(tmp_path):
  # Some initialisations start with one semantic taking most of every frame
  # (seed 7 of the default: 0.56 of the mass where seeds 0-6 start at 0.18-0.28)
  # and, uncentred, stay there (README, "Collapsed starts, and the gated
  # warm-up"). The most collapsed of twelve seeds, trained with the default's
  # gated warm-up and without it, to ten steps past the warm-up's end: its gate
  # opens at once and stays open, and the collapse does not come back. The least
  # collapsed never opens the gate: it trains as without the guard.
  config = short_default_config()
  warmup = config.loss.teacher_centre_steps
  assert warmup > 0 and config.loss.teacher_centre_gate == "latch"
  mesh = sharding.make_mesh()
  source = pipeline.make_source(config, str(tmp_path))
  data = pipeline.make_iterator(pipeline.build_dataset(
      source, pipeline.ClipSpec.from_config(config.data), seed=0,
      global_batch=config.data.batch_size, process_index=0, process_count=1), 0)
  batches = [sharding.global_batch(next(data), mesh) for _ in range(warmup + 10)]
  model, optimizer = smtc.build_model(config), state_lib.make_optimizer(config)
  uncentred = config.copy_and_resolve_references()
  uncentred.loss.teacher_centre_steps = 0

  def start(seed):
    config.seed = seed
    return state_lib.create_state(config, model, optimizer, mesh)

  state, state_sharding = start(0)
  steps = {c.loss.teacher_centre_steps: step_lib.compile_train_steps(
      c, model, optimizer, mesh, state_sharding)[False] for c in (config, uncentred)}
  first_share = {s: _watch(start(s)[0], steps[warmup], batches[:1])[0][0] for s in range(12)}
  seed = max(first_share, key=first_share.get)
  assert first_share[seed] > 0.45, first_share  # a collapsed start among the twelve
  guarded, centred = _watch(start(seed)[0], steps[warmup], batches)
  kept, _ = _watch(start(seed)[0], steps[0], batches)
  assert centred == [1.0] * warmup + [0.0] * 10, centred
  # Seeds that start uncollapsed train at 0.18-0.28; 1 / N = 0.125.
  assert np.mean(guarded[-10:]) < 0.33, guarded
  assert np.mean(kept[-10:]) > 0.45, kept
  healthy = min(first_share, key=first_share.get)
  assert first_share[healthy] < 0.3, first_share
  _, centred = _watch(start(healthy)[0], steps[warmup], batches[:warmup])
  assert not any(centred), centred
