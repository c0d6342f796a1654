"""The grain training pipeline: clip sampling, augmentation, batching, sharding.

Element k of the infinite dataset is a function of (seed, k) alone: a clip of
each video once per epoch, reshuffled every epoch (data.clip_sampling='epoch'),
or of a video drawn uniformly with replacement, centred as the authors'
src/data.py centres it ('reference'); global batch s holds elements [s * B, (s + 1) * B), and process
p loads its contiguous share [s * B + p * B / n, s * B + (p + 1) * B / n). So the
global batch is the same, element for element, on any number of processes and
workers, and deterministic given (seed, step).
Each clip yields two views, 'student' and 'teacher' (T, H, W, 3) uint8: the
geometric augmentation (random resized crop or the whole frame, flip) is shared
by both views so their tokens correspond, the photometric one (colour jitter,
grayscale, blur) is drawn per view; every augmentation is identical across the
frames of a clip.
"""

import dataclasses
import os
import sys

import grain
import ml_collections
import numpy as np
from PIL import Image
from scipy import ndimage

from smtc_jax.data import sources
from smtc_jax.data import synthetic


CLIP_SAMPLINGS = ("epoch", "reference")  # data.clip_sampling
SOURCES = ("frames", "tfds", "synthetic")  # data.source (make_source)


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """Clip sampling and augmentation parameters (config.data and config.data.augment)."""
  num_frames: int
  gap: int
  resolution: tuple[int, int]
  random_crop: bool  # False: the whole frame is resized
  crop_scale: tuple[float, float]
  crop_ratio: tuple[float, float]
  hflip_prob: float
  jitter_prob: float
  jitter: tuple[float, float, float, float]  # brightness, contrast, saturation, hue
  hue_space: str  # yiq | hsv
  gray_prob: float
  gray_before_jitter: bool
  blur_prob: float
  blur_sigma: tuple[float, float]
  blur_kernel_frac: float
  clip_sampling: str = "epoch"  # epoch | reference (CLIP_SAMPLINGS)

  @classmethod
  def from_config(cls, data: ml_collections.ConfigDict) -> "ClipSpec":
    a = data.augment
    if a.hue_space not in HUE_ROTATIONS:
      raise ValueError(f"data.augment.hue_space must be one of {sorted(HUE_ROTATIONS)}, "
                       f"got {a.hue_space!r}")
    if data.clip_sampling not in CLIP_SAMPLINGS:
      raise ValueError(f"data.clip_sampling must be one of {CLIP_SAMPLINGS}, "
                       f"got {data.clip_sampling!r}")
    return cls(num_frames=data.num_frames, gap=data.gap, resolution=tuple(data.resolution),
               random_crop=a.random_crop, crop_scale=tuple(a.crop_scale),
               crop_ratio=tuple(a.crop_ratio), hflip_prob=a.hflip_prob,
               jitter_prob=a.jitter_prob, jitter=tuple(a.jitter), hue_space=a.hue_space,
               gray_prob=a.gray_prob, gray_before_jitter=a.gray_before_jitter,
               blur_prob=a.blur_prob, blur_sigma=tuple(a.blur_sigma),
               blur_kernel_frac=a.blur_kernel_frac, clip_sampling=data.clip_sampling)


