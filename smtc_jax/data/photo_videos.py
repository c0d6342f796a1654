"""Video sets made from real photographs, unlike the procedural shapes set.

Two families, each drawn from photographs that ship inside scikit-image (no
download): a background cropped from one photograph that the camera pans over
and zooms into, and 2-3 objects filled with patches of other photographs, moving
on smooth paths (drifting, turning, growing and shrinking) and occluding each
other by a fixed depth order. Every frame gets a brightness flicker and sensor
noise, and is stored as JPEG; the masks are exact (the objects are pasted, not
blended).

  photo_blobs        backgrounds: astronaut, coffee, chelsea; objects: smooth
                     blobs filled with rocket, motorcycle, immunohistochemistry,
                     retina and tinted grass / gravel / brick.
  photo_silhouettes  backgrounds: rocket, motorcycle, immunohistochemistry,
                     tinted grass; objects: horse silhouettes and ragged ellipses
                     filled with astronaut, coffee, chelsea and tinted brick /
                     camera / moon.

Within a family no photograph is both background and object; the two families
share no background (one family's backgrounds fill the other's objects). Written in the DAVIS layout of `synthetic.py`:

  python -m smtc_jax.data.photo_videos --kind photo_blobs --output DIR

or generated into the workdir by `--config.data.synthetic.kind=photo_blobs`.
"""

import dataclasses
import functools

import numpy as np
from scipy import ndimage

from smtc_jax.data import motion

KINDS = ("photo_blobs", "photo_silhouettes")
MOTORCYCLE = "motorcycle"  # skimage.data.stereo_motorcycle()'s left image
SPEED = (0.4, 1.6)  # an object's drift, pixels a frame along each axis
PAN = 0.06  # the camera's reach from the photograph's centre, a share of its sides


@dataclasses.dataclass(frozen=True)
class Family:
  backgrounds: tuple  # photograph names
  fills: tuple  # photograph names; grey ones are tinted per object
  shapes: tuple  # of "blob" | "horse" | "ellipse"
  zoom: tuple  # crop side as a share of the photograph's shorter side (min, max)


FAMILIES = {
    "photo_blobs": Family(("astronaut", "coffee", "chelsea"),
                          ("rocket", MOTORCYCLE, "immunohistochemistry", "retina", "grass",
                           "gravel", "brick"),
                          ("blob",), (0.45, 0.8)),
    "photo_silhouettes": Family(("rocket", MOTORCYCLE, "immunohistochemistry", "grass"),
                                ("astronaut", "coffee", "chelsea", "brick", "camera", "moon"),
                                ("horse", "ellipse"), (0.35, 0.7)),
}


def _require_skimage():
  try:
    import skimage.data  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("the photo video sets read scikit-image's photographs: "
                      "pip install -e '.[photo]'") from e
  return skimage.data


