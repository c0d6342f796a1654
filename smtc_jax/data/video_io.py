"""Frames in and out: a video file or a folder of frames read as chunks, and an
encoded video written frame by frame (PyAV: `pip install -e '.[video]'`).

A source is probed when it is opened (the folder's frames listed and their sizes
read, the video's stream found and its first frame decoded), so bad input is one
`InputError` line naming the file before anything is computed or written. Its
frames then come `chunk` at a time, as (n, H, W, 3) uint8 arrays at the size of
the first frame: the whole video is never in memory.
"""

import collections
import dataclasses
import fractions
import os
from typing import Iterator

import numpy as np
from PIL import Image

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
# Encoders of the written video, best first: H.264 (every player), then MPEG-4 part 2.
VIDEO_CODECS = ("libx264", "mpeg4")


class InputError(ValueError):
  """Input that cannot be read as frames; its message names the file."""


def _av():
  try:
    import av  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise InputError("reading and writing video files needs PyAV: pip install -e '.[video]'") from e
  return av


def frame_files(folder: str) -> list[str]:
  """The folder's .jpg / .jpeg / .png files (any case), sorted by name."""
  return sorted(n for n in os.listdir(folder) if n.lower().endswith(FRAME_SUFFIXES))


def _image_size(path: str) -> tuple[int, int]:
  """(H, W) of an image, from its header."""
  try:
    with Image.open(path) as image:
      return image.size[::-1]
  except OSError as e:
    raise InputError(f"cannot read frame {path} ({e})") from e


def _rgb(path: str) -> np.ndarray:
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert("RGB"))
  except OSError as e:
    raise InputError(f"cannot read frame {path} ({e})") from e


@dataclasses.dataclass(frozen=True)
class Source:
  """Frames to segment: a folder of frames ('frames') or a video file ('video').
  size: (H, W) of the first frame; fps: the video's rate (a folder: the given
  one); count: the number of frames (a video's from its header: an estimate,
  None when it states none); files: a folder's frame files, sorted."""
  path: str
  kind: str
  size: tuple[int, int]
  fps: float
  count: int | None
  files: tuple[str, ...] = ()

  def name(self, index: int) -> str:
    """The name of frame `index`: a folder's file stem, or its index (00000 ...)."""
    return os.path.splitext(self.files[index])[0] if self.files else f"{index:05d}"

  def chunks(self, chunk: int) -> Iterator[np.ndarray]:
    """(n <= chunk, H, W, 3) uint8 frames in order, the last chunk shorter."""
    frames = self._frames()
    while True:
      batch = [f for _, f in zip(range(chunk), frames)]
      if not batch:
        return
      yield np.stack(batch)

  def _frames(self) -> Iterator[np.ndarray]:
    if self.kind == "frames":
      for name in self.files:
        yield _rgb(os.path.join(self.path, name))
      return
    av = _av()
    h, w = self.size
    with av.open(self.path) as container:
      stream = container.streams.video[0]
      stream.thread_type = "AUTO"
      index = 0
      try:
        for frame in container.decode(stream):
          if (frame.height, frame.width) != (h, w):  # a stream may change size: keep the first
            frame = frame.reformat(width=w, height=h)
          yield frame.to_ndarray(format="rgb24")
          index += 1
      except av.error.FFmpegError as e:
        raise InputError(f"{self.path}: cannot decode frame {index} ({e})") from e


def _open_folder(folder: str, fps: float) -> Source:
  files = frame_files(folder)
  if not files:
    raise InputError(f"{folder} holds no frames ({', '.join(FRAME_SUFFIXES)} files)")
  stems = collections.Counter(os.path.splitext(n)[0] for n in files)
  twice = [n for n in files if stems[os.path.splitext(n)[0]] > 1]
  if twice:  # each frame's mask is named after it
    raise InputError(f"{folder}: frames {', '.join(twice[:4])} share a name but for the suffix")
  size = _image_size(os.path.join(folder, files[0]))
  for name in files[1:]:
    other = _image_size(os.path.join(folder, name))
    if other != size:
      raise InputError(f"{os.path.join(folder, name)} is {other[1]}x{other[0]}, but "
                       f"{files[0]} is {size[1]}x{size[0]}: the frames of a folder share one size")
  return Source(folder, "frames", size, fps, len(files), tuple(files))


def _open_video(path: str, fps: float) -> Source:
  av = _av()
  try:
    with av.open(path) as container:
      if not container.streams.video:
        raise InputError(f"{path} has no video stream")
      stream = container.streams.video[0]
      first = next(container.decode(stream), None)
      if first is None:
        raise InputError(f"{path} has no decodable frames")
      rate = stream.average_rate or stream.guessed_rate or stream.base_rate
      rate = float(rate) if rate else fps
      count = stream.frames or None
      if count is None and container.duration:
        count = max(1, round(container.duration / av.time_base * rate))
      return Source(path, "video", (first.height, first.width), rate, count)
  except av.error.FFmpegError as e:
    raise InputError(f"{path} is not a readable video ({e.strerror or e})") from e


def open_source(path: str, fps: float) -> Source:
  """The Source at `path`, a folder of frames (played at `fps`) or a video file;
  InputError (one line, naming the file) when it cannot be read."""
  if not path:
    raise InputError("no input given: a video file or a folder of frames")
  if not os.path.exists(path):
    raise InputError(f"{path} does not exist")
  return _open_folder(path, fps) if os.path.isdir(path) else _open_video(path, fps)


def pick_codec() -> str:
  """The first of VIDEO_CODECS this PyAV's FFmpeg can encode."""
  av = _av()
  for name in VIDEO_CODECS:
    try:
      av.codec.Codec(name, "w")
      return name
    except (ValueError, av.error.FFmpegError):
      continue
  raise InputError(f"this PyAV's FFmpeg encodes none of {', '.join(VIDEO_CODECS)}")


class VideoWriter:
  """An .mp4 written frame by frame at `fps`, at the (H, W) of its frames:
  H.264 (4:2:0; 4:4:4 where a side is odd, which 4:2:0 cannot hold) or, without
  it, MPEG-4. Use as a context manager; `write` takes (H, W, 3) uint8."""

  def __init__(self, path: str, fps: float, size: tuple[int, int]):
    av = _av()
    self.codec = pick_codec()
    self._container = av.open(path, "w")
    rate = fractions.Fraction(fps).limit_denominator(1001)
    self._stream = self._container.add_stream(self.codec, rate=rate)
    self._stream.height, self._stream.width = size
    odd = size[0] % 2 or size[1] % 2
    self._stream.pix_fmt = "yuv444p" if odd and self.codec == "libx264" else "yuv420p"
    self._frame = av.VideoFrame

  def write(self, image: np.ndarray) -> None:
    frame = self._frame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
    self._container.mux(self._stream.encode(frame))

  def close(self) -> None:
    self._container.mux(self._stream.encode())  # flush
    self._container.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
