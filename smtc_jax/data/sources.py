"""Video sources: frame folders in the DAVIS / YouTube-VOS layouts, and TFDS.

A source is a grain random-access data source whose records are videos:
{'name': str, 'frames': list of image paths} (frame folders) or
{'name': str, 'frames': (F, H, W, 3) uint8} (TFDS, read one video at a time).
A video that cannot give a clip (too few frames, an empty folder, a listed
folder that is missing) is skipped and counted in a warning line that names
one; no usable video is an error naming the folder. A file that cannot be
read as a frame is an error naming it.
"""

import collections
import dataclasses
import os
from typing import Any

from absl import logging
import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


@dataclasses.dataclass(frozen=True)
class VideoFolderLayout:
  """Where the frames and the video list of a layout live, relative to the root."""
  image_dir: str
  list_file: str | None  # video names, one per line; None = every folder


LAYOUTS = ("davis", "youtube_vos")  # data.layout


def layout_for(name: str, split: str) -> VideoFolderLayout:
  """DAVIS: JPEGImages/480p/<video> listed in ImageSets/2017/<split>.txt.
  YouTube-VOS: <split>/JPEGImages/<video>, every folder."""
  if name == "davis":
    return VideoFolderLayout(os.path.join("JPEGImages", "480p"),
                             os.path.join("ImageSets", "2017", f"{split}.txt"))
  if name == "youtube_vos":
    return VideoFolderLayout(os.path.join(split, "JPEGImages"), None)
  raise ValueError(f"data.layout must be one of {LAYOUTS}, got {name!r}")


def list_frames(folder: str) -> list[str]:
  return frames_and_others(folder)[0]


def frames_and_others(folder: str) -> tuple[list[str], list[str]]:
  """(frame image paths, other entries) of a video folder, sorted."""
  paths = [os.path.join(folder, f) for f in sorted(os.listdir(folder))]
  frames = [p for p in paths if p.lower().endswith(IMAGE_EXTENSIONS)]
  return frames, [p for p in paths if not p.lower().endswith(IMAGE_EXTENSIONS)]


def load_frames(paths) -> list[np.ndarray]:
  """Each path's (H, W, 3) uint8 RGB frame; an unreadable file is an error that names it."""
  return [_load_frame(path) for path in paths]


def _load_frame(path: str) -> np.ndarray:
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert("RGB"))
  except (OSError, ValueError) as e:
    raise ValueError(f"cannot read frame {path}: {e}") from e


def _video_names(root: str, image_root: str, spec: VideoFolderLayout) -> list[str]:
  """The videos of the split: those the list file names, or every folder."""
  if spec.list_file is None:
    return sorted(d for d in os.listdir(image_root) if os.path.isdir(os.path.join(image_root, d)))
  list_path = os.path.join(root, spec.list_file)
  if not os.path.isfile(list_path):
    raise FileNotFoundError(f"video list {list_path} does not exist")
  with open(list_path) as f:
    return [line.strip() for line in f if line.strip()]


