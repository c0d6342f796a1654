"""Tiny benchmark folders in the real on-disk layouts (DAVIS-2016, SegTrack-v2,
FBMS-59, JHMDB, VIP), written from synthetic videos, for the reader and
evaluation tests. Returns the videos so tests can compare with what was written."""

import os

import numpy as np
from PIL import Image
from scipy.io import savemat

from smtc_jax.data import palette, synthetic


def videos(count: int = 2, frames: int = 8, size: int = 32, seed: int = 0):
  """[(frames (F, S, S, 3) uint8, instance labels (F, S, S) uint8)] with >= 2 objects."""
  rng = np.random.default_rng(seed)
  spec = synthetic.SyntheticSpec(num_frames=frames, size=size, max_objects=3)
  out = []
  while len(out) < count:
    f, labels, objects = synthetic.generate_video(rng, spec)
    if len(objects) >= 2 and all((labels[0] == k).any() for k in objects):
      out.append((f, labels))
  return out


def _save(path: str, array: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


def write_davis2016(root: str, data) -> list[str]:
  names = [f"seq{i}" for i in range(len(data))]
  lines = []
  for name, (frames, labels) in zip(names, data):
    for t in range(len(frames)):
      _save(os.path.join(root, "JPEGImages", "480p", name, f"{t:05d}.jpg"), frames[t])
      _save(os.path.join(root, "Annotations", "480p", name, f"{t:05d}.png"),
            ((labels[t] > 0) * 255).astype(np.uint8))
      lines.append(f"/JPEGImages/480p/{name}/{t:05d}.jpg /Annotations/480p/{name}/{t:05d}.png")
  os.makedirs(os.path.join(root, "ImageSets", "480p"))
  with open(os.path.join(root, "ImageSets", "480p", "val.txt"), "w") as f:
    f.write("\n".join(lines) + "\n")
  return names


def write_segtrack_v2(root: str, data) -> list[str]:
  """Video 0 with one folder per object (GroundTruth/<v>/<k>/), the rest as one mask."""
  names = [f"seq{i}" for i in range(len(data))]
  for i, (name, (frames, labels)) in enumerate(zip(names, data)):
    for t in range(len(frames)):
      _save(os.path.join(root, "JPEGImages", name, f"{name}_{t:05d}.png"), frames[t])
      if i == 0:
        for k in range(1, labels.max() + 1):
          _save(os.path.join(root, "GroundTruth", name, str(k), f"{name}_{t:05d}.png"),
                ((labels[t] == k) * 255).astype(np.uint8))
      else:
        _save(os.path.join(root, "GroundTruth", name, f"{name}_{t:05d}.bmp"),
              ((labels[t] > 0) * 255).astype(np.uint8))
  return names


def write_fbms(root: str, data, every: int = 3) -> list[str]:
  """Testset/<v>/<v>_<n>.jpg with frames numbered from 1; ground truth every `every`
  frames as colour PPMs (objects in distinct colours, background black)."""
  names = [f"seq{i}" for i in range(len(data))]
  colours = palette.davis_palette()
  for name, (frames, labels) in zip(names, data):
    for t in range(len(frames)):
      stem = f"{name}_{t + 1:03d}"
      _save(os.path.join(root, "Testset", name, f"{stem}.jpg"), frames[t])
      if t % every == 0:
        _save(os.path.join(root, "Testset", name, "GroundTruth", f"{stem}_gt.ppm"),
              colours[labels[t]].astype(np.uint8))
  return names


def centroid_keypoints(labels, objects: int = 2) -> np.ndarray:
  """(F, 3 x objects, 2) x, y: per object (the first `objects`) its mask centroid
  plus two points 3 px beside it, so the joints' box is never degenerate."""
  out = []
  for frame in labels:
    points = []
    for k in range(1, objects + 1):
      ys, xs = np.nonzero(frame == k)
      cx, cy = (xs.mean(), ys.mean()) if len(xs) else (np.nan, np.nan)
      points += [(cx, cy), (cx + 3, cy), (cx, cy + 3)]
    out.append(points)
  keypoints = np.asarray(out, np.float64)
  # An object hidden in a frame keeps its last position.
  for t in range(1, len(keypoints)):
    keypoints[t] = np.where(np.isnan(keypoints[t]), keypoints[t - 1], keypoints[t])
  return keypoints


def write_jhmdb(root: str, data, action: str = "wave",
                keypoints=None) -> tuple[list[str], list[np.ndarray]]:
  """Video i is a test video (split 1, id 2) except the last, a training one.
  Joints: `keypoints[i]` (F, J, 2) if given, else centroid_keypoints."""
  names = [f"{action}_clip{i}" for i in range(len(data))]
  written = []
  lines = []
  for i, (name, (frames, labels)) in enumerate(zip(names, data)):
    for t in range(len(frames)):
      _save(os.path.join(root, "Rename_Images", action, name, f"{t + 1:05d}.png"), frames[t])
    points = centroid_keypoints(labels) if keypoints is None else keypoints[i]
    written.append(points)
    folder = os.path.join(root, "joint_positions", action, name)
    os.makedirs(folder)
    savemat(os.path.join(folder, "joint_positions.mat"),
            {"pos_img": points.transpose(2, 1, 0) + 1.0})  # (2, J, F), 1-based
    lines.append(f"{name}.avi {1 if i == len(data) - 1 else 2}")
  os.makedirs(os.path.join(root, "splits"), exist_ok=True)
  with open(os.path.join(root, "splits", f"{action}_test_split1.txt"), "w") as f:
    f.write("\n".join(lines) + "\n")
  return names, written


def write_vip(root: str, data, every: int = 2) -> list[str]:
  """Images/<v>/<n>.jpg; part ids (the instance labels) every `every` frames."""
  names = [f"videos{i}" for i in range(len(data))]
  for name, (frames, labels) in zip(names, data):
    for t in range(len(frames)):
      _save(os.path.join(root, "Images", name, f"{t:06d}.jpg"), frames[t])
      if t % every == 0:
        _save(os.path.join(root, "Annotations", "Category_ids", name, f"{t:06d}.png"), labels[t])
  os.makedirs(os.path.join(root, "lists"))
  with open(os.path.join(root, "lists", "val_videos.txt"), "w") as f:
    f.write("\n".join(names) + "\n")
  return names


def write_davis2017(root: str, data) -> list[str]:
  """JPEGImages/480p/<v>/, Annotations/480p/<v>/ and Annotations_unsupervised/480p/<v>/
  (the instance labels as palette PNGs, both tasks' the same), ImageSets/2017/val.txt."""
  names = [f"seq{i}" for i in range(len(data))]
  for name, (frames, labels) in zip(names, data):
    for t in range(len(frames)):
      _save(os.path.join(root, "JPEGImages", "480p", name, f"{t:05d}.jpg"), frames[t])
      for sub in ("Annotations", "Annotations_unsupervised"):
        palette.write_palette_png(os.path.join(root, sub, "480p", name, f"{t:05d}.png"), labels[t])
  os.makedirs(os.path.join(root, "ImageSets", "2017"))
  with open(os.path.join(root, "ImageSets", "2017", "val.txt"), "w") as f:
    f.write("".join(f"{name}\n" for name in names))
  return names


def write_youtube_vos(root: str, data) -> list[str]:
  """YouTube-VOS's training layout: train/JPEGImages/<v>/<n>.jpg (frames only)."""
  names = [f"video{i}" for i in range(len(data))]
  for name, (frames, _) in zip(names, data):
    for t in range(len(frames)):
      _save(os.path.join(root, "train", "JPEGImages", name, f"{t:05d}.jpg"), frames[t])
  return names
