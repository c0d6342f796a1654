"""What `--mode=eval` writes: the trained model's predictions (DAVIS-layout
palette PNGs, keypoints, overlay strips), results.csv and per_video.csv (with
the weights each method was evaluated with), and the printed table."""

import csv
import os

import numpy as np
from PIL import Image

from smtc_jax.data import palette
from smtc_jax.evaluation.scores import DISCOVERY_TASKS, MASK_PROPAGATION_TASKS

COLUMNS = {"iou": "single-object IoU", "jf_discovery": "multi-object J&F",
           "jf_propagation": "label propagation J&F", "miou": "part mIoU"}
SHORT = {"iou": "IoU", "jf_discovery": "J&F disc.", "jf_propagation": "J&F prop.",
         "miou": "mIoU"}
LABELS = {"trained": "trained", "trained_paper": "trained**", "untrained": "untrained",
          "trivial": "trivial*"}


def _cell(row: dict, key: str, width: int = 0) -> str:
  """A score to 4 (file) or 3 (console, `width`) digits; '' / '-' where the row has none."""
  if key not in row:
    return f"{'-':>{width}s}" if width else ""
  return f"{row[key]:{width}.3f}" if width else f"{row[key]:.4f}"


def overlay_strip(frames, semantic, proposals, every: int = 4) -> np.ndarray:
  """(H', W', 3) uint8 strip: every `every`-th frame on top, its semantic masks,
  then its instance proposals, in the DAVIS palette blended over the frames."""
  colours = palette.davis_palette()
  picks = range(0, frames.shape[0], every)
  rows = []
  for labels in (None, semantic, proposals):
    row = []
    for t in picks:
      image = frames[t].astype(np.float32)
      if labels is not None:
        image = 0.45 * image + 0.55 * colours[labels[t]]
      row.append(image)
    rows.append(np.concatenate(row, axis=1))
  return np.concatenate(rows, axis=0).astype(np.uint8)


def draw_overlay(path: str, frames, semantic, proposals) -> None:
  """`overlay_strip` as a PNG file."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(overlay_strip(frames, semantic, proposals)).save(path)


def write_predictions(out_dir: str, video, predictions: dict, overlay: bool) -> None:
  """Masks as palette PNGs in the DAVIS layout (<kind>/<video>/<frame>.png, frames
  numbered from 00000), keypoints as keypoints/<video>.npz (xy, visible), and
  the overlay strip."""
  for kind in ("discovery", "propagation"):
    palette.write_palette_frames(os.path.join(out_dir, kind, video.name), predictions.get(kind, ()))
  if "keypoints" in predictions:
    os.makedirs(os.path.join(out_dir, "keypoints"), exist_ok=True)
    xy, visible = predictions["keypoints"]
    np.savez(os.path.join(out_dir, "keypoints", f"{video.name}.npz"), xy=xy, visible=visible)
  if overlay and "discovery" in predictions:
    draw_overlay(os.path.join(out_dir, "overlays", f"{video.name}.png"), video.frames,
                 predictions["semantic"], predictions["discovery"])


def column_name(key: str, e) -> str:
  if key == "jf_discovery" and e.protocol == "authors":
    return f"{COLUMNS[key]} (authors' protocol)"
  if key == "jf_discovery":
    return f"{COLUMNS[key]} ({e.unsupervised_matching} matching)"
  return COLUMNS.get(key, key.upper())


def write_tables(out_dir: str, summary: dict, tables: dict, weights: dict, e) -> None:
  """results.csv (one row per method, with the weights' source and step) and
  per_video.csv. weights: {method: predictor.Weights}, none for the trivial one."""
  os.makedirs(out_dir, exist_ok=True)
  keys = list(summary["trained"])
  with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["method", "weights", "step"] + [column_name(k, e) for k in keys])
    for method, row in summary.items():
      source = weights.get(method)
      step = "" if source is None or source.step is None else source.step
      writer.writerow([method, "" if source is None else source.source, step] +
                      [_cell(row, k) for k in keys])
  with open(os.path.join(out_dir, "per_video.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["method", "video"] + keys)
    for method, table in tables.items():
      for row in table.per_video:
        writer.writerow([method, row["video"]] + [_cell(row, k) for k in keys])


def print_summary(summary: dict, weights: dict, e, count: int, root: str) -> None:
  """The console table, with what was evaluated and how."""
  keys = list(summary["trained"])
  print(f"{e.benchmark}: {count} videos of {root} ({e.split})")
  print(f"trained weights: {e.params} of {weights['trained'].describe()}")
  if any(k in keys for k in DISCOVERY_TASKS):
    print("discovery with", "the first stage only (SMTC-dagger)" if e.first_stage_only
          else "both slot-attention stages", "and",
          "eq. 11 candidates (area and score)" if e.candidates == "eq11"
          else "score-only candidates (the authors' eval_multi.py)", "| model run at",
          "{} x {}".format(*e.discovery_resolution) if e.discovery_resolution
          else "the training size")
    print("proposal ids through the video:", "the instance slots', linked clip to clip"
          if e.tracks == "slots" else "connected components tracked frame to frame (ours)"
          + (f", merges cut at share {e.track_merge_share}" if e.track_merge_share > 0 else "")
          + (f", gaps closed at radius {e.track_gap_radius}" if e.track_gap_radius > 0 else ""),
          "| background rule:", e.background)
  if "jf_discovery" in keys and e.protocol == "authors":
    print("multi-object J&F uses the authors' protocol (NOT official): each frame's candidates, "
          "min-max normalised and thresholded at 0.3 (they may overlap), matched per frame")
  elif "jf_discovery" in keys:
    protocol = ("the official once-per-video" if e.unsupervised_matching == "video"
                else "the per-frame (authors' repo, NOT official)")
    print(f"multi-object J&F uses {protocol} assignment")
  if any(k in MASK_PROPAGATION_TASKS or k.startswith("pck@") for k in keys):
    print(f"label propagation (CRW protocol): {e.prop_features} within {e.prop_radius:.3g} cells,",
          f"top {e.prop_topk}, {e.prop_video_len} context frames, temperature {e.prop_temperature:g}")
  print(f"{'method':12s} " + " ".join(f"{SHORT.get(k, k.upper()):>10s}" for k in keys))
  for method, row in summary.items():
    print(f"{LABELS[method]:12s} " + " ".join(_cell(row, k, 10) for k in keys))
  print("* trivial: whole frame as one object (discovery); frame 0's labels or keypoints "
        "copied to every frame (propagation)")
  if "trained_paper" in summary:
    print("** the trained model's discovery with the paper's inference: eq. 11 candidates, "
          "no background rule, the instance slots' ids")
