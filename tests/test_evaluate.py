import dataclasses
import glob
import json
import os

import ml_collections
import numpy as np
import pytest

import jax
import optax
import orbax.checkpoint as ocp

from configs import tiny
from smtc_jax import checkpoint, sharding, train
from smtc_jax.evaluation import davis, discovery, evaluate, monitor, predictor, readers, writers
from smtc_jax.evaluation import scores as scores_lib
from smtc_jax.models import smtc
from smtc_jax.training import state as state_lib
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


def test_components_keep_the_large_connected_regions():
  foreground = np.zeros((8, 8), bool)
  foreground[0:3, 0:3] = True  # 9 pixels
  foreground[5:8, 4:8] = True  # 12 pixels
  foreground[0, 7] = True  # 1 pixel: too small
  foreground[3, 3] = True  # touches the first only diagonally: its own component
  masks = discovery.components(foreground, min_pixels=2)
  assert sorted(int(m.sum()) for m in masks) == [9, 12]
  assert not any(m[0, 7] or m[3, 3] for m in masks)


def _disc(center, radius=3, size=24):
  y, x = np.mgrid[:size, :size]
  return (y - center[0]) ** 2 + (x - center[1]) ** 2 <= radius**2


def test_segments_keep_their_track_through_motion_order_and_a_short_gap():
  # Two discs move right one pixel a frame; each frame lists them in another
  # order; disc B is missing in frames 3-4 (a gap of 2 frames).
  frames = []
  for t in range(7):
    a, b = _disc((6, 4 + t)), _disc((17, 4 + t))
    frames.append([a] if t in (3, 4) else ([b, a] if t % 2 else [a, b]))
  _, ids = discovery.link_segments(frames, min_iou=0.2, max_gap=3)
  track_of = lambda t, row: next(i for m, i in zip(frames[t], ids[t]) if m[row].any())
  assert {track_of(t, 6) for t in range(7)} == {track_of(0, 6)}  # disc A: one id
  assert {track_of(t, 17) for t in (0, 1, 2, 5, 6)} == {track_of(0, 17)}  # B keeps its id
  assert track_of(0, 6) != track_of(0, 17)
  # A gap longer than max_gap, or a jump with no overlap, starts a new track.
  _, late = discovery.link_segments(frames, min_iou=0.2, max_gap=1)
  assert late[5][[i for i, m in enumerate(frames[5]) if m[17].any()][0]] == 2
  _, jump = discovery.link_segments([[_disc((6, 4))], [_disc((6, 16))]], min_iou=0.2, max_gap=3)
  assert jump == [[0], [1]]


def test_component_tracks_give_each_object_one_id_through_the_video():
  foreground = np.stack([_disc((6, 4 + t)) | _disc((17, 20 - t)) for t in range(5)])
  foreground[2] |= _disc((12, 12), radius=0)  # one stray pixel: below min_area
  tracks = discovery.component_tracks(
      foreground, discovery.Tracking("components", min_area=0.01, min_iou=0.2, max_gap=3))
  assert set(np.unique(tracks)) == {0, 1, 2}
  a = [tracks[t, 6, 4 + t] for t in range(5)]  # at each disc's centre
  b = [tracks[t, 17, 20 - t] for t in range(5)]
  assert len(set(a)) == 1 and len(set(b)) == 1 and 0 not in a + b and a[0] != b[0]
  assert tracks[2, 12, 12] == 0


LEFT_X = (4, 6, 8, 10, 11, 10, 8, 6, 4)  # column of the left disc's centre per frame


def _touching_discs():
  """(F, H, W) bool: two discs of radius 3 on one row move towards each other,
  overlap in the middle frames and move apart again (mirror images)."""
  return np.stack([_disc((12, x)) | _disc((12, 24 - x)) for x in LEFT_X])


