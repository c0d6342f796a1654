"""--mode=predict: one's own video (a file the test encodes, or a folder of
frames) segmented by a workdir's weights into palette PNGs, an overlay video and
a table; ids kept across streamed chunks; bad input refused in one line."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs import tiny
from smtc_jax import checkpoint, config_checks, predict
from smtc_jax.data import palette, video_io
from smtc_jax.evaluation import predictor

av = pytest.importorskip("av")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = (70, 90)  # H, W: not the model's 32 x 32, nor square
FPS = 12
RED, BLUE = (220, 30, 30), (30, 30, 220)


def _square_video(count: int = 14) -> np.ndarray:
  """(count, H, W, 3) uint8: a red square moving right over a grey gradient, a
  blue one moving down."""
  h, w = SIZE
  frames = np.empty((count, h, w, 3), np.uint8)
  frames[:] = np.linspace(60, 160, w, dtype=np.uint8)[None, None, :, None]
  for t in range(count):
    frames[t, 20:40, 5 + 3 * t:25 + 3 * t] = RED
    frames[t, 2 + 2 * t:14 + 2 * t, 60:72] = BLUE
  return frames


def _encode(path: str, frames: np.ndarray, fps: int = FPS) -> None:
  """An H.264 (or MPEG-4) .mp4 of the frames, written with PyAV directly."""
  with av.open(path, "w") as container:
    stream = container.add_stream(video_io.pick_codec(), rate=fps)
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = "yuv420p"
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())


def _decode(path: str) -> np.ndarray:
  with av.open(path) as container:
    return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _masks(folder) -> np.ndarray:
  names = sorted(os.listdir(os.path.join(folder, predict.MASKS_DIR)))
  return np.stack([palette.read_palette_png(os.path.join(folder, predict.MASKS_DIR, n))
                   for n in names])


def _table(folder) -> list[dict]:
  with open(os.path.join(folder, predict.TABLE_FILE)) as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A workdir whose only weights are an export of the tiny model (untrained:
  what is checked here is the plumbing, not what it finds)."""
  folder = tmp_path_factory.mktemp("predict_workdir")
  config = tiny.get_config()
  variables, _ = predictor.untrained_variables(config)
  tree = {"params": variables["params"], "ema_params": variables["params"], "step": np.asarray(7)}
  checkpoint.export_params_tree(tree, str(folder / checkpoint.EXPORT_DIR), config)
  return str(folder)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("input") / "squares.mp4")
  _encode(path, _square_video())
  return path


def _config(input_path, output, chunk_frames=6):
  config = tiny.get_config()
  config.predict.input, config.predict.output = input_path, str(output)
  config.predict.chunk_frames = chunk_frames
  return config


@pytest.mark.slow
def test_a_video_file_gives_masks_an_overlay_video_and_a_table(workdir, video, tmp_path, capsys):
  decoded = _decode(video)
  config = _config(video, tmp_path / "out")
  assert config_checks.problems(config, "predict", workdir) == []
  tracks = predict.run(config, workdir)  # 14 frames in chunks of 6, 6 and 2
  out = capsys.readouterr().out
  assert "predicted frames 12-13 of 14" in out and "ETA" in out
  assert f"14 frames of {video} (90x70, 12 fps)" in out and "export (step 7" in out
  masks = _masks(tmp_path / "out")
  assert masks.shape == (len(decoded), *SIZE)  # one PNG per frame, at the input's size
  assert sorted(os.listdir(tmp_path / "out" / predict.MASKS_DIR))[0] == "00000.png"
  # The overlay video: as many frames, the same size and rate, the frames where
  # nothing was found as they were (up to the codec's loss).
  with av.open(str(tmp_path / "out" / predict.OVERLAY_FILE)) as container:
    assert container.streams.video[0].average_rate == FPS
  drawn = _decode(str(tmp_path / "out" / predict.OVERLAY_FILE))
  assert drawn.shape == decoded.shape
  background = masks == 0
  assert np.abs(drawn.astype(int) - decoded)[background].mean() < 8
  # The table: every instance of every frame with its pixels, as the PNGs hold them.
  rows = _table(tmp_path / "out")
  assert {(int(r["frame"]), int(r["id"])): int(r["area"]) for r in rows} == {
      (t, i): int((masks[t] == i).sum()) for t in range(len(masks)) for i in np.unique(masks[t])
      if i}
  assert set(tracks) == set(np.unique(masks)) - {0}
  assert sum(t.pixels for t in tracks.values()) == int((masks > 0).sum())


