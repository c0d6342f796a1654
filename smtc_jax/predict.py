"""`--mode=predict`: the objects of one's own video, discovered by the workdir's
trained model (its newest checkpoint or export, as --mode=eval reads it).

The input, a video file or a folder of frames (smtc_jax/data/video_io.py), is
streamed predict.chunk_frames frames at a time: each chunk is discovered as one
video by the evaluation's inference (Predictor.proposals: the model at
eval.discovery_resolution or data.resolution, the proposals and their ids by
the eval.* rules, at the input's size), then written and dropped, so memory
does not grow with the video's length. Ids are kept from chunk to chunk: the
instances of a chunk's first frame are matched to those of the previous chunk's
last frame by mask IoU (Hungarian, largest total IoU; a pair below
eval.track_min_iou is no match); a matched instance keeps its id through the
new chunk, any other gets an id not given before (once 255 are used, the
lowest not on screen at the cut: PNG labels are 8-bit). An object missed in a
chunk's first frame, or one that jumps at the cut, gets a new id there.

Written to predict.output (a new or empty folder):
  masks/<frame>.png   the instances as DAVIS-palette PNGs (0: background)
  overlay.mp4         the frames with each instance coloured and outlined
  instances.csv       frame, name, id, area: one row per instance per frame
and a summary on the console.
"""

import csv
import dataclasses
import os
import time

from absl import logging
import numpy as np
from scipy import optimize

from smtc_jax import console
from smtc_jax.data import palette, video_io
from smtc_jax.evaluation import discovery

MASKS_DIR = "masks"
OVERLAY_FILE = "overlay.mp4"
TABLE_FILE = "instances.csv"
OUTPUTS = (MASKS_DIR, OVERLAY_FILE, TABLE_FILE)
MAX_ID = discovery.MAX_PROPOSALS  # ids are 8-bit PNG labels, 0 the background
SHOWN = 8  # instances listed in the summary (the longest-lived)


def output_problem(folder: str) -> str | None:
  """Why `folder` cannot take predictions, or None: it must be a new or empty
  local folder (predictions are never overwritten)."""
  if not folder:
    return "no output folder given"
  if "://" in folder:
    return f"{folder} must be a local folder"
  if os.path.exists(folder) and not os.path.isdir(folder):
    return f"{folder} is not a folder"
  if os.path.isdir(folder) and os.listdir(folder):
    return (f"{folder} already holds files: give a new or empty folder (predictions are not "
            f"overwritten)")
  return None


def link_chunk(labels: np.ndarray, previous: np.ndarray | None, next_id: int,
               min_iou: float) -> tuple[np.ndarray, int]:
  """A chunk's labels in the video's ids. labels: (n, H, W) uint8, the chunk's
  own ids; previous: (H, W) the video's ids in the frame before the chunk (None
  for the first chunk); next_id: the lowest id not given yet. Returns ((n, H, W)
  uint8, the new next_id). The first chunk keeps its own ids."""
  own = [int(i) for i in np.unique(labels) if i]
  lookup = np.zeros(256, np.uint8)
  if previous is None:
    lookup[own] = own
    return lookup[labels], max([next_id, *[i + 1 for i in own]])
  first = [i for i in own if (labels[0] == i).any()]
  before = [int(i) for i in np.unique(previous) if i]
  iou = discovery.mask_ious([labels[0] == i for i in first], [previous == j for j in before])
  if iou.size:
    for a, b in zip(*optimize.linear_sum_assignment(iou, maximize=True)):
      if iou[a, b] >= min_iou:
        lookup[first[a]] = before[b]
  taken = set(before) | {int(lookup[i]) for i in own if lookup[i]}
  for i in own:
    if lookup[i]:
      continue
    if next_id <= MAX_ID:
      lookup[i], next_id = next_id, next_id + 1
    else:  # every id given once: the lowest not on screen at the cut nor in this chunk
      free = next((k for k in range(1, MAX_ID + 1) if k not in taken), 0)
      if not free:
        logging.warning("more than %d instances at a chunk's cut: one left as background", MAX_ID)
      lookup[i] = free
    taken.add(int(lookup[i]))
  return lookup[labels], next_id


def outline(labels: np.ndarray) -> np.ndarray:
  """(H, W) bool: instance pixels with a 4-neighbour of another label."""
  padded = np.pad(labels, 1, mode="edge")
  centre = padded[1:-1, 1:-1]
  edge = ((centre != padded[:-2, 1:-1]) | (centre != padded[2:, 1:-1]) |
          (centre != padded[1:-1, :-2]) | (centre != padded[1:-1, 2:]))
  return edge & (labels > 0)