def test_objects_that_touch_keep_their_ids_when_merges_are_cut():
  foreground = _touching_discs()
  merged = [t for t in range(len(foreground)) if len(discovery.components(foreground[t], 1)) == 1]
  assert merged == [3, 4, 5]  # one component while the discs overlap
  left = lambda tracks: [int(tracks[t, 12, x]) for t, x in enumerate(LEFT_X)]
  right = lambda tracks: [int(tracks[t, 12, 24 - x]) for t, x in enumerate(LEFT_X)]
  cut = discovery.component_tracks(foreground, discovery.Tracking(
      "components", min_area=0.01, min_iou=0.2, max_gap=3, merge_share=0.3, merge_min_frames=2))
  assert len(set(left(cut))) == 1 and len(set(right(cut))) == 1 and left(cut)[0] != right(cut)[0]
  assert set(np.unique(cut[4])) == {0, left(cut)[0], right(cut)[0]}  # the merged blob is shared
  # Without cutting the merged blob takes one id and one disc loses its own.
  whole = discovery.component_tracks(foreground, discovery.Tracking(
      "components", min_area=0.01, min_iou=0.2, max_gap=3, merge_share=0.0))
  assert len(np.unique(whole[4])) == 2
  assert len(set(left(whole))) + len(set(right(whole))) > 2


def test_objects_that_touch_at_the_start_and_part_later_are_cut_with_a_backward_pass():
  foreground = _touching_discs()[3:]  # overlapping in frames 0-2, apart from frame 3 on
  xs = LEFT_X[3:]
  left = lambda tracks: [int(tracks[t, 12, x]) for t, x in enumerate(xs)]
  right = lambda tracks: [int(tracks[t, 12, 24 - x]) for t, x in enumerate(xs)]
  tracking = discovery.Tracking("components", min_area=0.01, min_iou=0.2, max_gap=3,
                                merge_share=0.3, merge_min_frames=2)
  forward = discovery.component_tracks(foreground, tracking)
  assert len(np.unique(forward[0])) == 2  # one id for the merged blob
  assert len(set(left(forward))) + len(set(right(forward))) > 2  # a disc changes id
  both = discovery.component_tracks(foreground, dataclasses.replace(tracking, backward_pass=True))
  assert len(set(left(both))) == 1 and len(set(right(both))) == 1 and left(both)[0] != right(both)[0]
  assert set(np.unique(both[0])) == {0, left(both)[0], right(both)[0]}  # the blob is shared
  # Objects that part first and touch later are cut as without the backward pass.
  late = _touching_discs()[:6]
  assert (discovery.component_tracks(late, dataclasses.replace(tracking, backward_pass=True))
          == discovery.component_tracks(late, tracking)).all()


def test_an_object_seen_in_pieces_for_one_frame_is_not_cut_apart():
  disc = _disc((12, 12), radius=5)
  pieces = disc.copy()
  pieces[:, 12] = False  # frame 0: the disc in two halves
  segments = [discovery.components(pieces, 1), [disc], [disc]]
  assert len(segments[0]) == 2
  cut, ids = discovery.link_segments(segments, 0.2, 3, merge_share=0.3, merge_min_frames=2)
  assert [len(masks) for masks in cut] == [2, 1, 1]  # the whole disc stays whole
  # Had the halves been seen apart for two frames, the disc would be cut between them.
  cut, _ = discovery.link_segments([segments[0], segments[0], [disc]], 0.2, 3,
                                   merge_share=0.3, merge_min_frames=2)
  assert [len(masks) for masks in cut] == [2, 2, 2]


def _striped_disc(centre, radius=8, period=4, gap=2):
  """A disc with vertical background stripes `gap` pixels wide every `period` columns."""
  disc = _disc(centre, radius=radius)
  disc[:, np.arange(disc.shape[1]) % period < gap] = False
  return disc


def test_closing_gaps_joins_a_striped_object_but_not_two_objects():
  striped = _striped_disc((12, 12))
  assert len(discovery.components(striped, 1)) > 3
  assert len(discovery.components(discovery.close_gaps(striped, 2), 1)) == 1
  # Two discs of radius 3, 5 pixels apart, stay apart at radius 4, meet at radius 5.
  pair = _disc((12, 6)) | _disc((12, 18))
  assert len(discovery.components(discovery.close_gaps(pair, 4), 1)) == 2
  assert len(discovery.components(discovery.close_gaps(pair, 5), 1)) == 1
  assert not (discovery.close_gaps(pair, 0) ^ pair).any()


