import dataclasses
import os

import numpy as np
import pytest
from PIL import Image

from configs import tiny
from smtc_jax.data import palette, pipeline, sources, synthetic
from smtc_jax.evaluation import readers

SMALL = synthetic.SyntheticSpec(num_train=6, num_val=2, num_frames=16, size=48, seed=3)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
  return synthetic.ensure_synthetic_davis(str(tmp_path_factory.mktemp("data") / "synth"), SMALL)


def _spec(**overrides):
  config = tiny.get_config()
  return dataclasses.replace(pipeline.ClipSpec.from_config(config.data), **overrides)


def test_synthetic_set_has_the_davis_layout_and_is_deterministic(synthetic_root, tmp_path):
  with open(os.path.join(synthetic_root, synthetic.IMAGESET_DIR, "train.txt")) as f:
    names = f.read().split()
  assert len(names) == SMALL.num_train
  video = names[0]
  frames = sources.list_frames(os.path.join(synthetic_root, synthetic.IMAGE_DIR, video))
  assert len(frames) == SMALL.num_frames and frames[0].endswith("00000.jpg")
  labels = palette.read_palette_png(os.path.join(synthetic_root, synthetic.ANNOTATION_DIR, video,
                                                 "00000.png"))
  assert labels.shape == (SMALL.size, SMALL.size)
  again = synthetic.ensure_synthetic_davis(str(tmp_path / "again"), SMALL)
  for name in names:
    for f in ("00000.png", "00009.png"):
      np.testing.assert_array_equal(
          palette.read_palette_png(os.path.join(again, synthetic.ANNOTATION_DIR, name, f)),
          palette.read_palette_png(os.path.join(synthetic_root, synthetic.ANNOTATION_DIR, name, f)))


def test_annotations_carry_the_pascal_voc_palette(tmp_path):
  # The VOC colours DAVIS uses, as published: background black, then maroon,
  # green, olive, navy, purple, teal, grey; 255 (void) is (224, 224, 192).
  voc = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 4: (0, 0, 128),
         5: (128, 0, 128), 6: (0, 128, 128), 7: (128, 128, 128), 255: (224, 224, 192)}
  colours = palette.davis_palette()
  for index, rgb in voc.items():
    assert tuple(colours[index]) == rgb, index
  colours[1] = (1, 2, 3)  # a caller's copy: the next caller still gets the palette
  assert tuple(palette.davis_palette()[1]) == (128, 0, 0)
  path = str(tmp_path / "a" / "00000.png")
  palette.write_palette_png(path, np.array([[0, 1], [2, 255]]))
  with Image.open(path) as image:
    written = np.array(image.getpalette()[:768], np.uint8).reshape(256, 3)
  np.testing.assert_array_equal(written, palette.davis_palette())
  np.testing.assert_array_equal(palette.read_palette_png(path), [[0, 1], [2, 255]])


def test_synthetic_videos_have_repeated_categories_and_occlusion():
  rng = np.random.default_rng(0)
  spec = synthetic.SyntheticSpec(size=64, num_frames=12)
  repeated = occluded = 0
  for _ in range(20):
    frames, labels, objects = synthetic.generate_video(rng, spec)
    assert frames.shape == (12, 64, 64, 3) and labels.shape == (12, 64, 64)
    assert 1 <= len(objects) <= 4
    assert set(np.unique(labels)) <= {0, *objects}
    categories = list(objects.values())
    repeated += len(set(categories)) < len(categories)
    # An instance visible in one frame and shrunk in another is (partly) hidden.
    for instance in objects:
      area = (labels == instance).sum(axis=(1, 2))
      occluded += area.min() < 0.8 * area.max()
  assert repeated >= 3
  assert occluded >= 3