class FrameFolderSource:
  """Videos stored as folders of frames (grain RandomAccessDataSource)."""

  def __init__(self, root: str, layout: str, split: str, min_frames: int):
    if not os.path.isdir(root):
      raise FileNotFoundError(f"data dir {root} does not exist")
    spec = layout_for(layout, split)
    image_root = os.path.join(root, spec.image_dir)
    if not os.path.isdir(image_root):
      raise FileNotFoundError(f"{image_root} does not exist: is {root} a {layout} folder?")
    names = _video_names(root, image_root, spec)
    self.origin = image_root
    self.videos = []
    self.skipped = collections.defaultdict(list)  # why -> folders
    ignored = []  # files in video folders that are not frames
    for name in names:
      folder = os.path.join(image_root, name)
      if not os.path.isdir(folder):
        self.skipped[f"listed in {os.path.join(root, spec.list_file)} without a folder"].append(
            folder)
        continue
      frames, others = frames_and_others(folder)
      ignored += others
      if not frames:
        self.skipped["empty folder (no frames)"].append(folder)
      elif len(frames) < min_frames:
        self.skipped[f"fewer than the {min_frames} frames a clip needs"].append(folder)
      else:
        self.videos.append({"name": name, "frames": frames})
    for why, folders in self.skipped.items():
      logging.warning("%s: skipped %d of %d videos: %s (e.g. %s)", image_root, len(folders),
                      len(names), why, folders[0])
    if ignored:
      logging.warning("%s: ignored %d files that are not %s frames (e.g. %s)", image_root,
                      len(ignored), "/".join(IMAGE_EXTENSIONS), ignored[0])
    if not self.videos:
      raise ValueError(f"{image_root}: no video has the {min_frames} frames a clip needs "
                       f"({sum(map(len, self.skipped.values()))} skipped of {len(names)})")

  def __len__(self) -> int:
    return len(self.videos)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self.videos[index]

  def __repr__(self) -> str:
    skipped = sum(map(len, self.skipped.values()))
    return (f"{len(self.videos)} videos of {self.origin}"
            + (f" ({skipped} skipped, see the warnings)" if skipped else ""))


class TfdsVideoSource:
  """Videos of a prepared TFDS builder, read one at a time through TFDS's
  random-access data source (ArrayRecord files): a YouTube-VOS-sized builder
  streams instead of filling memory.

  Video lengths are only known once a video is read, so a video too short for a
  clip is found at read time: it is replaced by the next long-enough video (a
  function of the index alone, so batches stay deterministic) and counted in a
  warning line naming it, once per reading process.
  """

  def __init__(self, name: str, split: str, data_dir: str | None, min_frames: int,
               frames_key: str = "video/frames"):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    self.origin = f"TFDS {name}[{split}]" + (f" in {data_dir}" if data_dir else "")
    self.dataset = tfds.data_source(name, split=split, data_dir=data_dir)
    self.name, self.split, self.frames_key, self.min_frames = name, split, frames_key, min_frames
    self.short = set()  # indices found too short in this process
    if not len(self.dataset):
      raise ValueError(f"{self.origin} has no examples")
    self.frames(0)  # a wrong frames key fails here, naming it, not in the first batch

  def frames(self, index: int) -> np.ndarray:
    """(F, H, W, 3) uint8 frames of example `index`."""
    example = self.dataset[index]
    node = example
    for key in self.frames_key.split("/"):
      if not isinstance(node, dict) or key not in node:
        raise ValueError(f"{self.origin}: examples have no feature data.tfds_frames_key="
                         f"{self.frames_key!r} (features: {_feature_paths(example)})")
      node = node[key]
    return np.asarray(node, np.uint8)

  def __len__(self) -> int:
    return len(self.dataset)

  def __getitem__(self, index: int) -> dict[str, Any]:
    for offset in range(len(self)):
      candidate = (index + offset) % len(self)
      frames = self.frames(candidate)
      if len(frames) >= self.min_frames:
        return {"name": f"{self.name}/{self.split}/{candidate}", "frames": frames}
      if candidate not in self.short:
        self.short.add(candidate)
        logging.warning("%s: skipped example %d: %d frames, fewer than the %d a clip needs "
                        "(%d skipped so far)", self.origin, candidate, len(frames),
                        self.min_frames, len(self.short))
    raise ValueError(f"{self.origin}: no example has the {self.min_frames} frames a clip needs")

  def __repr__(self) -> str:
    return f"{len(self)} videos of {self.origin}"


def _feature_paths(example, prefix: str = "") -> list[str]:
  """'video/frames'-style paths of an example's features."""
  if not isinstance(example, dict):
    return [prefix.rstrip("/")]
  return [p for k, v in sorted(example.items()) for p in _feature_paths(v, f"{prefix}{k}/")]
