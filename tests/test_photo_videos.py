"""The photo video families: real pixels, exact masks, moving camera and objects."""

import os

import numpy as np
import pytest

from smtc_jax import config_checks
from smtc_jax.data import palette, photo_videos, sources, synthetic

pytest.importorskip("skimage")
SIZE, FRAMES = 64, 8


@pytest.mark.parametrize("kind", photo_videos.KINDS)
def test_objects_are_pasted_photographs_over_a_panning_photograph(kind):
  rng = np.random.default_rng(5)
  frames, labels, objects = photo_videos.generate_video(rng, kind, SIZE, FRAMES, noise=0.0)
  assert frames.shape == (FRAMES, SIZE, SIZE, 3) and frames.dtype == np.uint8
  assert 2 <= len(objects) <= 3 and set(np.unique(labels)) == {0, *objects}
  centres = {i: [np.argwhere(l == i).mean(0) for l in labels if (l == i).any()] for i in objects}
  # Every object moves: its centre travels over the video.
  assert all(np.linalg.norm(c[-1] - c[0]) > 1.0 or len(c) < FRAMES for c in centres.values())
  # The camera moves: background pixels seen in both frames change between them.
  background = (labels[0] == 0) & (labels[1] == 0)
  assert np.abs(frames[1].astype(float) - frames[0])[background].mean() > 2.0
  # Real photographs, not flat fills: every object and the background carry texture.
  for i in (0, *objects):
    pixels = frames[0][labels[0] == i].astype(float)
    if len(pixels) > 20:
      assert pixels.std(0).max() > 5.0, i


@pytest.mark.parametrize("kind", photo_videos.KINDS)
def test_the_mask_is_where_the_object_was_pasted(kind):
  # The background alone, drawn from the same random stream, against the frame:
  # once the frame's flicker (one gain) is divided out, the pixels that differ
  # are the labelled ones (and most labelled ones differ: a fill may match the
  # background here and there).
  frames, labels, _ = photo_videos.generate_video(np.random.default_rng(2), kind, SIZE, FRAMES, 0.0)
  family = photo_videos.FAMILIES[kind]
  background = photo_videos._background(np.random.default_rng(2), family, SIZE, FRAMES)
  for f in (0, FRAMES - 1):
    outside = labels[f] == 0
    unclipped = outside & (frames[f].max(-1) < 255) & (background[f].min(-1) > 5)
    gain = np.median(frames[f][unclipped] / background[f][unclipped])
    changed = np.abs(frames[f] - gain * np.clip(background[f], 0, 255)).max(-1) > 8
    assert (changed & unclipped).sum() <= 0.002 * unclipped.sum()
    assert changed[~outside].mean() > 0.8


def test_no_photograph_is_both_background_and_object_and_the_families_share_no_background():
  backgrounds = [set(f.backgrounds) for f in photo_videos.FAMILIES.values()]
  assert not backgrounds[0] & backgrounds[1]
  for family in photo_videos.FAMILIES.values():
    assert not set(family.backgrounds) & set(family.fills)


def test_a_photo_set_is_a_davis_set_the_frame_reader_trains_on(tmp_path):
  spec = synthetic.SyntheticSpec(kind="photo_silhouettes", num_train=2, num_val=1,
                                 num_frames=FRAMES, size=SIZE, seed=1)
  root = synthetic.ensure_synthetic_davis(str(tmp_path / "set"), spec)
  assert synthetic.ensure_synthetic_davis(root, spec) == root  # the marker matches
  source = sources.FrameFolderSource(root, "davis", "train", 3)
  assert len(source) >= 1
  labels = palette.read_palette_png(os.path.join(root, synthetic.ANNOTATION_DIR, "val000",
                                                 "00000.png"))
  assert labels.shape == (SIZE, SIZE) and labels.max() >= 1
  with pytest.raises(ValueError, match="another spec"):
    synthetic.ensure_synthetic_davis(root, synthetic.SyntheticSpec(kind="photo_blobs"))


def test_the_command_line_writes_a_set_and_refuses_a_folder_in_use(tmp_path, capsys):
  out = str(tmp_path / "blobs")
  photo_videos.main(["--kind", "photo_blobs", "--output", out, "--num_train", "1", "--num_val", "1"])
  with open(os.path.join(out, synthetic.IMAGESET_DIR, "val.txt")) as f:
    assert f.read().split() == ["val000"]
  (tmp_path / "used").mkdir()
  (tmp_path / "used" / "notes.txt").write_text("mine")
  with pytest.raises(SystemExit):
    photo_videos.main(["--kind", "photo_blobs", "--output", str(tmp_path / "used")])
  assert "is not a synthetic set" in capsys.readouterr().err
  assert (tmp_path / "used" / "notes.txt").read_text() == "mine"


def test_an_unknown_kind_is_named_at_start_up():
  from configs import cpu_synthetic  # pylint: disable=g-import-not-at-top
  config = cpu_synthetic.get_config()
  config.data.synthetic.kind = "photos"
  assert config_checks.problems(config, "train", "/tmp/w")[0] == (
      "data.synthetic.kind='photos' is not one of 'shapes', 'photo_blobs', 'photo_silhouettes'")