def test_closed_foreground_closes_each_proposal_alone_and_fills_holes():
  ids = np.zeros((24, 24), np.int32)
  ids[_disc((12, 6))] = 1
  ids[_disc((12, 18))] = 2  # another proposal 5 pixels away: not bridged at radius 5
  assert len(discovery.components(discovery.closed_foreground(ids, 5), 1)) == 2
  ids[_disc((12, 18))] = 1  # the same proposal: bridged
  assert len(discovery.components(discovery.closed_foreground(ids, 5), 1)) == 1
  ring = _disc((12, 12), radius=8) & ~_disc((12, 12), radius=5)  # a hole wider than any gap
  assert discovery.closed_foreground(ring.astype(np.int32), 1)[12, 12]
  assert not discovery.closed_foreground(np.zeros((8, 8), np.int32), 3).any()


def test_a_striped_object_is_one_track_when_gaps_are_closed():
  ids = np.stack([_striped_disc((12, 10 + t)).astype(np.int32) for t in range(4)])
  tracking = discovery.Tracking("components", min_area=0.0, min_iou=0.2, max_gap=3)
  assert len(np.unique(discovery.component_tracks(ids, tracking)[0])) > 4
  closed = discovery.component_tracks(ids, dataclasses.replace(tracking, gap_radius=2 / 24))
  assert [len(np.unique(frame)) for frame in closed] == [2, 2, 2, 2]  # background + one id
  assert len(np.unique(closed)) == 2


