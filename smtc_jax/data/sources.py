"""Video sources: frame folders in the DAVIS / YouTube-VOS layouts, and TFDS.

A source is a grain random-access data source whose records are videos:
{'name': str, 'frames': list of JPEG paths} (frame folders) or
{'name': str, 'frames': (F, H, W, 3) uint8} (TFDS). Videos too short for a clip
are skipped with a warning count; no usable video is an error naming the folder.
"""

import dataclasses
import os
from typing import Any, Sequence

from absl import logging
import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


@dataclasses.dataclass(frozen=True)
class VideoFolderLayout:
  """Where the frames and the video list of a layout live, relative to the root."""
  image_dir: str
  list_file: str | None  # video names, one per line; None = every folder


def layout_for(name: str, split: str) -> VideoFolderLayout:
  """DAVIS: JPEGImages/480p/<video> listed in ImageSets/2017/<split>.txt.
  YouTube-VOS: <split>/JPEGImages/<video>, every folder."""
  if name == "davis":
    return VideoFolderLayout(os.path.join("JPEGImages", "480p"),
                             os.path.join("ImageSets", "2017", f"{split}.txt"))
  if name == "youtube_vos":
    return VideoFolderLayout(os.path.join(split, "JPEGImages"), None)
  raise ValueError(f"data.layout must be 'davis' or 'youtube_vos', got {name!r}")


def list_frames(folder: str) -> list[str]:
  return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                if f.lower().endswith(IMAGE_EXTENSIONS))


def load_frame(path: str) -> np.ndarray:
  """(H, W, 3) uint8 RGB; an unreadable file is an error that names it."""
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert("RGB"))
  except (OSError, ValueError) as e:
    raise ValueError(f"cannot read frame {path}: {e}") from e


class FrameFolderSource:
  """Videos stored as folders of frames (grain RandomAccessDataSource)."""

  def __init__(self, root: str, layout: str, split: str, min_frames: int):
    if not os.path.isdir(root):
      raise FileNotFoundError(f"data dir {root} does not exist")
    spec = layout_for(layout, split)
    image_root = os.path.join(root, spec.image_dir)
    if not os.path.isdir(image_root):
      raise FileNotFoundError(f"{image_root} does not exist: is {root} a {layout} folder?")
    if spec.list_file is None:
      names = sorted(d for d in os.listdir(image_root) if os.path.isdir(os.path.join(image_root, d)))
    else:
      list_path = os.path.join(root, spec.list_file)
      if not os.path.isfile(list_path):
        raise FileNotFoundError(f"video list {list_path} does not exist")
      with open(list_path) as f:
        names = [line.strip() for line in f if line.strip()]
    self.videos, self.skipped = [], []
    for name in names:
      folder = os.path.join(image_root, name)
      if not os.path.isdir(folder):
        raise FileNotFoundError(f"video {name} listed in {spec.list_file} has no folder {folder}")
      frames = list_frames(folder)
      if len(frames) < min_frames:
        self.skipped.append(name)
      else:
        self.videos.append({"name": name, "frames": frames})
    if self.skipped:
      logging.warning("%s: skipped %d videos with fewer than %d frames (e.g. %s)",
                      image_root, len(self.skipped), min_frames, self.skipped[0])
    if not self.videos:
      raise ValueError(f"{image_root}: no video has the {min_frames} frames a clip needs "
                       f"({len(self.skipped)} skipped)")

  def __len__(self) -> int:
    return len(self.videos)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self.videos[index]

  def __repr__(self) -> str:
    return f"FrameFolderSource({len(self.videos)} videos)"


class ArrayVideoSource:
  """Videos already in memory, e.g. read from a TFDS video builder."""

  def __init__(self, videos: Sequence[dict[str, Any]], min_frames: int, origin: str):
    self.videos = [v for v in videos if len(v["frames"]) >= min_frames]
    self.skipped = len(videos) - len(self.videos)
    if self.skipped:
      logging.warning("%s: skipped %d videos with fewer than %d frames", origin, self.skipped,
                      min_frames)
    if not self.videos:
      raise ValueError(f"{origin}: no video has the {min_frames} frames a clip needs")

  def __len__(self) -> int:
    return len(self.videos)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self.videos[index]


def tfds_source(name: str, split: str, data_dir: str | None, min_frames: int,
                frames_key: str = "video/frames") -> ArrayVideoSource:
  """Videos from a TFDS builder (e.g. the catalogue's `davis`, or any builder
  prepared in `data_dir`). Frames are read once into memory as uint8 arrays."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  dataset = tfds.data_source(name, split=split, data_dir=data_dir)
  videos = []
  for index in range(len(dataset)):
    example = dataset[index]
    node = example
    for key in frames_key.split("/"):
      if key not in node:
        raise KeyError(f"TFDS {name}: example has no field {frames_key!r} "
                       f"(fields: {sorted(example)})")
      node = node[key]
    videos.append({"name": f"{name}/{split}/{index}", "frames": np.asarray(node, np.uint8)})
  return ArrayVideoSource(videos, min_frames, f"TFDS {name}[{split}]")