@pytest.mark.slow
def test_a_folder_of_the_same_frames_gives_the_same_masks(workdir, video, tmp_path):
  frames = tmp_path / "frames"
  frames.mkdir()
  for t, frame in enumerate(_decode(video)):  # lossless: the frames the video decodes to
    Image.fromarray(frame).save(frames / f"frame_{t:03d}.png")
  (frames / "notes.txt").write_text("not a frame")
  predict.run(_config(str(frames), tmp_path / "from_frames"), workdir)
  predict.run(_config(video, tmp_path / "from_video"), workdir)
  np.testing.assert_array_equal(_masks(tmp_path / "from_frames"), _masks(tmp_path / "from_video"))
  assert sorted(os.listdir(tmp_path / "from_frames" / predict.MASKS_DIR))[0] == "frame_000.png"
  assert _table(tmp_path / "from_frames")[0]["name"].startswith("frame_")
  with av.open(str(tmp_path / "from_frames" / predict.OVERLAY_FILE)) as container:
    assert container.streams.video[0].average_rate == 24  # predict.fps for a folder


def _colour_oracle():
  """A stand-in for the model: the red and blue squares (and anything green) as
  instances, their ids in another order on every call, as a chunk's own ids are."""
  calls = []

  def propose(frames):
    order = [(RED, 1 + len(calls) % 2), (BLUE, 2 - len(calls) % 2), ((30, 200, 30), 3)]
    calls.append(len(frames))
    labels = np.zeros(frames.shape[:3], np.uint8)
    for colour, i in order:
      labels[np.all(np.abs(frames.astype(int) - colour) < 40, axis=-1)] = i
    return labels
  return propose, calls


def test_streamed_chunks_keep_the_ids_of_one_chunk(tmp_path):
  frames = _square_video(16)
  frames[9:, 50:60, 30:40] = (30, 200, 30)  # a green object appears in frame 9
  folder = tmp_path / "frames"
  folder.mkdir()
  for t, frame in enumerate(frames):
    Image.fromarray(frame).save(folder / f"{t:05d}.png")
  source = video_io.open_source(str(folder), fps=10)
  whole = {}
  for chunk in (32, 3, 4):
    propose, calls = _colour_oracle()
    predict.segment(source, propose, str(tmp_path / f"chunks_{chunk}"), chunk, min_iou=0.2)
    assert calls == [min(chunk, 16 - k) for k in range(0, 16, chunk)]
    whole[chunk] = _masks(tmp_path / f"chunks_{chunk}")
  np.testing.assert_array_equal(whole[3], whole[32])
  np.testing.assert_array_equal(whole[4], whole[32])  # green appears inside a chunk there
  red = [whole[4][t, 30, 15 + 3 * t] for t in range(16)]  # at each square's centre
  blue = [whole[4][t, 8 + 2 * t, 66] for t in range(16)]
  assert set(red) == {1} and set(blue) == {2}
  assert set(whole[4][9:, 55, 35]) == {3}  # a new object: a new id, kept from then on


def test_link_chunk_matches_the_cut_by_mask_iou():
  previous = np.zeros((4, 6), np.uint8)
  previous[:, :2], previous[:, 4:] = 5, 9  # the video's ids at the end of the last chunk
  labels = np.zeros((2, 4, 6), np.uint8)
  labels[:, :, 4:], labels[:, :, :2] = 1, 2  # the same objects under the chunk's own ids
  labels[1, 0, 3] = 3  # and one that appears in the chunk's second frame
  linked, next_id = predict.link_chunk(labels, previous, next_id=10, min_iou=0.2)
  assert linked[0, 0, 0] == 5 and linked[0, 0, 5] == 9 and linked[1, 0, 3] == 10
  assert next_id == 11
  # The first chunk keeps its own ids; no overlap at the cut is no match.
  first, next_id = predict.link_chunk(labels, None, next_id=1, min_iou=0.2)
  np.testing.assert_array_equal(first, labels)
  assert next_id == 4
  moved = np.zeros((4, 6), np.uint8)
  moved[:, 2:4] = 5
  linked, _ = predict.link_chunk(labels[:1], moved, next_id=6, min_iou=0.2)
  assert set(np.unique(linked)) == {0, 6, 7}
  # Once every 8-bit id is given, new ones are the lowest not on screen at the cut.
  linked, next_id = predict.link_chunk(labels[:1], moved, next_id=256, min_iou=0.2)
  assert set(np.unique(linked)) == {0, 1, 2} and next_id == 256