def test_lit_set_holds_the_flat_sets_scenes_under_a_drifting_light(tmp_path):
  lit_spec = dataclasses.replace(SMALL, lighting=0.3, noise=5.0)
  flat_root = synthetic.ensure_synthetic_davis(str(tmp_path / "flat"), SMALL)
  lit_root = synthetic.ensure_synthetic_davis(str(tmp_path / "lit"), lit_spec)
  flat, lit = (readers.davis2017_load(root, "val", "val000") for root in (flat_root, lit_root))
  np.testing.assert_array_equal(flat.labels, lit.labels)  # same scenes, same masks
  # The background's mean brightness: nearly constant in the flat set (it only drifts
  # sideways), it follows the light in the lit one.
  def background_brightness(video):
    frames = video.frames.astype(np.float32)
    return np.array([f[l == 0].mean() for f, l in zip(frames, video.labels)])
  flat_range = np.ptp(background_brightness(flat))
  lit_range = np.ptp(background_brightness(lit))
  assert lit_range > 3 * flat_range and lit_range > 10


def test_clip_indices_use_the_stride_and_shrink_it_for_short_videos():
  rng = np.random.default_rng(0)
  for _ in range(50):
    idx = pipeline.clip_indices(30, 4, 4, rng)
    np.testing.assert_array_equal(np.diff(idx), 4)
    assert idx[0] >= 0 and idx[-1] < 30
  short = pipeline.clip_indices(7, 4, 4, rng)
  np.testing.assert_array_equal(np.diff(short), 2)
  with pytest.raises(ValueError, match="3 frames"):
    pipeline.clip_indices(3, 4, 4, rng)


def test_reference_clip_indices_are_centred_as_the_authors_loader_draws_them():
  rng = np.random.default_rng(0)
  draws = np.stack([pipeline.reference_clip_indices(30, 4, 4, rng) for _ in range(400)])
  np.testing.assert_array_equal(np.diff(draws, axis=1), 4)
  centres = draws[:, 2]  # ind: frames ind-8, ind-4, ind, ind+4
  assert centres.min() == 8 and centres.max() == 30 - 9
  assert draws.max() == 25  # the last four frames are never sampled
  # 13 frames: gap 4 leaves no centre, gap 3 exactly one (ind 6).
  np.testing.assert_array_equal(pipeline.reference_clip_indices(13, 4, 4, rng), [0, 3, 6, 9])
  # Too short for their loader: the gap keeps dropping, down to the first T frames.
  np.testing.assert_array_equal(pipeline.reference_clip_indices(4, 4, 4, rng), [0, 1, 2, 3])
  with pytest.raises(ValueError, match="3 frames"):
    pipeline.reference_clip_indices(3, 4, 4, rng)


def _coded_videos(count, length):
  """Videos whose every pixel of frame t of video v is 10 t + v."""
  return [{"name": f"v{v}", "frames": np.broadcast_to(
      (10 * np.arange(length) + v).astype(np.uint8)[:, None, None, None], (length, 8, 8, 3))}
          for v in range(count)]


@pytest.mark.parametrize("sampling", pipeline.CLIP_SAMPLINGS)
def test_data_clip_sampling_picks_videos_and_frames_as_it_says(sampling):
  plain = dict(random_crop=False, hflip_prob=0.0, jitter_prob=0.0, gray_prob=0.0, blur_prob=0.0,
               num_frames=4, gap=4, resolution=(8, 8))
  spec = _spec(clip_sampling=sampling, **plain)
  clips = pipeline.build_dataset(_coded_videos(5, 20), spec, seed=1, global_batch=40)[0]
  codes = clips["student"][:, :, 0, 0, 0].astype(int)  # (40 clips, T)
  videos, frames = codes % 10, codes // 10
  assert (videos == videos[:, :1]).all()
  first_epoch = sorted(videos[:5, 0])
  if sampling == "epoch":  # every video once per epoch, clips anywhere in it
    assert first_epoch == [0, 1, 2, 3, 4] and frames.max() == 19
  else:  # drawn with replacement, never the last four frames
    assert first_epoch != [0, 1, 2, 3, 4] and frames.max() <= 15
    np.testing.assert_array_equal(frames[:, 2] - frames[:, 0], 8)


def test_pipeline_batches_have_the_right_shapes_and_are_deterministic(synthetic_root):
  source = sources.FrameFolderSource(synthetic_root, "davis", "train", 3)
  spec = _spec()
  ds = pipeline.build_dataset(source, spec, seed=5, global_batch=4)
  first = ds[0]
  assert set(first) == {"student", "teacher"}
  for view in first.values():
    assert view.shape == (4, 3, 32, 32, 3) and view.dtype == np.uint8
  again = pipeline.build_dataset(source, spec, seed=5, global_batch=4)[0]
  np.testing.assert_array_equal(first["student"], again["student"])
  other = pipeline.build_dataset(source, spec, seed=6, global_batch=4)[0]
  assert np.abs(other["student"].astype(int) - first["student"]).max() > 0