def clip_indices(num_available: int, num_frames: int, gap: int, rng) -> np.ndarray:
  """T frame indices at stride `gap` from a start drawn uniformly over the video
  (ours); the stride shrinks as far as a video too short for it needs."""
  if num_available < num_frames:
    raise ValueError(f"video has {num_available} frames, a clip needs {num_frames}")
  if num_frames > 1:
    gap = max(1, min(gap, (num_available - 1) // (num_frames - 1)))
  span = (num_frames - 1) * gap
  start = int(rng.integers(0, num_available - span))
  return start + gap * np.arange(num_frames)


def reference_clip_indices(num_available: int, num_frames: int, gap: int, rng) -> np.ndarray:
  """T frame indices as the authors' src/data.py draws them: frames ind + gap * (i - T // 2)
  with ind uniform in [gap * T // 2, len - gap * T // 2 - 1] (T=4, gap 4: ind-8 ... ind+4,
  so a clip never reaches the last four frames); the gap drops by one when that range
  holds one value or none. Where it is still empty (their loader fails) the gap keeps
  dropping, and at gap 1 the clip is the first T frames."""
  if num_available < num_frames:
    raise ValueError(f"video has {num_available} frames, a clip needs {num_frames}")
  half = lambda g: g * num_frames // 2
  if gap > 1 and half(gap) >= num_available - half(gap) - 1:
    gap -= 1
  while gap > 1 and half(gap) > num_available - half(gap) - 1:
    gap -= 1
  low, high = half(gap), num_available - half(gap) - 1
  centre = int(rng.integers(low, high + 1)) if low <= high else num_frames // 2
  return centre + gap * (np.arange(num_frames) - num_frames // 2)


def random_crop_box(height: int, width: int, scale, ratio, rng):
  """(top, left, h, w) of a random resized crop (torchvision's sampling)."""
  area = height * width
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
    w = int(round(np.sqrt(target * aspect)))
    h = int(round(np.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  side = min(height, width)  # fallback: central square crop
  return (height - side) // 2, (width - side) // 2, side, side


def _grayscale(x):
  """Luma of (..., 3) floats, kept as 3 channels."""
  gray = x @ np.array([0.299, 0.587, 0.114], np.float32)
  return np.repeat(gray[..., None], 3, axis=-1)


_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322],
                        [0.211, -0.523, 0.312]], np.float32)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)


def _rotate_hue_yiq(x, shift: float):
  """Hue rotation by `shift` turns, as a rotation of the chroma plane in YIQ."""
  c, s = np.cos(2 * np.pi * shift), np.sin(2 * np.pi * shift)
  rotation = np.array([[1, 0, 0], [0, c, -s], [0, s, c]], np.float32)
  return x @ (_YIQ_TO_RGB @ rotation @ _RGB_TO_YIQ).T


def rgb_to_hsv(x):
  """(..., 3) RGB in [0, 1] -> (..., 3) HSV, hue in turns [0, 1)."""
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  value = x.max(-1)
  delta = value - x.min(-1)
  saturation = np.where(value > 0, delta / np.where(value > 0, value, 1), 0)
  d = np.where(delta > 0, delta, 1)
  hue = np.where(r == value, (g - b) / d, np.where(g == value, 2 + (b - r) / d, 4 + (r - g) / d))
  hue = np.where(delta > 0, (hue / 6) % 1.0, 0)
  return np.stack([hue, saturation, value], -1)


def hsv_to_rgb(x):
  """(..., 3) HSV (hue in turns) -> (..., 3) RGB."""
  h, s, v = x[..., 0], x[..., 1], x[..., 2]
  sector = np.floor(h * 6)
  f = h * 6 - sector
  p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
  sector = sector.astype(np.int64) % 6
  # The (r, g, b) of each of the six hue sectors.
  table = np.stack([np.stack(c, -1) for c in
                    ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))])
  return np.take_along_axis(table, sector[None, ..., None], 0)[0]


def _rotate_hue_hsv(x, shift: float):
  """Hue shift by `shift` turns in HSV (torchvision's and kornia's ColorJitter)."""
  hsv = rgb_to_hsv(x)
  hsv[..., 0] = (hsv[..., 0] + shift) % 1.0
  return hsv_to_rgb(hsv).astype(x.dtype)


# data.augment.hue_space: our YIQ rotation or the HSV shift of the authors' kornia.
HUE_ROTATIONS = {"yiq": _rotate_hue_yiq, "hsv": _rotate_hue_hsv}


def _color_jitter(x, spec: ClipSpec, rng):
  """Brightness, contrast, saturation and hue in a random order."""
  b, c, s, h = spec.jitter
  for op in rng.permutation(4):
    if op == 0:
      x = x * rng.uniform(1 - b, 1 + b)
    elif op == 1:
      mean = _grayscale(x)[..., 0].mean(axis=(1, 2), keepdims=True)[..., None]
      factor = rng.uniform(1 - c, 1 + c)
      x = x * factor + mean * (1 - factor)
    elif op == 2:
      factor = rng.uniform(1 - s, 1 + s)
      x = x * factor + _grayscale(x) * (1 - factor)
    else:
      x = HUE_ROTATIONS[spec.hue_space](x, rng.uniform(-h, h))
    x = np.clip(x, 0.0, 1.0)
  return x


def photometric(frames, spec: ClipSpec, rng):
  """Colour jitter and grayscale (in the configured order), then Gaussian blur,
  on (T, H, W, 3) floats in [0, 1], the same draw for every frame."""
  x = frames
  if spec.gray_before_jitter and rng.uniform() < spec.gray_prob:
    x = _grayscale(x)
  if rng.uniform() < spec.jitter_prob:
    x = _color_jitter(x, spec, rng)
  if not spec.gray_before_jitter and rng.uniform() < spec.gray_prob:
    x = _grayscale(x)
  if rng.uniform() < spec.blur_prob:
    sigma = rng.uniform(*spec.blur_sigma)
    radius = int(spec.blur_kernel_frac * min(x.shape[1:3])) // 2
    if radius >= 1:
      x = ndimage.gaussian_filter(x, sigma=(0, sigma, sigma, 0), truncate=radius / sigma)
  return x


