"""Readers for the evaluation benchmarks' on-disk layouts, all returning `Video`.

  davis2017   JPEGImages/480p/<v>/*.jpg, Annotations/480p/<v>/*.png (semi-
              supervised), Annotations_unsupervised/480p/<v>/*.png,
              ImageSets/2017/<split>.txt. The synthetic set has this layout.
  davis2016   JPEGImages/480p/<v>, Annotations/480p/<v> (0/255 masks),
              ImageSets/480p/<split>.txt ("/JPEGImages/480p/<v>/00000.jpg ..." lines).
  segtrack_v2 JPEGImages/<v>/* (png/bmp/jpg), GroundTruth/<v>/* or, for several
              objects, GroundTruth/<v>/<k>/*; one mask per frame, same order.
  fbms        <split>/<v>/<v>_<n>.jpg (split: Testset | Trainingset), sparse
              ground truth <split>/<v>/GroundTruth/<v>_<n>_gt.{pgm,ppm,png};
              black (0) is background.
  jhmdb       Rename_Images/<class>/<v>/%05d.png, joint_positions/<class>/<v>/
              joint_positions.mat (pos_img: 2 x 15 x F, 1-based pixels),
              splits/<class>_test_split1.txt ("<v>.avi 1|2"; 2 = test).
  vip         Images/<v>/*.jpg, Annotations/Category_ids/<v>/*.png (sparse, part
              ids 0..19), lists/<split>_videos.txt.

A reader is `names(root, split) -> [video names]` plus `load(root, split, name)
-> Video`; errors name the missing or unreadable file.
"""

import dataclasses
import glob
import os

import numpy as np

from smtc_jax.data import sources
from smtc_jax.evaluation import davis

VOID_LABEL = davis.VOID_LABEL
JHMDB_SPLIT = 1  # the split CRW (and SMTC after it) evaluates on
JHMDB_SPLITS = ("train", "val", "test")  # eval.split with eval.benchmark='jhmdb'
VIP_NUM_CLASSES = 20  # background + 19 human parts


@dataclasses.dataclass
class Video:
  """One evaluation video. Frames without ground truth have annotated=False."""
  name: str
  frames: np.ndarray  # (F, H, W, 3) uint8
  annotated: np.ndarray  # (F,) bool
  labels: np.ndarray | None = None  # (F, H, W) ints: objects / parts / foreground; 255 void
  unsupervised_labels: np.ndarray | None = None  # (F, H, W) DAVIS-2017 unsupervised objects
  keypoints: np.ndarray | None = None  # (F, J, 2) x, y in 0-based pixels


def _subfolders(folder: str) -> list[str]:
  return sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))


def _frames(folder: str) -> tuple[list[str], np.ndarray]:
  """(frame stems, (F, H, W, 3) uint8) of a folder of images."""
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"frame folder {folder} does not exist")
  paths = sources.list_frames(folder)
  if not paths:
    raise FileNotFoundError(f"no frame in {folder}")
  frames = davis.stack_same_size(sources.load_frames(paths), paths)
  return [os.path.splitext(os.path.basename(p))[0] for p in paths], frames


def _read_mask(path: str) -> np.ndarray:
  """(H, W) integer map of a PNG/PGM/PPM/BMP; colour masks collapse to their max channel."""
  array = davis.read_label_png(path)
  return array.max(axis=-1) if array.ndim == 3 else array


def _check_size(path: str, mask: np.ndarray, frames: np.ndarray) -> np.ndarray:
  """mask, after checking it has its frames' (H, W) or, for a video's labels, (F, H, W)."""
  expected = frames.shape[1:3] if mask.ndim == 2 else frames.shape[:3]
  if mask.shape != expected:
    raise ValueError(f"mask {path} has shape {mask.shape}, its frames {expected}")
  return mask


# --- DAVIS-2017 (and the synthetic set) -------------------------------------

def davis2017_names(root: str, split: str) -> list[str]:
  return davis.read_sequences(root, split)