def test_process_shards_together_hold_the_global_batch(synthetic_root):
  source = sources.FrameFolderSource(synthetic_root, "davis", "train", 3)
  spec = _spec()
  whole = pipeline.build_dataset(source, spec, seed=1, global_batch=4)
  parts = [pipeline.build_dataset(source, spec, seed=1, global_batch=4, process_index=p,
                                  process_count=2) for p in range(2)]
  for step in range(2):
    merged = np.concatenate([parts[0][step]["teacher"], parts[1][step]["teacher"]])
    np.testing.assert_array_equal(merged, whole[step]["teacher"])


def test_augmentation_is_identical_across_frames_and_geometry_is_shared_by_views():
  video = {"name": "static", "frames": np.repeat(
      np.random.default_rng(0).integers(0, 255, (1, 40, 40, 3), dtype=np.uint8), 6, axis=0)}
  transform = pipeline.SampleClip(_spec())
  for seed in range(10):
    out = transform.random_map(video, np.random.default_rng(seed))
    for view in out.values():  # same input frame -> same augmented frame
      for t in range(1, view.shape[0]):
        np.testing.assert_array_equal(view[t], view[0])
  geometric_only = pipeline.SampleClip(_spec(jitter_prob=0.0, gray_prob=0.0, blur_prob=0.0))
  out = geometric_only.random_map(video, np.random.default_rng(0))
  np.testing.assert_array_equal(out["student"], out["teacher"])
  views = pipeline.SampleClip(_spec(jitter_prob=1.0)).random_map(video, np.random.default_rng(0))
  assert np.abs(views["student"].astype(int) - views["teacher"]).max() > 0


def test_hsv_round_trip_matches_colorsys_and_shifts_the_hue():
  import colorsys  # pylint: disable=g-import-not-at-top
  rgb = np.random.default_rng(0).uniform(size=(200, 3)).astype(np.float32)
  rgb[:3] = [[0.5, 0.5, 0.5], [0, 0, 0], [1, 0, 0]]  # gray, black, red
  hsv = pipeline.rgb_to_hsv(rgb)
  np.testing.assert_allclose(hsv, [colorsys.rgb_to_hsv(*p) for p in rgb], atol=1e-6)
  np.testing.assert_allclose(pipeline.hsv_to_rgb(hsv), rgb, atol=1e-6)
  shifted = pipeline.HUE_ROTATIONS["hsv"](rgb, 1 / 3)
  np.testing.assert_allclose(shifted[2], [0, 1, 0], atol=1e-6)  # red -> green
  np.testing.assert_allclose(shifted[0], rgb[0])  # gray stays gray
  np.testing.assert_allclose(pipeline.rgb_to_hsv(shifted)[:, 1:], hsv[:, 1:], atol=1e-6)


