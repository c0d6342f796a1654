"""Smooth random motion shared by the generated video sets (synthetic.py,
photo_videos.py): slow curves and paths that bounce inside the frame."""

import numpy as np


def smooth_curves(rng, num_frames: int, amplitude: float, curves: int = 1,
                  periods=(0.25, 2.0)) -> np.ndarray:
  """(T, curves) slow random curves in [-amplitude, amplitude]: the mean of two sines
  per curve, of random phase and of random period between `periods` times the
  video's length."""
  t = np.arange(num_frames, dtype=np.float32)[:, None]
  period = rng.uniform(num_frames * periods[0], num_frames * periods[1], (2, curves))
  phases = rng.uniform(0, 2 * np.pi, (2, curves))
  waves = np.sin(2 * np.pi * t[None] / period[:, None] + phases[:, None])  # (2, T, curves)
  return amplitude * waves.mean(0)


def bouncing_path(rng, size: int, margin: float, num_frames: int, speed) -> np.ndarray:
  """(T, 2) positions: a constant velocity of `speed` (low, high) pixels a frame
  along each axis, in a random direction, turned back at `margin` from the borders."""
  low, high = margin, size - margin
  pos = rng.uniform(low, high, 2)
  vel = rng.uniform(*speed, 2) * rng.choice([-1, 1], 2)
  out = []
  for _ in range(num_frames):
    out.append(pos.copy())
    pos = pos + vel
    for axis in range(2):
      if not low <= pos[axis] <= high:
        vel[axis] = -vel[axis]
        pos[axis] = np.clip(pos[axis], low, high)
  return np.stack(out)
