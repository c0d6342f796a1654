"""Unsupervised object discovery at inference (paper Sec. 4.2-4.3).

A video is cut into consecutive clips of T frames (the last one padded with the
video's last frame). In each clip and frame, instance (n, p) is a candidate
when it is valid by eq. 11 (paper: semantic n covers at least tau1 of the frame
and cos(S_n, O_np) >= tau2) or, with eval.candidates='score', when its score
cos(S_n, O_np) >= tau2 alone (the authors' eval_multi.py); its mask is the
semantic mask times the instance mask. Instances are linked from clip to clip by
matching their object vectors within each semantic, so a proposal keeps its id
through the video. Each pixel goes to the (n, p) with the largest mask; pixels
won by a non-candidate are background. Optionally (eval.background='border', ours:
the paper keeps every candidate) a proposal that lies on the frame's border much
more than inside it is background too: stuff fills the frame to its edges,
things sit inside it. Optionally (eval.tracks='components', ours) the ids come
from tracking instead: the proposals' union is cut into its connected components
in each frame and these are linked from frame to frame by mask IoU, since
objects are spatially coherent and move little between frames while the slots'
indices are not stable from clip to clip; a component that merges objects tracked
until then is cut between their last masks (eval.track_merge_share); before that,
each proposal's narrow gaps can be closed (eval.track_gap_radius), so that a striped
or dotted object is one component.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
from scipy import ndimage, optimize

from smtc_jax import losses
from smtc_jax.losses import l2_normalize
from smtc_jax.matching import bipartite_match

CANDIDATE_RULES = ("eq11", "score")  # eval.candidates
BACKGROUND_RULES = ("none", "border", "border_components")  # eval.background
TRACK_RULES = ("slots", "components")  # eval.tracks
MAX_PROPOSALS = 255  # eval.max_proposals: proposals are uint8 label maps (PNG), 0 the background


@dataclasses.dataclass(frozen=True)
class Tracking:
  """How proposals keep their id through a video (eval.tracks): 'slots' (the
  instances' own ids, linked clip to clip by their object vectors) or
  'components' (connected components of at least min_area of the frame,
  linked frame to frame by mask IoU >= min_iou, a track waiting at most
  max_gap frames for its object to reappear). With merge_share > 0, a component
  that holds at least that share of two or more tracks' last masks (objects that
  came to touch) is cut between them; only tracks seen whole in at least
  merge_min_frames frames count, so a fragmented object is not cut apart. With
  gap_radius > 0 (a share of the frame's shorter side) each proposal's gaps are
  closed and the union's holes filled first (closed_foreground). With
  backward_pass, the merge cut runs over the reversed video first and the forward
  tracking links the segments it left, so objects that touch early in the video
  and part later are cut where they touch, not only those that part early."""
  rule: str = "slots"
  min_area: float = 0.0025
  min_iou: float = 0.2
  max_gap: int = 3
  merge_share: float = 0.0
  merge_min_frames: int = 2
  gap_radius: float = 0.0
  backward_pass: bool = False

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "Tracking":
    e = config.eval
    if e.tracks not in TRACK_RULES:
      raise ValueError(f"eval.tracks must be one of {TRACK_RULES}, got {e.tracks!r}")
    return cls(e.tracks, e.track_min_area, e.track_min_iou, e.track_max_gap,
               e.track_merge_share, e.track_merge_min_frames, e.track_gap_radius,
               e.track_backward_pass)


@dataclasses.dataclass(frozen=True)
class Candidates:
  """Which instances are proposals: eq. 11 as in training (loss.valid_mask_tau,
  loss.tau1, loss.tau2), with or without its area criterion."""
  use_area: bool = True
  mask_tau: float = 0.5
  tau1: float = 0.2
  tau2: float = 0.5

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "Candidates":
    """eval.candidates: 'eq11' (paper) or 'score' (code). Without semantic
    masks (model.stages='instance') eq. 11 has no area criterion, as in training."""
    rule, l = config.eval.candidates, config.loss
    if rule not in CANDIDATE_RULES:
      raise ValueError(f"eval.candidates must be one of {CANDIDATE_RULES}, got {rule!r}")
    return cls(use_area=rule == "eq11" and config.model.stages != "instance",
               mask_tau=l.valid_mask_tau, tau1=l.tau1, tau2=l.tau2)

  def of(self, outputs) -> np.ndarray:
    """(..., N, P) bool candidates of model outputs with leading axes (...)."""
    valid = losses.valid_instances(
        jnp.asarray(outputs["semantic_masks"]), jnp.asarray(outputs["semantic_slots"]),
        jnp.asarray(outputs["instance_slots"]), mask_tau=self.mask_tau, tau1=self.tau1,
        tau2=self.tau2, use_area=self.use_area)
    return np.asarray(valid) > 0

  def of_semantics(self, semantic_masks) -> np.ndarray:
    """(..., N) bool: semantics large enough by eq. 11 (SMTC-dagger's proposals)."""
    return np.asarray(losses.large_semantics(jnp.asarray(semantic_masks),
                                             mask_tau=self.mask_tau, tau1=self.tau1))


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
  """(F, H, W) argmax over channels of (F, h, w, C) maps bilinearly resized to
  size (H, W), one frame at a time (a 480p frame of 20 channels is ~100 MB)."""
  def frame(m):
    return np.asarray(jnp.argmax(jax.image.resize(jnp.asarray(m), (*size, m.shape[-1]),
                                                  "bilinear"), axis=-1))

  return np.stack([frame(m) for m in maps])


def border_background(ids: np.ndarray, ratio: float) -> np.ndarray:
  """(max id + 1,) bool: the ids whose share of the frame border, over all
  frames, is at least `ratio` times their share of the frames. ids: (F, H, W)."""
  count = int(ids.max()) + 1
  border = np.zeros(ids.shape[1:], bool)
  border[0] = border[-1] = border[:, 0] = border[:, -1] = True
  area = np.bincount(ids.ravel(), minlength=count) / ids.size
  on_border = np.bincount(ids[:, border].ravel(), minlength=count) / ids[:, border].size
  return (area > 0) & (on_border >= ratio * area)


def border_component_background(ids: np.ndarray, ratio: float) -> np.ndarray:
  """(F, H, W) ids with the border rule applied per connected component: of each
  proposal that border_background marks, only the components that touch the
  frame's border go to background (0); its components inside the frame keep
  their id, so an object that shares a proposal with stuff is not dropped with it."""
  marked = np.flatnonzero(border_background(ids, ratio))
  out = ids.copy()
  for frame in out:
    for k in marked[marked > 0]:
      labels, count = ndimage.label(frame == k)
      if not count:
        continue
      edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
      frame[np.isin(labels, edge[edge > 0])] = 0
  return out


def components(foreground: np.ndarray, min_pixels: int) -> list[np.ndarray]:
  """(H, W) bool -> its 4-connected components of at least min_pixels, as (H, W) bool masks."""
  labels, count = ndimage.label(foreground)
  sizes = np.bincount(labels.ravel(), minlength=count + 1)
  return [labels == k for k in range(1, count + 1) if sizes[k] >= min_pixels]


def close_gaps(mask: np.ndarray, radius: int) -> np.ndarray:
  """(H, W) bool mask with gaps up to about 2 * radius pixels wide closed: a binary
  closing by a disc of that radius, the outside of the frame counted as empty."""
  if radius < 1:
    return mask
  ys, xs = np.mgrid[-radius:radius + 1, -radius:radius + 1]
  disc = ys ** 2 + xs ** 2 <= radius ** 2
  closed = ndimage.binary_closing(np.pad(mask, radius), disc)[radius:-radius, radius:-radius]
  return closed | mask


def closed_foreground(ids: np.ndarray, radius: int) -> np.ndarray:
  """(H, W) ids (0: background) -> bool foreground: each proposal's mask with its
  gaps closed (close_gaps; one proposal at a time, so distinct proposals that
  nearly touch are not bridged), the union's holes filled."""
  masks = [close_gaps(ids == k, radius) for k in np.unique(ids[ids > 0])]
  return ndimage.binary_fill_holes(np.any(masks, axis=0)) if masks else ids > 0


def mask_ious(a: list[np.ndarray], b: list[np.ndarray]) -> np.ndarray:
  """(len(a), len(b)) IoU of two lists of (H, W) bool masks."""
  if not a or not b:
    return np.zeros((len(a), len(b)))
  x = np.stack(a).reshape(len(a), -1).astype(np.float32)
  y = np.stack(b).reshape(len(b), -1).astype(np.float32)
  inter = x @ y.T
  return inter / np.maximum(x.sum(1)[:, None] + y.sum(1)[None] - inter, 1.0)


def cut_merges(masks: list[np.ndarray], previous: list[np.ndarray],
               min_share: float) -> tuple[list[np.ndarray], list[bool]]:
  """A mask that holds at least min_share of each of two or more previous masks
  is cut between them, each pixel going to the nearest of those masks (objects
  that touch, or one that passes in front of another). Returns the masks after
  cutting (empty parts dropped) and, for each, whether it is a cut part."""
  out, cut = [], []
  for mask in masks:
    held = [m for m in previous if (mask & m).sum() >= min_share * m.sum()]
    if len(held) < 2:
      out.append(mask)
      cut.append(False)
      continue
    distances = np.stack([ndimage.distance_transform_edt(~m) for m in held])  # (K, H, W)
    nearest = np.argmin(distances, axis=0)
    parts = [p for p in (mask & (nearest == k) for k in range(len(held))) if p.any()]
    out += parts
    cut += [True] * len(parts)
  return out, cut


def link_segments(segments: list[list[np.ndarray]], min_iou: float, max_gap: int,
                  merge_share: float = 0.0, merge_min_frames: int = 2):
  """Track ids of each frame's segments: a frame's segments are matched (Hungarian,
  largest total IoU) to the last masks of the tracks seen within max_gap frames;
  a pair with IoU < min_iou, or a segment left over, starts a new track. With
  merge_share > 0 a frame's segments are first cut between the tracks they merge
  (cut_merges), counting only tracks seen whole in at least merge_min_frames frames.
  segments: per frame, a list of (H, W) bool masks. Returns (segments after
  cutting, their track ids), both in the same nesting."""
  last, seen, whole = [], [], []  # per track: its last mask, the frame it was last seen, frames seen uncut
  cut_segments, ids = [], []
  for frame, masks in enumerate(segments):
    live = [k for k in range(len(last)) if frame - seen[k] <= max_gap]
    cut = [False] * len(masks)
    if merge_share > 0:
      masks, cut = cut_merges(masks, [last[k] for k in live if whole[k] >= merge_min_frames],
                              merge_share)
    iou = mask_ious(masks, [last[k] for k in live])
    own = [-1] * len(masks)
    for i, j in zip(*optimize.linear_sum_assignment(iou, maximize=True)):
      if iou[i, j] >= min_iou:
        own[i] = live[j]
    for i, mask in enumerate(masks):
      if own[i] < 0:  # a new track
        own[i] = len(last)
        last.append(mask)
        seen.append(frame)
        whole.append(0)
      else:
        last[own[i]], seen[own[i]] = mask, frame
      whole[own[i]] += not cut[i]
    cut_segments.append(masks)
    ids.append(own)
  return cut_segments, ids


def component_tracks(ids: np.ndarray, tracking: Tracking) -> np.ndarray:
  """(F, H, W) proposal ids (0: background) -> (F, H, W) int32 track ids (0:
  background) of the connected components of their union (gaps closed by
  tracking.gap_radius first), linked frame to frame (link_segments), after a
  backward pass that cuts merges too with tracking.backward_pass."""
  min_pixels = max(1, int(round(tracking.min_area * ids[0].size)))
  if tracking.gap_radius > 0:
    radius = int(round(tracking.gap_radius * min(ids.shape[1:])))
    foreground = np.stack([closed_foreground(frame, radius) for frame in ids])
  else:
    foreground = ids > 0
  link = lambda segments: link_segments(segments, tracking.min_iou, tracking.max_gap,
                                        tracking.merge_share, tracking.merge_min_frames)
  segments = [components(f, min_pixels) for f in foreground]
  if tracking.backward_pass:
    segments = link(segments[::-1])[0][::-1]
  segments, track_ids = link(segments)
  out = np.zeros(foreground.shape, np.int32)
  for frame, (masks, tracks) in enumerate(zip(segments, track_ids)):
    for mask, track in zip(masks, tracks):
      out[frame][mask] = track + 1
  return out


def frame_candidates(outputs: dict, num_frames: int, grid: tuple[int, int],
                     candidates: Candidates, first_stage_only: bool = False) -> list[np.ndarray]:
  """Each frame's candidate masks on the token grid, (K_t, h, w) float32 in
  (semantic, instance) order and without ids: what the authors' eval_multi.py
  saves for their scorer (the object masks, semantic x instance, of the
  candidates; with `first_stage_only`, the large semantics' masks). outputs: as
  discover's; the padding of the last clip dropped."""
  kept = candidates.of(outputs)  # (C, T, N, P)
  c, t, n, p = kept.shape
  if first_stage_only:
    semantic = np.asarray(outputs["semantic_masks"]).reshape(c * t, n, -1)
    masks, keep = semantic, candidates.of_semantics(semantic)
  else:
    masks = np.asarray(outputs["object_masks"]).reshape(c * t, n * p, -1)
    keep = kept.reshape(c * t, n * p)
  return [m[k].reshape(-1, *grid).astype(np.float32)
          for m, k in zip(masks[:num_frames], keep[:num_frames])]


def discover(outputs: dict, num_frames: int, image_size: tuple[int, int], grid: tuple[int, int],
             candidates: Candidates, max_proposals: int, first_stage_only: bool = False,
             background: str = "none", border_ratio: float = 0.5,
             tracking: Tracking = Tracking()):
  """Label maps of a video from the model outputs of its clips.

  outputs: model outputs with a leading clip axis (C, T, ...). With
  `first_stage_only` (SMTC-dagger, Table 2) the proposals are the semantic masks
  themselves: semantic n is a candidate in a frame when its binarised mask
  covers at least tau1 of it (the first criterion of eq. 11). Returns
  (proposals (F, H, W) uint8 with ids 1..K <= max_proposals, semantic (F, H, W)
  uint8 argmax semantic + 1) of the video's num_frames frames (the padding of
  the last clip dropped). `background`: 'none' or 'border' (border_background at
  border_ratio, over the video) or 'border_components' (only the marked
  proposals' components that touch the border); `tracking`: how ids persist
  through the video.
  """
  if background not in BACKGROUND_RULES:
    raise ValueError(f"eval.background must be one of {BACKGROUND_RULES}, got {background!r}")
  if not 1 <= max_proposals <= MAX_PROPOSALS:  # the uint8 lookup below would wrap ids
    raise ValueError(f"eval.max_proposals={max_proposals} must lie in [1, {MAX_PROPOSALS}]")
  kept = candidates.of(outputs)  # (C, T, N, P)
  c, t, n, p = kept.shape
  order = link_instances(np.asarray(l2_normalize(jnp.mean(outputs["objects"], axis=1))))
  take = lambda x: np.take_along_axis(x, order[:, None, :, :].reshape(c, 1, n, p, *[1] * (x.ndim - 4)),
                                      axis=3)
  semantic_masks = np.asarray(outputs["semantic_masks"]).reshape(c * t, n, -1)  # (C*T, N, L)
  semantic = semantic_masks.reshape(c * t, n, *grid).transpose(0, 2, 3, 1)
  if first_stage_only:
    masks = semantic
    candidate = candidates.of_semantics(semantic_masks)  # (C*T, N)
    p = 1
  else:
    masks = take(np.asarray(outputs["object_masks"]))  # (C, T, N, P, L)
    masks = masks.reshape(c * t, n * p, *grid).transpose(0, 2, 3, 1)  # (C*T, h, w, N*P)
    candidate = take(kept).reshape(c * t, n * p)
  winner = upsampled_argmax(masks, image_size)  # (C*T, H, W)
  semantic_map = winner if first_stage_only else upsampled_argmax(semantic, image_size)
  is_candidate = np.take_along_axis(candidate[:, None, None, :], winner[..., None], -1)[..., 0]
  ids = np.where(is_candidate, winner + 1, 0)[:num_frames]
  if background == "border":
    ids = np.where(border_background(ids, border_ratio)[ids], 0, ids)
  elif background == "border_components":
    ids = border_component_background(ids, border_ratio)
  if tracking.rule == "components":
    ids = component_tracks(ids, tracking)
  # Renumber by area; keep the largest max_proposals.
  area = np.bincount(ids.ravel())[1:]
  ranked = [i for i in np.argsort(-area) if area[i] > 0][:max_proposals]
  lookup = np.zeros(area.size + 1, np.uint8)
  lookup[np.asarray(ranked, np.int64) + 1] = np.arange(1, len(ranked) + 1)
  return lookup[ids], (semantic_map[:num_frames] + 1).astype(np.uint8)