def _colour_video(frames=4, size=40):
  y, x = np.mgrid[0:size, 0:size]
  frame = np.stack([x * 255 // size, y * 255 // size, (x + y) * 127 // size], -1)
  return {"name": "colour", "frames": np.repeat(frame[None].astype(np.uint8), frames, axis=0)}


def test_whole_frame_option_resizes_the_frame_without_crop_or_flip():
  video = _colour_video()
  spec = _spec(random_crop=False, hflip_prob=0.0, jitter_prob=0.0, gray_prob=0.0,
               blur_prob=0.0, resolution=(16, 24))
  from PIL import Image  # pylint: disable=g-import-not-at-top
  expected = np.asarray(Image.fromarray(video["frames"][0]).resize((24, 16), Image.BILINEAR))
  for seed in range(5):
    out = pipeline.SampleClip(spec).random_map(video, np.random.default_rng(seed))
    for view in out.values():
      np.testing.assert_array_equal(view[0], expected)
  cropped = pipeline.SampleClip(dataclasses.replace(spec, random_crop=True))
  assert any(np.abs(cropped.random_map(video, np.random.default_rng(seed))["student"][0]
                    .astype(int) - expected).max() > 0 for seed in range(5))


@pytest.mark.parametrize("gray_first", [True, False])
def test_grayscale_before_jitter_makes_the_hue_shift_a_no_op(gray_first):
  # Always gray, always a large HSV hue shift: converted first, the hue shift finds
  # no colour and the view is the original's luma; converted last, the luma of the
  # hue-shifted colours differs.
  video = _colour_video()
  spec = _spec(random_crop=False, hflip_prob=0.0, jitter_prob=1.0, jitter=(0, 0, 0, 0.5),
               hue_space="hsv", gray_prob=1.0, gray_before_jitter=gray_first, blur_prob=0.0,
               resolution=(40, 40))
  luma = np.round(pipeline._grayscale(video["frames"][0] / 255.0) * 255).astype(int)
  differences = [np.abs(pipeline.SampleClip(spec).random_map(video, np.random.default_rng(s))
                        ["student"][0].astype(int) - luma).max() for s in range(4)]
  if gray_first:
    assert max(differences) <= 1
  else:
    assert max(differences) > 10


def test_iterator_state_restores_the_same_next_batch(synthetic_root):
  source = sources.FrameFolderSource(synthetic_root, "davis", "train", 3)
  ds = pipeline.build_dataset(source, _spec(), seed=2, global_batch=2)
  it = pipeline.make_iterator(ds, num_workers=0)
  next(it), next(it)
  state = it.get_state()
  expected = next(it)
  resumed = pipeline.make_iterator(ds, num_workers=0)
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)["student"], expected["student"])