def davis2017_load(root: str, split: str, name: str) -> Video:
  del split
  _, frames = _frames(os.path.join(root, "JPEGImages", "480p", name))
  _, semi = davis.read_annotations(root, name, os.path.join("Annotations", "480p"))
  unsup_dir = os.path.join("Annotations_unsupervised", "480p")
  unsup = (davis.read_annotations(root, name, unsup_dir)[1]
           if os.path.isdir(os.path.join(root, unsup_dir, name)) else None)
  _check_size(os.path.join(root, "Annotations", "480p", name), semi, frames)
  if unsup is not None:
    _check_size(os.path.join(root, unsup_dir, name), unsup, frames)
  return Video(name, frames, np.ones(len(frames), bool), semi, unsup)


# --- DAVIS-2016 --------------------------------------------------------------

def davis2016_names(root: str, split: str) -> list[str]:
  lines = davis.read_list(os.path.join(root, "ImageSets", "480p", f"{split}.txt"))
  names = []
  for line in lines:  # "/JPEGImages/480p/bear/00000.jpg /Annotations/480p/bear/00000.png"
    name = line.split()[0].strip("/").split("/")[-2]
    if name not in names:
      names.append(name)
  return names


def davis2016_load(root: str, split: str, name: str) -> Video:
  del split
  _, frames = _frames(os.path.join(root, "JPEGImages", "480p", name))
  _, masks = davis.read_annotations(root, name, os.path.join("Annotations", "480p"))
  masks = masks.max(axis=-1) if masks.ndim == 4 else masks  # colour PNGs: any channel
  _check_size(os.path.join(root, "Annotations", "480p", name), masks, frames)
  return Video(name, frames, np.ones(len(frames), bool), (masks > 0).astype(np.uint8))


# --- SegTrack-v2 -------------------------------------------------------------

def segtrack_v2_names(root: str, split: str) -> list[str]:
  del split
  folder = os.path.join(root, "JPEGImages")
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"{folder} does not exist: is {root} a SegTrack-v2 folder?")
  return _subfolders(folder)


def segtrack_v2_load(root: str, split: str, name: str) -> Video:
  """Foreground = the union of the sequence's objects (single-object discovery)."""
  del split
  _, frames = _frames(os.path.join(root, "JPEGImages", name))
  gt_dir = os.path.join(root, "GroundTruth", name)
  if not os.path.isdir(gt_dir):
    raise FileNotFoundError(f"ground-truth folder {gt_dir} does not exist")
  folders = [os.path.join(gt_dir, d) for d in _subfolders(gt_dir)] or [gt_dir]
  foreground = np.zeros(frames.shape[:3], bool)
  for folder in folders:
    paths = sources.list_frames(folder)
    if len(paths) != len(frames):
      raise ValueError(f"{folder}: {len(paths)} masks for {len(frames)} frames of {name}")
    for t, path in enumerate(paths):
      foreground[t] |= _check_size(path, _read_mask(path), frames) > 0
  return Video(name, frames, np.ones(len(frames), bool), foreground.astype(np.uint8))


# --- FBMS-59 -----------------------------------------------------------------

def fbms_names(root: str, split: str) -> list[str]:
  folder = os.path.join(root, split)
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"{folder} does not exist: FBMS splits are Testset and Trainingset")
  return _subfolders(folder)


def fbms_load(root: str, split: str, name: str) -> Video:
  """Frames <v>_<n>.jpg; ground truth on the frames that have <v>_<n>_gt.*."""
  stems, frames = _frames(os.path.join(root, split, name))
  gt_dir = os.path.join(root, split, name, "GroundTruth")
  if not os.path.isdir(gt_dir):
    raise FileNotFoundError(f"ground-truth folder {gt_dir} does not exist")
  labels = np.zeros(frames.shape[:3], np.uint8)
  annotated = np.zeros(len(frames), bool)
  index = {s: t for t, s in enumerate(stems)}
  for path in sorted(glob.glob(os.path.join(gt_dir, "*_gt.*"))):
    stem = os.path.basename(path).rsplit("_gt.", 1)[0]
    if stem not in index:
      raise ValueError(f"ground truth {path} names frame {stem}, which {name} does not have")
    t = index[stem]
    labels[t] = _check_size(path, _read_mask(path), frames) > 0
    annotated[t] = True
  if not annotated.any():
    raise FileNotFoundError(f"no *_gt.* ground truth in {gt_dir}")
  return Video(name, frames, annotated, labels)


