"""A procedural multi-object video set written in the DAVIS layout.

Categories are shape x texture families (3 x 3 = 9, each with its own colours),
so that several instances can share one semantic category, which is SMTC's
point. Objects move smoothly, bounce off the borders, occlude each other by a
fixed depth order, over a textured background that drifts. Optionally
(`lighting`, `noise`) the scene is lit by a light that drifts in brightness,
colour and direction, and each frame gets sensor noise. Everything is a
function of the seed.

Layout under `root`:
  JPEGImages/480p/<video>/00000.jpg      frames ("480p" is the layout's name;
                                         frames are `size` x `size`)
  Annotations/480p/<video>/00000.png     palette PNGs, one index per instance
  Annotations_unsupervised/480p/...      the same instance masks (DAVIS-2017
                                         ships separate unsupervised annotations)
  Categories/<video>.json                {"1": {"category": 4, "name": ...}, ...}
  ImageSets/2017/train.txt, val.txt      video names
"""

import dataclasses
import json
import os
import shutil

import numpy as np
from PIL import Image

from smtc_jax.data import motion
from smtc_jax.data import palette
from smtc_jax.data import photo_videos

SHAPES = ("disc", "square", "triangle")
TEXTURES = ("stripes", "dots", "checker")
CATEGORIES = tuple(f"{s}-{t}" for s in SHAPES for t in TEXTURES)
IMAGE_DIR = os.path.join("JPEGImages", "480p")
ANNOTATION_DIR = os.path.join("Annotations", "480p")
UNSUPERVISED_DIR = os.path.join("Annotations_unsupervised", "480p")
CATEGORY_DIR = "Categories"
IMAGESET_DIR = os.path.join("ImageSets", "2017")
COMPLETE_MARKER = "SYNTHETIC_COMPLETE.json"
KINDS = ("shapes",) + photo_videos.KINDS
PHOTO_JPEG_QUALITY = 80  # the photo kinds' frames carry JPEG's blocking, as footage does
SPEED = (0.6, 2.2)  # an object's velocity, pixels a frame along each axis
LIGHT_STREAM = 1  # the light's random stream: (seed, LIGHT_STREAM); scenes use (seed,)


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  """What to generate; the marker file records it so a changed spec regenerates."""
  num_train: int = 48
  num_val: int = 8
  num_frames: int = 24
  size: int = 128
  max_objects: int = 4
  seed: int = 0
  # Real footage is lit: the light's strength, direction and colour drift through
  # a video, so an object's colours change as it moves. 0 = flat, constant light.
  lighting: float = 0.0
  noise: float = 0.0  # sensor noise, s.d. in grey levels (0-255), fresh each frame
  # shapes: the procedural shapes here; photo_blobs | photo_silhouettes: objects and
  # backgrounds cut from photographs (photo_videos.py; `lighting` does not apply,
  # those videos flicker instead).
  kind: str = "shapes"


def _category_colours(category: int):
  """Two fixed colours per category: same category, same look."""
  rng = np.random.default_rng(1000 + category)
  return rng.uniform(40, 255, 3), rng.uniform(0, 200, 3)