def named_frames(video, indices) -> list[tuple[str, np.ndarray]]:
  """[(where, (H, W, 3) uint8)] of a video record at `indices`: the file (or
  video and index) and its pixels."""
  frames = video["frames"]
  if isinstance(frames, np.ndarray):
    return [(f"{video['name']} frame {i}", frames[i]) for i in indices]
  paths = [frames[i] for i in indices]
  return list(zip(paths, sources.load_frames(paths)))


class SampleClip(grain.transforms.RandomMap):
  """Video record -> {'student', 'teacher': (T, H, W, 3) uint8} augmented views."""

  def __init__(self, spec: ClipSpec):
    self.spec = spec

  def random_map(self, video, rng):
    spec = self.spec
    draw = reference_clip_indices if spec.clip_sampling == "reference" else clip_indices
    indices = draw(len(video["frames"]), spec.num_frames, spec.gap, rng)
    named = named_frames(video, indices)
    (first, frame0), frames = named[0], [f for _, f in named]
    height, width = frame0.shape[:2]
    for where, f in named:
      if f.shape[:2] != (height, width):
        raise ValueError(f"{where} is {f.shape[1]}x{f.shape[0]}, but {first} of the same video is "
                         f"{width}x{height}: all frames of a video must have one size")
    top, left, h, w = (random_crop_box(height, width, spec.crop_scale, spec.crop_ratio, rng)
                       if spec.random_crop else (0, 0, height, width))
    out_h, out_w = spec.resolution
    clip = np.stack([
        np.asarray(Image.fromarray(f[top:top + h, left:left + w]).resize(
            (out_w, out_h), Image.BILINEAR)) for f in frames]).astype(np.float32) / 255.0
    if rng.uniform() < spec.hflip_prob:
      clip = clip[:, :, ::-1]
    views = {name: photometric(clip, spec, rng) for name in ("student", "teacher")}
    return {k: np.round(v * 255.0).astype(np.uint8) for k, v in views.items()}


def inner_box(box, side: tuple[float, float], rng):
  """A crop inside `box` (top, left, h, w) whose sides are a fraction in `side`
  of its sides (the same fraction for both), at a random place in it."""
  top, left, h, w = box
  fraction = rng.uniform(*side)
  inner_h, inner_w = max(1, round(h * fraction)), max(1, round(w * fraction))
  return (top + int(rng.integers(0, h - inner_h + 1)), left + int(rng.integers(0, w - inner_w + 1)),
          inner_h, inner_w)


class SampleViews(grain.transforms.RandomMap):
  """Video record -> a global and a local view of a frame for encoder
  pretraining: {'views': (2, H, W, 3) uint8, 'boxes': (2, 5) float32}. The
  global view is a random resized crop (spec.crop_scale of the frame's area),
  the local one a crop inside it (`inner_box`, local_side of its sides) resized
  to the same size, so it shows its part of the frame magnified (DINO's global
  and local crops). With `frame_gap` > 0 the local view comes from a frame up to
  that many frames away (objects move a little in between). Each view has its
  own flip and photometric draw. A box row is (top, left, height, width,
  flipped) of the crop as fractions of the frame, so a pixel of one view can be
  located in the other (`pretrain.corresponding_points`)."""

  def __init__(self, spec: ClipSpec, local_side: tuple[float, float], frame_gap: int = 0):
    self.spec = spec
    self.local_side = tuple(local_side)
    self.frame_gap = frame_gap

  def random_map(self, video, rng):
    spec = self.spec
    count = len(video["frames"])
    index = int(rng.integers(0, count))
    other = int(np.clip(index + rng.integers(-self.frame_gap, self.frame_gap + 1), 0, count - 1))
    (_, frame), (_, other_frame) = named_frames(video, [index, other])
    height, width = frame.shape[:2]
    out_h, out_w = spec.resolution
    outer = random_crop_box(height, width, spec.crop_scale, spec.crop_ratio, rng)
    inner = inner_box(outer, self.local_side, rng)
    views, boxes = [], []
    for image, (top, left, h, w) in ((frame, outer), (other_frame, inner)):
      view = np.asarray(Image.fromarray(image[top:top + h, left:left + w]).resize(
          (out_w, out_h), Image.BILINEAR)).astype(np.float32)[None] / 255.0
      flipped = rng.uniform() < spec.hflip_prob
      if flipped:
        view = view[:, :, ::-1]
      views.append(photometric(view, spec, rng)[0])
      boxes.append((top / height, left / width, h / height, w / width, float(flipped)))
    return {"views": np.round(np.stack(views) * 255.0).astype(np.uint8),
            "boxes": np.asarray(boxes, np.float32)}