def overlay(frame: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
  """(H, W, 3) uint8: `frame` with each instance of (H, W) `labels` blended in
  its DAVIS palette colour and outlined in it; the background as it was."""
  colours = palette.davis_palette().astype(np.float32)
  out = frame.astype(np.float32)
  inside = labels > 0
  out[inside] = (1 - alpha) * out[inside] + alpha * colours[labels[inside]]
  edge = outline(labels)
  out[edge] = colours[labels[edge]]
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def areas(labels: np.ndarray) -> dict[int, int]:
  """{id: pixels} of the instances in (H, W) labels."""
  counts = np.bincount(labels.ravel(), minlength=1)
  return {i: int(c) for i, c in enumerate(counts) if i and c}


@dataclasses.dataclass
class Track:
  """One id through the video: first and last frame, frames seen, pixels summed."""
  first: int
  last: int
  frames: int = 0
  pixels: int = 0

  def add(self, frame: int, area: int) -> None:
    self.last, self.frames, self.pixels = frame, self.frames + 1, self.pixels + area


def _eta(began: float, done: int, total: int | None) -> str:
  if not total or done >= total:
    return ""
  return f" | ETA {(time.time() - began) / done * (total - done) / 60:.1f} min"


def segment(source: video_io.Source, propose, output: str, chunk_frames: int,
            min_iou: float) -> tuple[dict[int, Track], int]:
  """Stream `source` through `propose` ((n, H, W, 3) uint8 frames -> (n, H, W)
  uint8 ids of that chunk alone) chunk_frames at a time, link the ids across
  chunks (link_chunk) and write the PNGs, overlay video and table into `output`.
  Returns ({id: Track}, frames read)."""
  os.makedirs(os.path.join(output, MASKS_DIR))
  tracks, previous, next_id, done, began = {}, None, 1, 0, time.time()
  with video_io.VideoWriter(os.path.join(output, OVERLAY_FILE), source.fps, source.size) as video, \
      open(os.path.join(output, TABLE_FILE), "w", newline="") as table:
    rows = csv.writer(table)
    rows.writerow(["frame", "name", "id", "area"])
    for frames in source.chunks(chunk_frames):
      labels, next_id = link_chunk(propose(frames), previous, next_id, min_iou)
      for t, (frame, ids) in enumerate(zip(frames, labels)):
        index, name = done + t, source.name(done + t)
        palette.write_palette_png(os.path.join(output, MASKS_DIR, f"{name}.png"), ids)
        video.write(overlay(frame, ids))
        for i, area in areas(ids).items():
          rows.writerow([index, name, i, area])
          tracks.setdefault(i, Track(index, index)).add(index, area)
      previous, done = labels[-1], done + len(frames)
      total = max(source.count or 0, done) if source.count else None
      console.say(f"predicted frames {done - len(frames)}-{done - 1} of "
                  f"{total or '?'}{_eta(began, done, total)}")
  return tracks, done


def summary(tracks: dict[int, Track], frames: int, source: video_io.Source, output: str,
            seconds: float) -> str:
  """The lines printed at the end: what was read, found and written."""
  h, w = source.size
  lines = [f"{frames} frames of {source.path} ({w}x{h}, {source.fps:.4g} fps) in {seconds:.1f} s: "
           f"{len(tracks)} instances", f"written to {output}: {MASKS_DIR}/ (palette PNGs), "
           f"{OVERLAY_FILE}, {TABLE_FILE}"]
  longest = sorted(tracks.items(), key=lambda kv: (-kv[1].frames, kv[0]))[:SHOWN]
  for i, t in longest:
    lines.append(f"  id {i:3d}: frames {t.first}-{t.last} (in {t.frames}), mean area "
                 f"{t.pixels / t.frames:.0f} px ({t.pixels / t.frames / (h * w):.1%})")
  if len(tracks) > SHOWN:
    lines.append(f"  ... and {len(tracks) - SHOWN} more (all in {TABLE_FILE})")
  return "\n".join(lines)


def run(config, workdir: str) -> dict[int, Track]:
  """--mode=predict: the workdir's trained weights on predict.input, written to
  predict.output. Weights and input are read before anything is written."""
  from smtc_jax.evaluation import predictor as predictor_lib  # pylint: disable=g-import-not-at-top
  p = config.predict
  variables, weights = predictor_lib.trained_variables(config, workdir)
  source = video_io.open_source(p.input, p.fps)
  problem = output_problem(p.output)
  if problem:
    raise video_io.InputError(problem)
  model = predictor_lib.Predictor(config)
  console.say(f"segmenting {source.path} ({source.count or '?'} frames, {p.chunk_frames} at a "
              f"time) with {config.eval.params} of {weights.describe()}; model run at "
              f"{model.size[0]} x {model.size[1]}")
  began = time.time()
  tracks, frames = segment(source, lambda frames: model.proposals(variables, frames)[0],
                           p.output, p.chunk_frames, config.eval.track_min_iou)
  print(summary(tracks, frames, source, p.output, time.time() - began), flush=True)
  return tracks