# --- JHMDB -------------------------------------------------------------------

def _jhmdb_videos(root: str, split: str) -> dict[str, str]:
  """{video: class} of split 1's test (split 'val'/'test') or train videos."""
  wanted = {"train": "1", "val": "2", "test": "2"}.get(split)
  if wanted is None:
    raise ValueError(f"JHMDB split must be train, val or test, got {split!r}")
  files = sorted(glob.glob(os.path.join(root, "splits", f"*_test_split{JHMDB_SPLIT}.txt")))
  if not files:
    raise FileNotFoundError(f"no splits/*_test_split{JHMDB_SPLIT}.txt under {root}")
  videos = {}
  for path in files:
    action = os.path.basename(path)[:-len(f"_test_split{JHMDB_SPLIT}.txt")]
    for line in davis.read_list(path):
      video, which = line.split()
      if which == wanted:
        videos[os.path.splitext(video)[0]] = action
  return videos


def jhmdb_names(root: str, split: str) -> list[str]:
  return sorted(_jhmdb_videos(root, split))


def jhmdb_load(root: str, split: str, name: str) -> Video:
  from scipy.io import loadmat  # pylint: disable=g-import-not-at-top
  action = _jhmdb_videos(root, split)[name]
  _, frames = _frames(os.path.join(root, "Rename_Images", action, name))
  mat_path = os.path.join(root, "joint_positions", action, name, "joint_positions.mat")
  if not os.path.isfile(mat_path):
    raise FileNotFoundError(f"joint positions {mat_path} do not exist")
  mat = loadmat(mat_path)
  if "pos_img" not in mat:
    raise KeyError(f"{mat_path} has no field pos_img (fields: {sorted(mat)})")
  pos = np.asarray(mat["pos_img"], np.float64)  # (2, J, F), 1-based
  if pos.ndim != 3 or pos.shape[0] != 2:
    raise ValueError(f"{mat_path}: pos_img has shape {pos.shape}, expected (2, joints, frames)")
  count = min(pos.shape[2], len(frames))  # a few videos have an extra frame
  keypoints = pos.transpose(2, 1, 0)[:count] - 1.0  # (F, J, 2)
  return Video(name, frames[:count], np.ones(count, bool), keypoints=keypoints)


# --- VIP ---------------------------------------------------------------------

def vip_names(root: str, split: str) -> list[str]:
  return davis.read_list(os.path.join(root, "lists", f"{split}_videos.txt"))


def vip_load(root: str, split: str, name: str) -> Video:
  del split
  stems, frames = _frames(os.path.join(root, "Images", name))
  gt_dir = os.path.join(root, "Annotations", "Category_ids", name)
  if not os.path.isdir(gt_dir):
    raise FileNotFoundError(f"part annotations {gt_dir} do not exist")
  labels = np.zeros(frames.shape[:3], np.uint8)
  annotated = np.zeros(len(frames), bool)
  for t, stem in enumerate(stems):
    path = os.path.join(gt_dir, f"{stem}.png")
    if os.path.isfile(path):
      labels[t] = _check_size(path, _read_mask(path), frames)
      annotated[t] = True
  if not annotated[0]:
    raise ValueError(f"{gt_dir}: the first frame of {name} has no annotation to propagate")
  bad = labels[(labels >= VIP_NUM_CLASSES) & (labels != VOID_LABEL)]
  if bad.size:
    raise ValueError(f"{gt_dir}: part id {bad.max()} is not in 0..{VIP_NUM_CLASSES - 1}")
  return Video(name, frames, annotated, labels)


READERS = {
    "davis2017": (davis2017_names, davis2017_load),
    "davis2016": (davis2016_names, davis2016_load),
    "segtrack_v2": (segtrack_v2_names, segtrack_v2_load),
    "fbms": (fbms_names, fbms_load),
    "jhmdb": (jhmdb_names, jhmdb_load),
    "vip": (vip_names, vip_load),
}


def reader(benchmark: str):
  """(names, load) of a benchmark layout."""
  if benchmark not in READERS:
    raise ValueError(f"eval.benchmark must be one of {sorted(READERS)} or 'synthetic', "
                     f"got {benchmark!r}")
  return READERS[benchmark]