def _texture(name: str, u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
  """Binary pattern in the object's own coordinates (u, v), so it moves with it."""
  if name == "stripes":
    return (np.floor((u + v) / period) % 2).astype(bool)
  if name == "dots":
    return ((np.mod(u, period) - period / 2) ** 2 + (np.mod(v, period) - period / 2) ** 2
            < (period / 3) ** 2)
  return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(bool)  # checker


def _shape_mask(name: str, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
  if name == "disc":
    return u**2 + v**2 <= radius**2
  if name == "square":
    return (np.abs(u) <= radius * 0.85) & (np.abs(v) <= radius * 0.85)
  # Upward triangle inscribed in the circle of the radius.
  return (v <= radius * 0.5) & (v >= -radius + np.sqrt(3.0) * np.abs(u))


def _background(rng, size: int, num_frames: int) -> np.ndarray:
  """(T, H, W, 3) float: drifting sum of sinusoids in muted colours."""
  y, x = np.mgrid[0:size, 0:size].astype(np.float32)
  drift = rng.uniform(-1.5, 1.5, 2)
  waves = [(rng.uniform(0.02, 0.12, 2) * rng.choice([-1, 1], 2), rng.uniform(0, 2 * np.pi))
           for _ in range(3)]
  colours = rng.uniform(60, 200, (2, 3))
  frames = []
  for t in range(num_frames):
    xs, ys = x + drift[0] * t, y + drift[1] * t
    value = sum(np.sin(f[0] * xs + f[1] * ys + phase) for f, phase in waves) / 3.0
    weight = (value[..., None] + 1.0) / 2.0
    frames.append(colours[0] * weight + colours[1] * (1.0 - weight))
  return np.stack(frames)


def _illumination(rng, size: int, num_frames: int, strength: float) -> np.ndarray:
  """(T, S, S, 3) gain: a light whose brightness and colour drift over the video and
  which falls off across the frame along a direction that turns slowly."""
  y, x = (np.mgrid[0:size, 0:size].astype(np.float32) / size) - 0.5
  brightness = motion.smooth_curves(rng, num_frames, strength)  # (T, 1)
  tint = motion.smooth_curves(rng, num_frames, strength / 3, 3)  # (T, 3)
  angle = rng.uniform(0, 2 * np.pi) + motion.smooth_curves(rng, num_frames, np.pi / 2)[:, 0]
  falloff = strength * (np.cos(angle)[:, None, None] * x + np.sin(angle)[:, None, None] * y)
  gain = 1.0 + brightness[:, :, None] + falloff  # (T, S, S)
  return gain[..., None] * (1.0 + tint[:, None, None, :])


def generate_video(rng, spec: SyntheticSpec, light_rng=None):
  """One video: frames (T, S, S, 3) uint8, instance labels (T, S, S) uint8, and
  {instance id: category index}. The light and the noise draw from `light_rng`
  (default: `rng`), so a lit set can hold the same scenes as a flat one."""
  light_rng = rng if light_rng is None else light_rng
  size, t = spec.size, spec.num_frames
  num_objects = int(rng.integers(1, spec.max_objects + 1))
  categories = list(rng.integers(0, len(CATEGORIES), num_objects))
  if num_objects >= 2 and rng.uniform() < 0.5:  # several instances of one category
    repeat = int(rng.integers(2, num_objects + 1))
    categories[:repeat] = [categories[0]] * repeat
  frames = _background(rng, size, t)
  labels = np.zeros((t, size, size), np.uint8)
  y, x = np.mgrid[0:size, 0:size].astype(np.float32)
  depth_order = rng.permutation(num_objects)  # painted far to near: occlusion
  for instance in depth_order:
    category = int(categories[instance])
    shape, texture = CATEGORIES[category].split("-")
    radius = rng.uniform(0.12, 0.2) * size
    path = motion.bouncing_path(rng, size, radius, t, SPEED)
    angle0, spin = rng.uniform(0, 2 * np.pi), rng.uniform(-0.05, 0.05)
    fg, bg = _category_colours(category)
    for f in range(t):
      dx, dy = x - path[f, 0], y - path[f, 1]
      a = angle0 + spin * f
      u = np.cos(a) * dx + np.sin(a) * dy
      v = -np.sin(a) * dx + np.cos(a) * dy
      inside = _shape_mask(shape, u, v, radius)
      pattern = _texture(texture, u, v, period=radius / 2.5)
      colour = np.where(pattern[..., None], fg, bg)
      frames[f][inside] = colour[inside]
      labels[f][inside] = instance + 1
  if spec.lighting > 0:
    frames = frames * _illumination(light_rng, size, t, spec.lighting)
  if spec.noise > 0:
    frames = frames + light_rng.normal(0.0, spec.noise, frames.shape)
  objects = {int(i + 1): int(categories[i]) for i in range(num_objects)}
  return np.clip(frames, 0, 255).astype(np.uint8), labels, objects


def write_davis_frames(root: str, name: str, frames, labels, annotation_dirs=(ANNOTATION_DIR,),
                       quality: int = 92) -> None:
  """Frames (F, H, W, 3) uint8 as JPEGs under root/IMAGE_DIR/name and labels (F, H, W)
  as palette PNGs under root/<each of annotation_dirs>/name, named 00000.jpg/png ..."""
  for f in range(frames.shape[0]):
    image_path = os.path.join(root, IMAGE_DIR, name, f"{f:05d}.jpg")
    os.makedirs(os.path.dirname(image_path), exist_ok=True)
    Image.fromarray(frames[f]).save(image_path, quality=quality)
  for folder in annotation_dirs:
    palette.write_palette_frames(os.path.join(root, folder, name), labels)


def _write_video(root: str, name: str, frames, labels, objects, kind: str = "shapes") -> None:
  quality = 92 if kind == "shapes" else PHOTO_JPEG_QUALITY
  write_davis_frames(root, name, frames, labels, (ANNOTATION_DIR, UNSUPERVISED_DIR), quality)
  names = CATEGORIES if kind == "shapes" else ("object",)
  meta = {str(k): {"category": v, "name": names[v]} for k, v in objects.items()}
  path = os.path.join(root, CATEGORY_DIR, f"{name}.json")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(meta, f, indent=1)


def ensure_synthetic_davis(root: str, spec: SyntheticSpec = SyntheticSpec()) -> str:
  """Generate the set under `root` unless a complete one with the same spec is
  there. Written to a temporary folder and renamed, so a killed run never
  leaves a half-written set behind. Returns `root`."""
  if spec.kind not in KINDS:
    raise ValueError(f"data.synthetic.kind={spec.kind!r} is not one of {KINDS}")
  marker = os.path.join(root, COMPLETE_MARKER)
  wanted = dataclasses.asdict(spec)
  if os.path.exists(marker):
    with open(marker) as f:
      if json.load(f) == wanted:
        return root
    raise ValueError(f"{root} holds a synthetic set with another spec ({marker}); "
                     f"remove it or choose another data dir")
  if os.path.exists(root) and os.listdir(root):
    raise ValueError(f"{root} exists and is not a synthetic set (no {COMPLETE_MARKER}); "
                     f"refusing to write into it")
  tmp = root.rstrip("/") + f".tmp{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  rng = np.random.default_rng(spec.seed)
  light_rng = np.random.default_rng((spec.seed, LIGHT_STREAM))
  splits = {"train": spec.num_train, "val": spec.num_val}
  for split, count in splits.items():
    names = [f"{split}{i:03d}" for i in range(count)]
    for name in names:
      if spec.kind == "shapes":
        video = generate_video(rng, spec, light_rng)
      else:
        video = photo_videos.generate_video(rng, spec.kind, spec.size, spec.num_frames, spec.noise)
      _write_video(tmp, name, *video, kind=spec.kind)
    os.makedirs(os.path.join(tmp, IMAGESET_DIR), exist_ok=True)
    with open(os.path.join(tmp, IMAGESET_DIR, f"{split}.txt"), "w") as f:
      f.write("\n".join(names) + "\n")
  with open(os.path.join(tmp, COMPLETE_MARKER), "w") as f:
    json.dump(wanted, f)
  if os.path.exists(root):
    os.rmdir(root)  # empty, checked above
  os.makedirs(os.path.dirname(os.path.abspath(root)), exist_ok=True)
  os.rename(tmp, root)
  return root
