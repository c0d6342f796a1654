"""The untrained model's scores kept between evaluations (eval.reuse_untrained)."""

import glob
import os

import numpy as np
import pytest
from PIL import Image

from configs import tiny
from smtc_jax import bench, checkpoint
from smtc_jax.evaluation import evaluate, predictor, score_cache


def test_scores_read_back_as_they_were_written():
  rng = np.random.default_rng(0)
  values = {"iou": 0.123456789012345,
            "jf_discovery": ([rng.random(5), rng.random(5)], [rng.random(5), rng.random(5)]),
            "jf_propagation": ([rng.random(3)], [rng.random(3)]),
            "pck": rng.random((4, 15)), "miou": rng.integers(0, 9, (20, 20))}
  back = score_cache.unflatten(score_cache.flatten(values))
  assert set(back) == set(values) and back["iou"] == values["iou"]
  for key in ("jf_discovery", "jf_propagation"):
    for part in (0, 1):
      assert len(back[key][part]) == len(values[key][part])
      for a, b in zip(back[key][part], values[key][part]):
        np.testing.assert_array_equal(a, b)
  for key in ("pck", "miou"):
    np.testing.assert_array_equal(back[key], values[key])
    assert back[key].dtype == values[key].dtype


def test_the_key_follows_what_the_untrained_scores_depend_on():
  config = tiny.get_config()
  key = score_cache.config_key(config)
  config.train.num_steps += 1  # training, the weights' choice and what is drawn: same scores
  config.eval.params, config.eval.overlays = "ema_params", 0
  assert score_cache.config_key(config) == key
  for field, value in (("seed", 1), ("eval.candidates", "score"), ("model.num_semantics", 3),
                       ("loss.tau2", 0.4), ("eval.prop_topk", 3)):
    changed = tiny.get_config()
    section, _, leaf = field.rpartition(".")
    setattr(changed[section] if section else changed, leaf, value)
    assert score_cache.config_key(changed) != key, field


def _workdir_with_export(tmp_path, config):
  """A workdir whose export holds the untrained weights (no training needed)."""
  variables, _ = predictor.untrained_variables(config)
  checkpoint.export_params_tree({"params": variables["params"], "step": np.int64(1)},
                                str(tmp_path / checkpoint.EXPORT_DIR), config)
  return str(tmp_path)


@pytest.mark.slow
def test_a_second_evaluation_reuses_the_untrained_scores(tmp_path, monkeypatch, capsys):
  config = tiny.get_config()
  config.data.synthetic.num_val, config.data.synthetic.size = 2, 32
  config.data.synthetic.num_frames = 4
  workdir = _workdir_with_export(tmp_path, config)
  calls = []
  evaluate_method = evaluate.evaluate_method
  monkeypatch.setattr(evaluate, "evaluate_method",
                      lambda *a, **k: calls.append(a[2].name) or evaluate_method(*a, **k))
  timed = bench.bench_eval(config, workdir)  # --mode=eval, timed per stage
  assert len(calls) == 4  # 2 videos x (trained, untrained)
  stages = {row["stage"]: row["s"] for row in timed["stages"]}
  assert {"trained: model on the clips", "untrained: model on the clips", "untrained: weights",
          "trained: label propagation", "writing predictions"} <= set(stages)
  assert 0 < sum(stages.values()) <= timed["eval_s"]
  results = os.path.join(workdir, "eval", "synthetic", "results.csv")
  with open(results) as f:
    computed = f.read()
  calls.clear()
  again = bench.bench_eval(config, workdir)
  assert len(calls) == 2  # the trained model's only
  # Nor is the untrained model initialised.
  assert not {"untrained: model on the clips", "untrained: weights"} & {
      row["stage"] for row in again["stages"]}
  assert "untrained: the scores of 2 of 2 videos reused" in capsys.readouterr().out
  with open(results) as f:
    assert f.read() == computed  # the same figures, reused or computed
  # A video whose content changed is scored again, and so is an unreadable entry.
  frame = sorted(glob.glob(os.path.join(workdir, "synthetic_data", "JPEGImages", "480p",
                                        "val000", "*")))[0]
  Image.fromarray(255 - np.asarray(Image.open(frame))).save(frame)
  entry = glob.glob(os.path.join(score_cache.cache_root(), "*", "val001.npz"))
  assert len(entry) == 1
  with open(entry[0], "wb") as f:
    f.write(b"not an npz")
  calls.clear()
  evaluate.evaluate(config, workdir)
  assert len(calls) == 4
  # Another inference rule is another entry; reuse switched off computes everything.
  config.eval.candidates = "score"
  calls.clear()
  evaluate.evaluate(config, workdir)
  assert len(calls) == 4
  config.eval.reuse_untrained = False
  calls.clear()
  evaluate.evaluate(config, workdir)
  assert len(calls) == 4


def test_a_cache_folder_that_cannot_be_written_costs_the_reuse_not_the_evaluation(tmp_path):
  blocked = tmp_path / "a_file"
  blocked.write_text("")
  video = type("Video", (), {"name": "v", "frames": np.zeros((1, 2, 2, 3), np.uint8),
                             "annotated": None, "labels": None, "unsupervised_labels": None,
                             "keypoints": None})()
  cache = score_cache.ScoreCache(tiny.get_config(), root=str(blocked))
  cache.put(video, {"iou": 0.5})  # warns instead of raising
  assert cache.get(video) is None
