"""Label propagation with the CRW protocol (paper Table 4; Jabri et al. 2020).

Each frame's labels are a softmax-weighted sum of the labels of a context: the
first frame and the `video_len` preceding frames. A query cell only looks at
context cells within `radius` feature cells, keeps the `topk` most similar,
and weighs them with softmax(similarity / temperature). Features are
L2-normalised per cell. Labels live on the feature grid and are upsampled to
the image at the end.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from smtc_jax.evaluation import discovery


def neighbourhood_mask(h: int, w: int, radius: float) -> jax.Array:
  """(h*w, h*w) bool: cells within `radius` (Euclidean, in cells) of each other."""
  ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  cells = np.stack([ys.ravel(), xs.ravel()], -1).astype(np.float32)
  dist = np.linalg.norm(cells[:, None] - cells[None], axis=-1)
  return jnp.asarray(dist <= radius)


BAND_ROWS = 4  # query rows compared at once, each band only with the rows within reach


@functools.partial(jax.jit, static_argnames=("grid", "reach", "topk", "temperature"))
def propagate_step(query, context_feats, context_labels, context_valid, near, *, grid, reach: int,
                   topk: int, temperature: float):
  """Labels (L, C) of one frame from its context.

  query: (L, D) unit features of an (h, w) = grid; context_feats: (K, L, D);
  context_labels: (K, L, C); context_valid: (K,) bool, False for padding
  frames; near: (L, L) bool neighbourhood, never beyond `reach` rows. Cells
  outside the radius or in padding never contribute; of the rest, the top-k over
  all context frames do. The query's rows go in bands of BAND_ROWS, each compared
  with the context rows within reach only (what lies further is outside the
  radius): the same similarities and choices as the whole frame at once, for
  about (BAND_ROWS + 2 reach) / h of its matmul. Jitted once per shape: a video's
  context is padded to a fixed K, so every frame reuses one compile.
  """
  h, w = grid
  k, l, _ = context_feats.shape
  flat_labels = context_labels.reshape(k * l, -1)
  out = []
  for top_row in range(0, h, BAND_ROWS):
    rows = slice(top_row * w, min(h, top_row + BAND_ROWS) * w)
    first, last = max(0, top_row - reach), min(h, top_row + BAND_ROWS + reach)
    span = slice(first * w, last * w)
    sim = jnp.einsum("ld,kmd->lkm", query[rows], context_feats[:, span])  # (band, K, span)
    allowed = near[rows, None, span] & context_valid[None, :, None]
    sim = jnp.where(allowed, sim, -jnp.inf).reshape(sim.shape[0], -1)
    top, idx = jax.lax.top_k(sim, topk)  # (band, topk) into (K, span)
    cells = (last - first) * w
    flat = idx // cells * l + first * w + idx % cells  # into (K * L)
    weights = jax.nn.softmax(top / temperature, axis=-1)
    weights = jnp.where(jnp.isfinite(top), weights, 0.0)
    out.append(jnp.einsum("lt,ltc->lc", weights, flat_labels[flat]))
  return jnp.concatenate(out)


def context_frames(t: int, video_len: int) -> tuple[np.ndarray, np.ndarray]:
  """((K,) frame indices, (K,) valid) of frame t's context, K = video_len + 1:
  frame 0, then the video_len frames before t (never frame 0 twice), padded at
  the end with frame 0 marked invalid (so the valid ones keep their order)."""
  frames = [0] + list(range(max(1, t - video_len), t))
  pad = video_len + 1 - len(frames)
  return np.asarray(frames + [0] * pad), np.arange(video_len + 1) < len(frames)


def propagate_video(features, first_labels, *, video_len: int, radius: float, topk: int,
                    temperature: float):
  """Propagate labels through a video.

  features: (F, h, w, D); first_labels: (h, w, C) soft or one-hot labels of
  frame 0 on the feature grid. Returns (F, h, w, C) label distributions (frame
  0 is the given one).
  """
  f, h, w, d = features.shape
  feats = jnp.asarray(features).reshape(f, h * w, d)
  feats = feats / jnp.maximum(jnp.linalg.norm(feats, axis=-1, keepdims=True), 1e-12)
  near = neighbourhood_mask(h, w, radius)
  reach = int(np.floor(radius))  # rows a neighbour can be away
  first = jnp.asarray(first_labels, jnp.float32).reshape(h * w, -1)
  labels = [first]  # per frame (L, C)
  for t in range(1, f):
    frames, valid = context_frames(t, video_len)
    labels.append(propagate_step(feats[t], feats[frames], jnp.stack([labels[i] for i in frames]),
                                 jnp.asarray(valid), near, grid=(h, w), reach=reach, topk=topk,
                                 temperature=temperature))
  return jnp.stack(labels).reshape(f, h, w, -1)


def one_hot_on_grid(label_map: np.ndarray, num_labels: int, grid: tuple[int, int]) -> np.ndarray:
  """(gh, gw, C) label fractions of an (H, W) integer map, by area averaging
  (H and W are multiples of the grid). Labels >= num_labels (void, 255) count
  as no label."""
  height, width = label_map.shape
  gh, gw = grid
  table = np.concatenate([np.eye(num_labels, dtype=np.float32),
                          np.zeros((1, num_labels), np.float32)])
  one_hot = table[np.minimum(label_map, num_labels)]
  return one_hot.reshape(gh, height // gh, gw, width // gw, num_labels).mean(axis=(1, 3))


def upsample_labels(labels, size: tuple[int, int]) -> np.ndarray:
  """(F, h, w, C) distributions -> (F, H, W) argmax labels at image size, one
  frame at a time (a 480p video of 20 channels would be GBs at once)."""
  return discovery.upsampled_argmax(labels, size).astype(np.uint8)
