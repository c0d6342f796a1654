import os

import numpy as np
import pytest

from configs import tiny
from smtc_jax import train
from smtc_jax.evaluation import davis, discovery, evaluate
from tests import benchmark_layouts as layouts


def test_clips_pad_the_last_clip_with_the_last_frame():
  frames = np.arange(10)[:, None]
  clips = discovery.clips_of(frames, 4)
  assert clips.shape == (3, 4, 1)
  np.testing.assert_array_equal(clips[-1, :, 0], [8, 9, 9, 9])


def test_instances_are_linked_across_clips_by_their_object_vectors():
  rng = np.random.default_rng(0)
  base = rng.normal(size=(2, 4, 8))
  base /= np.linalg.norm(base, axis=-1, keepdims=True)
  perm = np.array([[2, 0, 3, 1], [1, 3, 0, 2]])
  second = np.stack([base[n][perm[n]] for n in range(2)])  # clip 2 lists them shuffled
  order = discovery.link_instances(np.stack([base, second]))
  np.testing.assert_array_equal(order[0], np.tile(np.arange(4), (2, 1)))
  for n in range(2):  # second[n][order] is base[n] again
    np.testing.assert_allclose(second[n][order[1, n]], base[n])


@pytest.mark.slow
def test_eval_mode_reports_the_model_and_both_baselines(tmp_path, capsys):
  config = tiny.get_config()
  config.data.source = "synthetic"
  config.data.layout = "davis"
  config.data.batch_size = 2
  config.data.num_workers = 0
  s = config.data.synthetic
  s.num_train, s.num_val, s.size, s.num_frames = 2, 2, 48, 10
  config.train.num_steps = 2
  config.train.async_checkpoints = False
  config.eval.max_videos = 2
  train.train_and_evaluate(config, str(tmp_path))
  summary = evaluate.evaluate(config, str(tmp_path))
  assert set(summary) == {"trained", "untrained", "trivial"}
  for row in summary.values():
    for value in row.values():
      assert 0.0 <= value <= 1.0
  out = capsys.readouterr().out
  assert "official once-per-video" in out and "trivial" in out
  out = tmp_path / "eval" / "synthetic"
  assert os.path.exists(out / "results.csv") and os.path.exists(out / "per_video.csv")
  assert os.path.exists(out / "overlays" / "val000.png")
  assert len(os.listdir(out / "discovery" / "val000")) == 10
  # The written propagation masks, scored by the folder scorer as a user would score
  # them with the official tool, give the J&F the evaluation printed.
  global_row, _ = davis.score_folder(str(tmp_path / "synthetic_data"), str(out / "propagation"),
                                     "semi-supervised", "val", processes=1)
  assert global_row["J&F-Mean"] == pytest.approx(summary["trained"]["jf_propagation"], abs=1e-9)
  # The same trained model on the other benchmarks' layouts (tiny folders written
  # from synthetic videos), each with its own metrics and results folder.
  data = layouts.videos(count=2, frames=6, size=48)
  writers = {"davis2016": layouts.write_davis2016, "segtrack_v2": layouts.write_segtrack_v2,
             "fbms": layouts.write_fbms, "vip": layouts.write_vip,
             "jhmdb": lambda root, d: layouts.write_jhmdb(root, d + d[:1])}
  expected = {"davis2016": {"iou"}, "segtrack_v2": {"iou"}, "fbms": {"iou"}, "vip": {"miou"},
              "jhmdb": {"pck@0.1", "pck@0.2"}}
  for benchmark, write in writers.items():
    root = str(tmp_path / benchmark)
    write(root, data)
    config.eval.benchmark, config.eval.data_path = benchmark, root
    config.eval.split = "Testset" if benchmark == "fbms" else "val"
    summary = evaluate.evaluate(config, str(tmp_path))
    for row in summary.values():
      assert set(row) == expected[benchmark], benchmark
      assert all(0.0 <= v <= 1.0 for v in row.values()), (benchmark, row)
    with open(tmp_path / "eval" / benchmark / "per_video.csv") as f:
      assert len(f.read().strip().splitlines()) == 1 + 3 * 2  # 3 methods x 2 videos
  assert len(os.listdir(tmp_path / "eval" / "vip" / "propagation" / "videos0")) == 6
  with np.load(tmp_path / "eval" / "jhmdb" / "keypoints" / "wave_clip0.npz") as saved:
    assert saved["xy"].shape == (6, 6, 2) and saved["visible"].shape == (6, 6)
  assert os.path.exists(out / "results.csv")  # not overwritten by the others


def test_first_stage_only_proposals_are_the_large_semantic_masks():
  # One clip of 2 frames, N = 3 semantics on a 2 x 2 grid, P = 2.
  semantic = np.zeros((1, 2, 3, 4), np.float32)
  semantic[:, :, 0] = [0.9, 0.9, 0.9, 0.1]  # covers 3/4 of the frame
  semantic[:, :, 1] = [0.05, 0.05, 0.05, 0.8]  # 1/4
  semantic[:, :, 2] = [0.05, 0.05, 0.05, 0.1]  # nowhere
  rng = np.random.default_rng(0)
  outputs = {
      "semantic_masks": semantic,
      "semantic_slots": rng.normal(size=(1, 2, 3, 8)),
      "instance_slots": rng.normal(size=(1, 2, 3, 2, 8)),
      "objects": rng.normal(size=(1, 2, 3, 2, 8)),
      "object_masks": np.repeat(semantic[:, :, :, None] / 2, 2, axis=3),
  }
  proposals, semantic_map = discovery.discover(outputs, 2, (4, 4), (2, 2), 0.5, 20,
                                               first_stage_only=True, area_tau=0.3, mask_tau=0.5)
  # Semantic 1 wins the bottom-right quarter but covers 1/4 < 0.3: background.
  assert set(np.unique(proposals)) == {0, 1}
  assert (proposals[:, :2, :2] == 1).all()
  assert semantic_map.shape == (2, 4, 4)
