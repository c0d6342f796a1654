"""Unsupervised object discovery at inference (paper Sec. 4.2-4.3).

A video is cut into consecutive clips of T frames (the last one padded with the
video's last frame). In each clip, instance (n, p) is a candidate when its
score cos(S_n, O_np) >= eval.instance_score (eq. 11 at inference); its mask is
the semantic mask times the instance mask. Instances are linked from clip to
clip by matching their object vectors within each semantic, so a proposal keeps
its id through the video. Each pixel goes to the (n, p) with the largest mask;
pixels won by a non-candidate are background.
"""

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from smtc_jax.losses import l2_normalize
from smtc_jax.matching import bipartite_match


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """(F, H, W, 3) uint8 -> (F, h, w, 3) uint8 (bilinear)."""
  h, w = size
  return np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BILINEAR)) for f in frames])


def clips_of(frames: np.ndarray, num_frames: int) -> np.ndarray:
  """(F, ...) -> (C, T, ...) consecutive clips, the last padded with frame F-1."""
  f = frames.shape[0]
  count = -(-f // num_frames)
  index = np.minimum(np.arange(count * num_frames), f - 1)
  return frames[index].reshape(count, num_frames, *frames.shape[1:])


def link_instances(objects: np.ndarray) -> np.ndarray:
  """Per clip, the permutation of P that best matches the previous clip's
  instances of the same semantic. objects: (C, N, P, D) unit vectors (mean over
  frames). Returns (C, N, P) indices into P."""
  c, n, p, _ = objects.shape
  order = np.tile(np.arange(p), (c, n, 1))
  for k in range(1, c):
    previous = objects[k - 1][np.arange(n)[:, None], order[k - 1]]  # (N, P, D)
    similarity = np.einsum("npd,nqd->npq", previous, objects[k])
    order[k] = np.asarray(bipartite_match(jnp.asarray(1.0 - similarity)))
  return order


def upsampled_argmax(maps, size: tuple[int, int]) -> np.ndarray:
  """Argmax over channels of (h, w, C) maps bilinearly resized to size (H, W)."""
  big = jax.image.resize(jnp.asarray(maps), (*size, maps.shape[-1]), "bilinear")
  return np.asarray(jnp.argmax(big, axis=-1))


def discover(outputs: dict, num_frames: int, image_size: tuple[int, int], grid: tuple[int, int],
             score_threshold: float, max_proposals: int, first_stage_only: bool = False,
             area_tau: float = 0.2, mask_tau: float = 0.5):
  """Label maps of a video from the model outputs of its clips.

  outputs: model outputs with a leading clip axis (C, T, ...). With
  `first_stage_only` (SMTC-dagger, Table 2) the proposals are the semantic masks
  themselves: semantic n is a candidate in a frame when its mask (probability >
  mask_tau) covers at least area_tau of it (the first criterion of eq. 11). Returns
  (proposals (F, H, W) uint8 with ids 1..K <= max_proposals, semantic (F, H, W)
  uint8 argmax semantic + 1), for all C * T frames (the caller drops the padding).
  """
  scores = np.einsum("ctnd,ctnpd->ctnp", np.asarray(l2_normalize(outputs["semantic_slots"])),
                     np.asarray(l2_normalize(outputs["instance_slots"])))
  c, t, n, p = scores.shape
  order = link_instances(np.asarray(l2_normalize(jnp.mean(outputs["objects"], axis=1))))
  take = lambda x: np.take_along_axis(x, order[:, None, :, :].reshape(c, 1, n, p, *[1] * (x.ndim - 4)),
                                      axis=3)
  scores = take(scores)
  semantic = np.asarray(outputs["semantic_masks"]).reshape(c * t, n, *grid).transpose(0, 2, 3, 1)
  if first_stage_only:
    masks = semantic
    candidate = (semantic > mask_tau).mean(axis=(1, 2)) >= area_tau  # (C*T, N)
    p = 1
  else:
    masks = take(np.asarray(outputs["object_masks"]))  # (C, T, N, P, L)
    masks = masks.reshape(c * t, n * p, *grid).transpose(0, 2, 3, 1)  # (C*T, h, w, N*P)
    candidate = (scores >= score_threshold).reshape(c * t, n * p)
  # Upsample one frame at a time: a 480p frame of N*P masks is ~100 MB.
  winner = np.stack([upsampled_argmax(m, image_size) for m in masks])  # (C*T, H, W)
  semantic_map = winner if first_stage_only else np.stack(
      [upsampled_argmax(m, image_size) for m in semantic])
  is_candidate = np.take_along_axis(candidate[:, None, None, :], winner[..., None], -1)[..., 0]
  ids = np.where(is_candidate, winner + 1, 0)
  # Renumber by area; keep the largest max_proposals.
  area = np.bincount(ids.ravel(), minlength=n * p + 1)[1:]
  ranked = [i for i in np.argsort(-area) if area[i] > 0][:max_proposals]
  lookup = np.zeros(n * p + 1, np.uint8)
  lookup[np.asarray(ranked, np.int64) + 1] = np.arange(1, len(ranked) + 1)
  return lookup[ids], (semantic_map + 1).astype(np.uint8)
