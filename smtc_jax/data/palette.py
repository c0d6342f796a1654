"""The DAVIS / PASCAL VOC colour palette and palette-PNG reading and writing."""

import os

import numpy as np
from PIL import Image


def _voc_colour(index: int) -> tuple[int, int, int]:
  """The PASCAL VOC bit-spread colour of label `index`: its bits dealt to r, g,
  b in turn, from the high bit down."""
  label, r, g, b = index, 0, 0, 0
  for shift in range(7, -1, -1):
    r |= ((label >> 0) & 1) << shift
    g |= ((label >> 1) & 1) << shift
    b |= ((label >> 2) & 1) << shift
    label >>= 3
  return r, g, b


# Built once: every annotation written needs it (rebuilding it per frame was a
# sixth of writing the synthetic set).
_PALETTE = np.array([_voc_colour(i) for i in range(256)], np.uint8)
_PALETTE_FLAT = _PALETTE.reshape(-1).tolist()


def davis_palette() -> np.ndarray:
  """(256, 3) uint8 palette of the DAVIS annotations (the PASCAL VOC map); a copy."""
  return _PALETTE.copy()


def write_palette_png(path: str, labels: np.ndarray) -> None:
  """Write (H, W) integer labels as an indexed PNG with the DAVIS palette."""
  if labels.max(initial=0) > 255 or labels.min(initial=0) < 0:
    raise ValueError(f"{path}: labels must lie in 0..255, got {labels.min()}..{labels.max()}")
  image = Image.fromarray(labels.astype(np.uint8), mode="P")
  image.putpalette(_PALETTE_FLAT)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image.save(path)


def write_palette_frames(folder: str, labels) -> None:
  """(F, H, W) labels as folder/00000.png, 00001.png, ... (DAVIS's numbering)."""
  for t, frame in enumerate(labels):
    write_palette_png(os.path.join(folder, f"{t:05d}.png"), frame)


def read_palette_png(path: str) -> np.ndarray:
  """(H, W) uint8 label indices of a palette PNG (not its colours)."""
  try:
    with Image.open(path) as image:
      if image.mode != "P":
        raise ValueError(f"{path}: expected a palette (mode 'P') PNG, got mode {image.mode!r}")
      return np.asarray(image, dtype=np.uint8)
  except OSError as e:
    raise ValueError(f"{path}: cannot read annotation ({e})") from e