@functools.lru_cache(maxsize=None)
def photograph(name: str) -> np.ndarray:
  """(H, W, 3) or (H, W) float32 in 0-255, from scikit-image's data folder."""
  data = _require_skimage()
  image = data.stereo_motorcycle()[0] if name == MOTORCYCLE else getattr(data, name)()
  image = np.asarray(image, np.float32)
  if name == "retina":  # the fundus photograph's black surround is not texture
    h, w = image.shape[:2]
    image = image[h // 4: 3 * h // 4, w // 4: 3 * w // 4]
  return image


@functools.lru_cache(maxsize=None)
def _horse_mask() -> np.ndarray:
  """(H, W) bool, True on the horse, cropped to its bounding box."""
  horse = ~np.asarray(_require_skimage().horse(), bool)  # the horse is drawn black
  rows, cols = np.nonzero(horse)
  return horse[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1]


def _path(rng, size: int, margin: float, num_frames: int) -> np.ndarray:
  """(T, 2) x, y centres: a drift of SPEED bouncing at `margin` from the borders,
  plus a slow sway."""
  return (motion.bouncing_path(rng, size, margin, num_frames, SPEED)
          + _smooth_curve(rng, num_frames, 0.04 * size, 2))


def _smooth_curve(rng, num_frames: int, amplitude: float, curves: int = 1) -> np.ndarray:
  """motion.smooth_curves of one to four times the video's length: slower than the
  shapes set's."""
  return motion.smooth_curves(rng, num_frames, amplitude, curves, periods=(1.0, 4.0))


def _sample(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
  """Bilinear samples of `image` at float (rows, cols), edges reflected: rows.shape
  (+ (3,)), always 3 channels."""
  channels = [image] if image.ndim == 2 else [image[..., c] for c in range(image.shape[-1])]
  out = np.stack([ndimage.map_coordinates(c, [rows, cols], order=1, mode="mirror")
                  for c in channels], -1)
  return np.repeat(out, 3, -1) if out.shape[-1] == 1 else out


def _background(rng, family: Family, size: int, num_frames: int):
  """(T, S, S, 3): one photograph under a camera that pans and zooms smoothly."""
  image = photograph(str(rng.choice(family.backgrounds)))
  h, w = image.shape[:2]
  side = min(h, w) * (rng.uniform(*family.zoom) + _smooth_curve(rng, num_frames, 0.08)[:, 0])
  centre = np.stack([np.full(num_frames, h / 2.0), np.full(num_frames, w / 2.0)], 1)
  centre = centre + _smooth_curve(rng, num_frames, PAN, 2) * np.array([h, w])
  grid = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size - 0.5  # (2, S, S)
  frames = [_sample(image, c[0] + s * grid[0], c[1] + s * grid[1])
            for c, s in zip(centre, side)]
  return np.stack(frames)


def _shape(rng, kind: str):
  """A function (u, v) -> bool in the object's own frame, where the object spans
  about [-1, 1]."""
  if kind == "horse":
    mask = _horse_mask()
    scale = max(mask.shape) / 2.0
    flip = rng.choice([-1.0, 1.0])
    def inside(u, v):
      rows, cols = v * scale + mask.shape[0] / 2, flip * u * scale + mask.shape[1] / 2
      return ndimage.map_coordinates(mask.astype(np.float32), [rows, cols], order=1,
                                     mode="constant", cval=0.0) > 0.5
    return inside
  harmonics = np.arange(2, 6)
  amplitudes = rng.uniform(0, 0.18 if kind == "blob" else 0.06, harmonics.size) / harmonics ** 0.5
  phases = rng.uniform(0, 2 * np.pi, harmonics.size)
  aspect = 1.0 if kind == "blob" else rng.uniform(0.5, 0.8)
  def inside(u, v):
    theta = np.arctan2(v, u)
    radius = 0.8 * (1 + (amplitudes * np.cos(harmonics * theta[..., None] + phases)).sum(-1))
    return u**2 + (v / aspect) ** 2 <= radius**2
  return inside


def _fill(rng, family: Family):
  """A function (u, v) -> (..., 3) colours: a patch of a photograph that moves with
  the object; grey photographs get a random tint."""
  image = photograph(str(rng.choice(family.fills)))
  h, w = image.shape[:2]
  scale = rng.uniform(0.15, 0.35) * min(h, w)  # pixels of the photograph per object unit
  origin = rng.uniform([scale, scale], [h - scale, w - scale])
  tint = rng.uniform(0.4, 1.2, 3) if image.ndim == 2 else np.ones(3)
  def colours(u, v):
    return _sample(image, origin[0] + v * scale, origin[1] + u * scale) * tint
  return colours


def generate_video(rng, kind: str, size: int, num_frames: int, noise: float = 3.0):
  """One video of `kind`: frames (T, S, S, 3) uint8, instance labels (T, S, S) uint8,
  and {instance id: 0} (the families have no categories)."""
  family = FAMILIES[kind]
  frames = _background(rng, family, size, num_frames)
  labels = np.zeros((num_frames, size, size), np.uint8)
  y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
  num_objects = int(rng.integers(2, 4))
  for instance in rng.permutation(num_objects):  # painted far to near: occlusion
    inside = _shape(rng, str(rng.choice(family.shapes)))
    colours = _fill(rng, family)
    radius = rng.uniform(0.13, 0.22) * size * (1 + _smooth_curve(rng, num_frames, 0.15)[:, 0])
    path = _path(rng, size, 0.6 * radius.max(), num_frames)  # (T, 2) x, y
    angle = rng.uniform(0, 2 * np.pi) + _smooth_curve(rng, num_frames, 0.5)[:, 0]
    for f in range(num_frames):
      dx, dy = (x - path[f, 0]) / radius[f], (y - path[f, 1]) / radius[f]
      u = np.cos(angle[f]) * dx + np.sin(angle[f]) * dy
      v = -np.sin(angle[f]) * dx + np.cos(angle[f]) * dy
      near = (np.abs(u) <= 1.5) & (np.abs(v) <= 1.5)
      hit = np.zeros_like(near)
      hit[near] = inside(u[near], v[near])
      frames[f][hit] = colours(u[hit], v[hit])
      labels[f][hit] = instance + 1
  flicker = 1.0 + _smooth_curve(rng, num_frames, 0.1)[:, 0] + rng.normal(0, 0.02, num_frames)
  frames = frames * flicker[:, None, None, None] + rng.normal(0, noise, frames.shape)
  present = [i for i in range(1, num_objects + 1) if (labels == i).any()]
  return np.clip(frames, 0, 255).astype(np.uint8), labels, {i: 0 for i in present}


def main(argv=None):
  import argparse  # pylint: disable=g-import-not-at-top
  from smtc_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--kind", required=True, choices=KINDS)
  parser.add_argument("--output", required=True, help="the set's folder (must not exist)")
  parser.add_argument("--num_train", type=int, default=48)
  parser.add_argument("--num_val", type=int, default=32)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--noise", type=float, default=3.0, help="sensor noise, grey levels")
  args = parser.parse_args(argv)
  spec = synthetic.SyntheticSpec(kind=args.kind, num_train=args.num_train,
                                 num_val=args.num_val, seed=args.seed, noise=args.noise)
  try:
    synthetic.ensure_synthetic_davis(args.output, spec)
  except ValueError as e:
    parser.exit(2, f"error: {e}\n")
  print(f"wrote {args.kind}: {args.num_train} train + {args.num_val} val videos to {args.output}")


if __name__ == "__main__":
  main()