def _write_frames(folder, sizes):
  """JPEG frames of the given (height, width) sizes, 00000.jpg, 00001.jpg, ..."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  folder.mkdir(parents=True, exist_ok=True)
  for i, (h, w) in enumerate(sizes):
    Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)).save(folder / f"{i:05d}.jpg")


def test_bad_inputs_give_errors_that_name_the_file(tmp_path, synthetic_root):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    sources.FrameFolderSource(str(tmp_path / "nowhere"), "davis", "train", 3)
  # None usable is an error naming the folder and the count.
  with pytest.raises(ValueError, match="no video has the 17 frames.*6 skipped of 6"):
    sources.FrameFolderSource(synthetic_root, "davis", "train", SMALL.num_frames + 1)
  # A .jpg that is not an image: the error names the file.
  root = tmp_path / "yt"
  folder = root / "train" / "JPEGImages" / "broken"
  folder.mkdir(parents=True)
  for i in range(5):
    (folder / f"{i:05d}.jpg").write_bytes(b"not a jpeg")
  source = sources.FrameFolderSource(str(root), "youtube_vos", "train", 4)
  with pytest.raises(ValueError, match=r"cannot read frame .*broken/0000\d.jpg"):
    pipeline.SampleClip(_spec(num_frames=4, gap=1)).random_map(source[0], np.random.default_rng(0))


def test_a_frame_of_another_size_is_an_error_naming_the_file(tmp_path):
  folder = tmp_path / "yt" / "train" / "JPEGImages" / "mixed"
  _write_frames(folder, [(40, 48), (40, 48), (36, 48)])
  source = sources.FrameFolderSource(str(tmp_path / "yt"), "youtube_vos", "train", 3)
  with pytest.raises(ValueError) as error:
    pipeline.SampleClip(_spec(num_frames=3, gap=1)).random_map(source[0], np.random.default_rng(0))
  assert str(error.value) == (
      f"{folder / '00002.jpg'} is 48x36, but {folder / '00000.jpg'} of the same video is 48x40: "
      f"all frames of a video must have one size")


def test_skipped_videos_and_ignored_files_are_counted_in_one_line_each(tmp_path, caplog):
  root = tmp_path / "davis"
  images = root / "JPEGImages" / "480p"
  _write_frames(images / "good", [(32, 32)] * 4)
  (images / "good" / "notes.txt").write_text("not a frame")
  _write_frames(images / "short", [(32, 32)] * 2)
  (images / "empty").mkdir()
  (root / "ImageSets" / "2017").mkdir(parents=True)
  (root / "ImageSets" / "2017" / "train.txt").write_text("good\nshort\nempty\nmissing\n")
  source = sources.FrameFolderSource(str(root), "davis", "train", 3)
  assert [v["name"] for v in source.videos] == ["good"]
  list_file = root / "ImageSets" / "2017" / "train.txt"
  assert dict(source.skipped) == {
      f"listed in {list_file} without a folder": [str(images / "missing")],
      "empty folder (no frames)": [str(images / "empty")],
      "fewer than the 3 frames a clip needs": [str(images / "short")]}
  warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
  assert sorted(warnings) == sorted([
      f"{images}: skipped 1 of 4 videos: listed in {list_file} without a folder "
      f"(e.g. {images / 'missing'})",
      f"{images}: skipped 1 of 4 videos: empty folder (no frames) (e.g. {images / 'empty'})",
      f"{images}: skipped 1 of 4 videos: fewer than the 3 frames a clip needs "
      f"(e.g. {images / 'short'})",
      f"{images}: ignored 1 files that are not .jpg/.jpeg/.png/.bmp frames "
      f"(e.g. {images / 'good' / 'notes.txt'})"])
  assert repr(source) == f"1 videos of {images} (3 skipped, see the warnings)"


def _prepare_tfds_videos(data_dir: str, lengths) -> None:
  """A TFDS builder of random videos (no TensorFlow needed: Tensor feature,
  array_record files), prepared into data_dir as `tfds build` would."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class SmtcTestVideos(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      frames = tfds.features.Tensor(shape=(None, 24, 24, 3), dtype=np.uint8)
      return tfds.core.DatasetInfo(builder=self,
                                   features=tfds.features.FeaturesDict({"video": {"frames": frames}}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      rng = np.random.default_rng(0)
      for i, length in enumerate(lengths):
        yield i, {"video": {"frames": rng.integers(0, 256, (length, 24, 24, 3), dtype=np.uint8)}}

  SmtcTestVideos(data_dir=data_dir, file_format="array_record").download_and_prepare()


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  """A prepared TFDS builder of videos of 6, 2, 5 and 8 frames."""
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  _prepare_tfds_videos(data_dir, lengths=[6, 2, 5, 8])
  return data_dir


def test_tfds_source_streams_videos_and_counts_the_short_ones(tfds_dir, monkeypatch, caplog):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  reads = []

  class CountingSource:
    """TFDS's random-access source, recording which examples are read."""

    def __init__(self, inner):
      self.inner = inner

    def __len__(self):
      return len(self.inner)

    def __getitem__(self, index):
      reads.append(index)
      return self.inner[index]

  real = tfds.data_source
  stored = real("smtc_test_videos", split="train", data_dir=tfds_dir)
  lengths = [len(stored[i]["video"]["frames"]) for i in range(4)]  # TFDS shuffled them
  short = lengths.index(2)
  monkeypatch.setattr(tfds, "data_source", lambda *a, **k: CountingSource(real(*a, **k)))
  source = sources.TfdsVideoSource("smtc_test_videos", "train", tfds_dir, min_frames=3)
  assert reads == [0]  # start-up reads one example (the frames key), not the dataset
  assert len(source) == 4
  # The 2-frame video is replaced by the next long-enough one and counted.
  video = source[short]
  after = (short + 1) % 4
  assert video["name"] == f"smtc_test_videos/train/{after}"
  assert video["frames"].shape == (lengths[after], 24, 24, 3)
  assert any(f"skipped example {short}: 2 frames, fewer than the 3 a clip needs" in r.getMessage()
             for r in caplog.records)
  reads.clear()
  batch = pipeline.build_dataset(source, _spec(), seed=0, global_batch=2)[0]
  assert batch["student"].shape == (2, 3, 32, 32, 3)
  assert len(reads) <= 3  # the batch's two videos (and a short one's replacement)


def test_tfds_source_with_the_wrong_frames_key_names_it_at_start_up(tfds_dir):
  with pytest.raises(ValueError) as error:
    sources.TfdsVideoSource("smtc_test_videos", "train", tfds_dir, 3, frames_key="video/pixels")
  assert str(error.value) == (
      f"TFDS smtc_test_videos[train] in {tfds_dir}: examples have no feature "
      f"data.tfds_frames_key='video/pixels' (features: ['video/frames'])")