def test_tracking_rule_comes_from_the_config():
  config = tiny.get_config()
  assert discovery.Tracking.from_config(config).rule == "slots"
  config.eval.tracks, config.eval.track_min_iou = "components", 0.3
  config.eval.track_merge_share = 0.5
  config.eval.track_gap_radius = 0.03
  config.eval.track_backward_pass = True
  assert discovery.Tracking.from_config(config) == discovery.Tracking("components", 0.0025, 0.3, 3,
                                                                      0.5, 2, 0.03, True)
  config.eval.tracks = "foo"
  with pytest.raises(ValueError, match="eval.tracks"):
    discovery.Tracking.from_config(config)


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
  config.train.eval_every, config.train.eval_videos = 1, 1  # the in-training monitor
  config.train.eval_resolution = (48, 48)  # the monitor's own size; --mode=eval's stays
  config.eval.max_videos = 2
  train.train_and_evaluate(config, str(tmp_path))
  # Every step wrote the quick discovery figures, and TensorBoard got the overlay.
  with open(tmp_path / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  watched = [row for row in rows if "eval/iou" in row]
  assert [row["step"] for row in watched] == [1, 2]
  assert all(0.0 <= row["eval/jf_discovery"] <= 1.0 for row in watched)
  events = glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
  assert events and any(b"eval/overlay" in open(e, "rb").read() for e in events)
  assert "eval at step 2 (1 video at 48 x 48) | iou" in capsys.readouterr().out
  summary = evaluate.evaluate(config, str(tmp_path))
  assert set(summary) == {"trained", "untrained", "trivial"}
  for row in summary.values():
    for value in row.values():
      assert 0.0 <= value <= 1.0
  out = capsys.readouterr().out
  assert "official once-per-video" in out and "trivial" in out
  assert f"within {config.eval.prop_radius:.3g} cells, top {config.eval.prop_topk}," in out
  assert "params of checkpoint (step 2" in out
  out = tmp_path / "eval" / "synthetic"
  assert os.path.exists(out / "results.csv") and os.path.exists(out / "per_video.csv")
  with open(out / "results.csv") as f:  # what was evaluated, by method
    rows = {line.split(",")[0]: line.split(",")[1:3] for line in f.read().splitlines()[1:]}
  assert rows == {"trained": ["checkpoint", "2"], "untrained": ["init", "0"], "trivial": ["", ""]}
  assert os.path.exists(out / "overlays" / "val000.png")
  assert len(os.listdir(out / "discovery" / "val000")) == 10
  # The written propagation masks, scored by the folder scorer as a user would score
  # them with the official tool, give the J&F the evaluation printed.
  global_row, _ = davis.score_folder(str(tmp_path / "synthetic_data"), str(out / "propagation"),
                                     "semi-supervised", "val", processes=1)
  assert global_row["J&F-Mean"] == pytest.approx(summary["trained"]["jf_propagation"], abs=1e-9)
  # Under our inference rules the paper's comes beside them, from the same forward
  # passes: its row is what an evaluation with the paper's rules gives.
  ours = ml_collections.ConfigDict(config.to_dict())
  ours.eval.candidates, ours.eval.background, ours.eval.tracks = "score", "border", "components"
  both = evaluate.evaluate(ours, str(tmp_path))
  assert set(both) == {"trained", "trained_paper", "untrained", "trivial"}
  assert both["trained_paper"] == {k: summary["trained"][k] for k in ("iou", "jf_discovery")}
  assert "trained**" in capsys.readouterr().out
  ours.eval.paper_inference = False
  assert "trained_paper" not in evaluate.evaluate(ours, str(tmp_path))
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


def test_border_background_drops_what_fills_the_frame_edges():
  ids = np.ones((2, 8, 8), np.int64)  # 1: background around...
  ids[:, 2:5, 2:5] = 2  # ...an object inside the frame,
  ids[:, 5:8, 5:8] = 3  # one in a corner,
  ids[1, 0:2, 0:3] = 4  # and a patch in another corner of the second frame.
  # Shares of the 128 cells / of the 56 border cells of both frames:
  # 1: 86/128 and 42/56; 2: 18/128 and 0; 3: 18/128 and 10/56; 4: 6/128 and 4/56.
  np.testing.assert_array_equal(discovery.border_background(ids, ratio=0.5),
                                [False, True, False, True, True])
  # With ratio 1.5, only what is 1.5 times as common on the border as inside goes.
  np.testing.assert_array_equal(discovery.border_background(ids, ratio=1.5),
                                [False, False, False, False, True])


def test_border_components_keep_the_inside_pieces_of_a_border_proposal():
  ids = np.zeros((2, 8, 8), np.int64)
  ids[:, 0:2, :] = 1  # proposal 1: a band along the top edge...
  ids[:, 4:6, 3:5] = 1  # ...and a blob inside the frame, apart from it;
  ids[:, 4:6, 6:8] = 2  # proposal 2 sits on the right edge alone.
  ids[:, 6:8, 0:2] = 3  # proposal 3: in a corner, 3 of the 28 border cells.
  # Shares of the frame / of its 28 border cells: 1: 20/64, 10/28; 2: 4/64, 2/28;
  # 3: 4/64, 3/28; at ratio 0.5 proposals 1, 2 and 3 are marked.
  assert discovery.border_background(ids, ratio=0.5)[1:].tolist() == [True, True, True]
  out = discovery.border_component_background(ids, ratio=0.5)
  expected = np.zeros_like(ids)
  expected[:, 4:6, 3:5] = 1  # only the inside blob of proposal 1 is left
  np.testing.assert_array_equal(out, expected)
  np.testing.assert_array_equal(ids[0, 4:6, 6:8], 2)  # the input is not changed
  # Unmarked proposals are untouched: at ratio 1.5 only proposal 3 is marked.
  only_corner = np.where(ids == 3, 0, ids)
  np.testing.assert_array_equal(discovery.border_component_background(ids, ratio=1.5), only_corner)


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
  rule = discovery.Candidates(mask_tau=0.5, tau1=0.3, tau2=0.5)
  proposals, semantic_map = discovery.discover(outputs, 2, (4, 4), (2, 2), rule, 20,
                                               first_stage_only=True)
  # Semantic 1 wins the bottom-right quarter but covers 1/4 < 0.3: background.
  assert set(np.unique(proposals)) == {0, 1}
  assert (proposals[:, :2, :2] == 1).all()
  assert semantic_map.shape == (2, 4, 4)


def _two_semantics_outputs():
  """One clip of one frame, a 2 x 2 grid, N = 2 semantics with P = 2 instances.
  Semantic 0 covers 3 cells, semantic 1 one cell; instances (0, 0) and (1, 0) are
  close to their semantic (cos > 0.99), the others orthogonal to it. (0, 0) wins
  the three cells of semantic 0, (1, 0) the last cell."""
  semantic_slots = np.array([[1.0, 0.0], [0.0, 1.0]])
  instance_slots = np.array([[[1.0, 0.1], [0.0, 1.0]], [[0.1, 1.0], [1.0, 0.0]]])
  object_masks = np.full((2, 2, 4), 0.01)
  object_masks[0, 0, :3] = 0.9
  object_masks[1, 0, 3] = 0.9
  lead = lambda x: np.asarray(x, np.float32)[None, None]  # (C=1, T=1, ...)
  return {"semantic_masks": lead([[0.9, 0.9, 0.9, 0.1], [0.1, 0.1, 0.1, 0.9]]),
          "semantic_slots": lead(semantic_slots), "instance_slots": lead(instance_slots),
          "objects": lead(instance_slots), "object_masks": lead(object_masks)}


def test_eq11_candidates_need_a_large_semantic_and_the_score_rule_does_not():
  outputs = _two_semantics_outputs()
  eq11 = discovery.Candidates(use_area=True, mask_tau=0.5, tau1=0.3, tau2=0.5)
  score = discovery.Candidates(use_area=False, mask_tau=0.5, tau1=0.3, tau2=0.5)
  np.testing.assert_array_equal(eq11.of(outputs)[0, 0], [[True, False], [False, False]])
  np.testing.assert_array_equal(score.of(outputs)[0, 0], [[True, False], [True, False]])
  paper, _ = discovery.discover(outputs, 1, (2, 2), (2, 2), eq11, 20)
  code, _ = discovery.discover(outputs, 1, (2, 2), (2, 2), score, 20)
  # Semantic 1 covers 1/4 < tau1 of the frame: by eq. 11 its instance is no object.
  np.testing.assert_array_equal(paper[0], [[1, 1], [1, 0]])
  np.testing.assert_array_equal(code[0], [[1, 1], [1, 2]])


def test_eval_protocol_authors_scores_each_frames_overlapping_candidates(monkeypatch):
  outputs = _two_semantics_outputs()
  # Instance (1, 0) also reaches cell 2, which (0, 0) wins in the label map; min-max
  # normalised, 0.8 lies above 0.3 there, so its candidate covers cells 2 and 3.
  outputs["object_masks"][0, 0, 1, 0] = [0.5, 0.5, 0.8, 0.9]
  config = tiny.get_config()
  config.data.resolution, config.data.num_frames = (16, 16), 1  # a 2 x 2 grid, one frame
  config.model.num_semantics, config.model.num_instances = 2, 2
  config.eval.candidates = "score"
  video = readers.Video("v", np.zeros((1, 2, 2, 3), np.uint8), np.ones(1, bool),
                        unsupervised_labels=np.array([[[0, 0], [1, 1]]], np.uint8))
  scored = {}
  for protocol in scores_lib.PROTOCOLS:
    config.eval.protocol = protocol
    method = predictor.Predictor(config)
    monkeypatch.setattr(method, "clips", lambda variables, frames: outputs)
    values, _ = evaluate.evaluate_method(method, None, video, ("jf_discovery",))
    scored[protocol] = davis.mean_jf(*values["jf_discovery"])
  # Official: the label map gives the object's row only cell 3 (J = 1/2); the authors'
  # candidate covers the whole row.
  assert scored["authors"] == 1.0 and scored["official"] < 0.8
  candidates = discovery.frame_candidates(outputs, 1, (2, 2), discovery.Candidates(use_area=False))
  np.testing.assert_allclose(candidates[0].reshape(2, 4), [[0.9, 0.9, 0.9, 0.01],
                                                           [0.5, 0.5, 0.8, 0.9]], rtol=1e-6)
  assert "authors' protocol" in writers.column_name("jf_discovery", config.eval)


def test_candidate_rule_comes_from_the_config_and_training_thresholds():
  config = tiny.get_config()
  rule = discovery.Candidates.from_config(config)
  l = config.loss
  assert rule == discovery.Candidates(True, l.valid_mask_tau, l.tau1, l.tau2)  # paper: eq. 11
  config.model.stages = "instance"  # no semantic masks: eq. 11 without its area, as in training
  assert not discovery.Candidates.from_config(config).use_area
  from configs import reference  # pylint: disable=g-import-not-at-top
  assert not discovery.Candidates.from_config(reference.get_config()).use_area
  config.eval.candidates = "area"
  with pytest.raises(ValueError, match="eval.candidates must be one of"):
    discovery.Candidates.from_config(config)


def test_frames_of_mixed_sizes_are_named(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  folder = tmp_path / "JPEGImages" / "480p" / "v"
  folder.mkdir(parents=True)
  for i, size in enumerate([(16, 12), (16, 12), (12, 16)]):
    Image.new("RGB", size).save(folder / f"{i:05d}.jpg")
  with pytest.raises(ValueError, match=r"00002\.jpg is 16x12, .*00000\.jpg 12x16"):
    readers.davis2017_load(str(tmp_path), "val", "v")


def _saved_state(config, workdir, step, shift):
  """A train state at `step` with slot_attention.mu shifted by `shift`, saved as
  the workdir's checkpoint (without a data iterator: evaluation reads none)."""
  state, _ = state_lib.create_state(config, smtc.build_model(config),
                                    state_lib.make_optimizer(config), sharding.make_mesh())
  params = {**state.params, "slot_attention": {**state.params["slot_attention"],
                                               "mu": state.params["slot_attention"]["mu"] + shift}}
  state = state.replace(step=jax.numpy.asarray(step, jax.numpy.int32), params=params)
  manager = checkpoint.make_manager(str(workdir), config)
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=True)
  manager.wait_until_finished()
  manager.close()
  return state


def test_eval_reads_the_newest_weights_alone(tmp_path, monkeypatch):
  config = tiny.get_config()
  config.train.async_checkpoints = False
  newer = _saved_state(config, tmp_path, step=5, shift=1.0)
  older = _saved_state(config, tmp_path / "other", step=3, shift=2.0)
  newest = _saved_state(config, tmp_path / "third", step=7, shift=3.0)
  checkpoint.export_params(older, str(tmp_path / "export"))
  mu = lambda variables: np.asarray(variables["params"]["slot_attention"]["mu"])
  # From here on, evaluation must build no optimizer and read no init.checkpoint.
  monkeypatch.setattr(optax, "scale_by_adam", lambda *a, **k: 1 / 0)
  config.init.checkpoint = str(tmp_path / "no_such_checkpoint")
  variables, weights = predictor.trained_variables(config, str(tmp_path))
  assert (weights.source, weights.step) == ("checkpoint", 5)  # newer than the export's 3
  np.testing.assert_array_equal(mu(variables), newer.params["slot_attention"]["mu"])
  os.rename(tmp_path / "export", tmp_path / "old_export")
  checkpoint.export_params(newest, str(tmp_path / "export"))
  variables, weights = predictor.trained_variables(config, str(tmp_path))
  assert (weights.source, weights.step) == ("export", 7)
  np.testing.assert_array_equal(mu(variables), newest.params["slot_attention"]["mu"])
  config.eval.params = "ema_params"  # the teacher: never shifted
  variables, _ = predictor.trained_variables(config, str(tmp_path))
  np.testing.assert_allclose(mu(variables) + 3.0, newest.params["slot_attention"]["mu"], rtol=1e-6)
  # An export without a step (converted from PyTorch) is older than any checkpoint ...
  os.rename(tmp_path / "export", tmp_path / "newest_export")
  converted = {"params": newest.params, "ema_params": newest.params}
  checkpoint.export_params_tree(converted, str(tmp_path / "export"))
  assert predictor.trained_variables(config, str(tmp_path))[1].source == "checkpoint"
  # ... and evaluated where it is alone.
  checkpoint.export_params_tree(converted, str(tmp_path / "converted" / "export"))
  assert predictor.trained_variables(config, str(tmp_path / "converted"))[1] == predictor.Weights(
      "export", None, str(tmp_path / "converted" / "export"))
  with pytest.raises(FileNotFoundError, match="neither checkpoints"):
    predictor.trained_variables(config, str(tmp_path / "nothing"))


class _ProposalOracle:
  """Predictor stand-in whose proposals are a function of the video's truth."""

  def __init__(self, propose):
    self.config = tiny.get_config()
    self.propose = propose

  def clips(self, variables, frames):  # the "model outputs" are the frames themselves
    del variables
    return frames

  def proposals_of_clips(self, frames, video_shape):
    return self.propose(frames), np.zeros(video_shape, np.uint8)


def test_the_monitor_runs_discovery_at_its_own_size_and_leaves_the_config_alone():
  config = tiny.get_config()
  config.eval.discovery_resolution = (64, 64)
  assert monitor.monitor_config(config) is config  # () = --mode=eval's size
  config.train.eval_resolution = (48, 40)
  watched = monitor.monitor_config(config)
  assert tuple(watched.eval.discovery_resolution) == (48, 40)
  assert tuple(config.eval.discovery_resolution) == (64, 64)
  watch = predictor.Predictor(watched)
  assert watch.size == (48, 40) and watch.grid == (6, 5)


def test_discovery_scores_of_loaded_videos_for_a_training_loop():
  data = layouts.videos(count=2, frames=6, size=32)
  videos = [readers.Video(f"v{i}", f, np.ones(len(f), bool), labels, labels)
            for i, (f, labels) in enumerate(data)]
  truth = {id(v.frames): v.unsupervised_labels for v in videos}
  # Proposals numbered in another order than the objects: matched, so perfect.
  swapped = _ProposalOracle(lambda frames: np.where(truth[id(frames)] > 0,
                                                    10 - truth[id(frames)], 0).astype(np.uint8))
  figures, first = evaluate.discovery_scores(swapped, None, videos)
  assert figures == {"iou": 1.0, "jf_discovery": 1.0}
  # The first video's predictions come back, for the monitor's overlay strip.
  np.testing.assert_array_equal(first["discovery"], swapped.propose(videos[0].frames))
  whole = _ProposalOracle(lambda frames: np.ones(frames.shape[:3], np.uint8))
  scores, _ = evaluate.discovery_scores(whole, None, videos, tasks=("iou",))
  expected = np.mean([np.mean([(v.unsupervised_labels[t] > 0).mean() for t in range(6)])
                      for v in videos])
  assert scores == {"iou": pytest.approx(expected)}


def test_scorer_takes_eval_max_proposals():
  truth = np.ones((2, 4, 30), np.uint8)
  video = readers.Video("one", np.zeros((2, 4, 30, 3), np.uint8), np.ones(2, bool), truth, truth)
  proposals = np.broadcast_to(np.arange(1, 31, dtype=np.uint8) % 22, (2, 4, 30))  # ids 0..21
  with pytest.raises(ValueError, match="21 proposals, more than the 20"):
    scores_lib.score_discovery(video, proposals, ("jf_discovery",), "video")
  j, _ = scores_lib.score_discovery(video, proposals, ("jf_discovery",), "video", 300)["jf_discovery"]
  assert j.shape == (1, 2)


def test_the_untrained_model_is_a_trainings_step_zero_bit_for_bit():
  config = tiny.get_config()
  _, _, state, _ = state_lib.build(config, sharding.make_mesh())
  variables, weights = predictor.untrained_variables(config)
  assert (weights.source, weights.step) == ("init", 0)
  jax.tree.map(np.testing.assert_array_equal, variables["params"], jax.device_get(state.params))