def test_the_overlay_colours_and_outlines_instances_and_leaves_the_background():
  frame = np.full((6, 8, 3), 100, np.uint8)
  labels = np.zeros((6, 8), np.uint8)
  labels[1:5, 2:6] = 1
  out = predict.overlay(frame, labels)
  colour = palette.davis_palette()[1]
  np.testing.assert_array_equal(out[labels == 0], frame[labels == 0])
  edge = predict.outline(labels)
  assert edge.sum() == 12 and not edge[2:4, 3:5].any()  # the ring of a 4x4 square
  np.testing.assert_array_equal(out[edge], np.broadcast_to(colour, (12, 3)))
  np.testing.assert_array_equal(out[2, 3], np.rint(0.5 * 100 + 0.5 * colour))


def test_odd_sizes_are_written_and_read_back(tmp_path):
  frames = _square_video(5)[:, :69, :89]
  path = str(tmp_path / "odd.mp4")
  with video_io.VideoWriter(path, 30000 / 1001, (69, 89)) as writer:
    for frame in frames:
      writer.write(frame)
  source = video_io.open_source(path, fps=24)
  assert (source.size, source.count, round(source.fps, 2)) == ((69, 89), 5, 29.97)
  chunks = list(source.chunks(2))
  assert [len(c) for c in chunks] == [2, 2, 1] and chunks[0].shape[1:] == (69, 89, 3)
  assert np.abs(np.concatenate(chunks).astype(int) - frames).mean() < 4


def test_bad_input_is_one_line_naming_it(tmp_path, video):
  workdir = str(tmp_path)  # the weights are read later, by run
  text = tmp_path / "x.mp4"
  text.write_text("not a video")
  with av.open(str(tmp_path / "sound.wav"), "w") as container:  # a file with no video stream
    stream = container.add_stream("pcm_s16le", rate=8000)
    samples = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
    samples.sample_rate = 8000
    container.mux(stream.encode(samples))
    container.mux(stream.encode())
  (tmp_path / "empty").mkdir()
  used = tmp_path / "used"
  (used / predict.MASKS_DIR).mkdir(parents=True)
  sizes = tmp_path / "sizes"
  sizes.mkdir()
  Image.new("RGB", (8, 6)).save(sizes / "a.png")
  Image.new("RGB", (6, 8)).save(sizes / "b.png")
  new = tmp_path / "new"
  expected = {
      ("", new): "predict.input: no input given: a video file or a folder of frames",
      (tmp_path / "missing.mp4", new): f"predict.input: {tmp_path}/missing.mp4 does not exist",
      (text, new): f"predict.input: {text} is not a readable video (Invalid data found when "
                   "processing input)",
      (tmp_path / "sound.wav", new): f"predict.input: {tmp_path}/sound.wav has no video stream",
      (tmp_path / "empty", new): f"predict.input: {tmp_path}/empty holds no frames (.jpg, .jpeg, "
                                 ".png files)",
      (sizes, new): f"predict.input: {sizes}/b.png is 6x8, but a.png is 8x6: the frames of a "
                    "folder share one size",
      (video, used): f"predict.output: {used} already holds files: give a new or empty folder "
                     "(predictions are not overwritten)",
      (video, ""): "predict.output: no output folder given",
  }
  for (source, output), line in expected.items():
    assert config_checks.problems(_config(str(source), output), "predict", workdir) == [line]
  assert not new.exists()
  assert config_checks.problems(_config(video, new, chunk_frames=5), "export", workdir) == [
      "predict.chunk_frames=5 must be a multiple of data.num_frames=3 (whole clips per chunk)"]


def _main(workdir, *overrides):
  return subprocess.run(
      [sys.executable, "-m", "smtc_jax.main", "--config", os.path.join(REPO, "configs/tiny.py"),
       "--workdir", workdir, "--mode=predict", *overrides],
      cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_main_predicts_and_refuses_in_one_line(workdir, video, tmp_path):
  out = tmp_path / "out"
  proc = _main(workdir, f"--config.predict.input={video}", f"--config.predict.output={out}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "14 frames of" in proc.stdout and len(os.listdir(out / predict.MASKS_DIR)) == 14
  # The same output folder again: refused before anything is built or written.
  proc = _main(workdir, f"--config.predict.input={video}", f"--config.predict.output={out}")
  assert proc.returncode == 1 and proc.stdout == ""
  assert proc.stderr.splitlines() == [
      f"error: predict.output: {out} already holds files: give a new or empty folder "
      "(predictions are not overwritten)"]
  # Weights trained under another model: one line, and no output folder.
  other = tmp_path / "other"
  proc = _main(workdir, f"--config.predict.input={video}", f"--config.predict.output={other}",
               "--config.model.num_instances=2")
  assert proc.returncode == 1
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "ConfigMismatch" in errors[0] and "model.num_instances" in errors[0]
  assert not other.exists()