def make_source(config: ml_collections.ConfigDict, workdir: str):
  """The training video source named by config.data.source (checked at start-up
  by config_checks)."""
  d = config.data
  if d.source == "synthetic":
    root = d.path or os.path.join(workdir, "synthetic_data")
    spec = synthetic.SyntheticSpec(**d.synthetic.to_dict())
    synthetic.ensure_synthetic_davis(root, spec)
    return sources.FrameFolderSource(root, "davis", d.split, d.num_frames)
  if d.source == "frames":
    return sources.FrameFolderSource(d.path, d.layout, d.split, d.num_frames)
  if d.source == "tfds":
    return sources.TfdsVideoSource(d.tfds_name, d.split, d.tfds_data_dir or None, d.num_frames,
                                   d.tfds_frames_key)
  raise ValueError(f"data.source must be one of {SOURCES}, got {d.source!r}")


def local_batch_size(global_batch: int, process_count: int) -> int:
  if global_batch % process_count:
    raise ValueError(f"data.batch_size={global_batch} (the global batch) is not divisible by "
                     f"the {process_count} processes")
  return global_batch // process_count


class ProcessShard(grain.MapDataset):
  """Process p's contiguous share of every global batch of the parent dataset."""

  def __init__(self, parent: grain.MapDataset, global_batch: int, process_index: int,
               process_count: int):
    super().__init__(parent)
    self._global = global_batch
    self._local = local_batch_size(global_batch, process_count)
    self._offset = process_index * self._local

  def __len__(self) -> int:
    return len(self._parent) // self._global * self._local

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    step, within = divmod(index, self._local)
    return self._parent[step * self._global + self._offset + within]

  def __str__(self) -> str:
    return f"ProcessShard(global={self._global}, local={self._local}, offset={self._offset})"


class UniformVideos(grain.MapDataset):
  """Element k: a video of the parent drawn uniformly by (seed, k) alone, with
  replacement, as the authors' loader draws one per clip (random.choice)."""

  def __init__(self, parent: grain.MapDataset, seed: int):
    super().__init__(parent)
    self._seed = seed

  def __len__(self) -> int:
    return sys.maxsize

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    rng = np.random.default_rng((self._seed, index))
    return self._parent[int(rng.integers(len(self._parent)))]

  def __str__(self) -> str:
    return f"UniformVideos(seed={self._seed})"


def build_dataset(source, spec: ClipSpec, *, seed: int, global_batch: int,
                  process_index: int = 0, process_count: int = 1,
                  sample=None) -> grain.MapDataset:
  """Batched, infinite MapDataset of this process's share of every global batch;
  `sample` turns a video into an example (default: `SampleClip(spec)`). Videos
  come once per epoch, reshuffled, or drawn with replacement (spec.clip_sampling)."""
  videos = grain.MapDataset.source(source)
  ds = (UniformVideos(videos, seed) if spec.clip_sampling == "reference"
        else videos.shuffle(seed=seed).repeat(None))
  ds = ds.random_map(sample or SampleClip(spec), seed=seed)
  ds = ProcessShard(ds, global_batch, process_index, process_count)
  return ds.batch(local_batch_size(global_batch, process_count), drop_remainder=True)


# make_iterator's worker processes each hold this many batches beside their read-ahead
# (grain.MultiprocessingOptions' default per_worker_buffer_size).
WORKER_BUFFER = 1


def buffered_batches(num_workers: int, prefetch: int) -> int:
  """How many batches make_iterator's pipeline can hold ready ahead of its consumer:
  `prefetch` read ahead in the main process, or in each worker plus its buffer."""
  return num_workers * (prefetch + WORKER_BUFFER) if num_workers > 0 else prefetch


def make_iterator(dataset: grain.MapDataset, num_workers: int, prefetch: int = 2):
  """A checkpointable iterator; `num_workers` > 0 decodes in worker processes."""
  ds = dataset.to_iter_dataset(grain.ReadOptions(num_threads=max(1, prefetch),
                                                 prefetch_buffer_size=prefetch))
  if num_workers > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                     per_worker_buffer_size=WORKER_BUFFER))
  return iter(ds)


def training_iterator(config: ml_collections.ConfigDict, source, *, process_index: int = 0,
                      process_count: int = 1):
  """The SMTC training input of `config` over `source`: this process's share of
  every global batch of data.batch_size clips, as the train job and the step
  benchmark read it."""
  d = config.data
  dataset = build_dataset(source, ClipSpec.from_config(d), seed=config.seed,
                          global_batch=d.batch_size, process_index=process_index,
                          process_count=process_count)
  return make_iterator(dataset, d.num_workers, d.prefetch)
