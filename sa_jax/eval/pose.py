"""Pose error of generated frames against the driving skeletons they were conditioned on.

Driving keypoints come from the clip's `keypoints.json` (`sa-prep`, docs/prep.md) as they were drawn
into `poses/`: the detected keypoints with the stored alignment applied when there is one (the rule of
`pipeline.redraw`), normalised by the pose image's size. `sa-animate` stretches every pose image to the
generation size W x H, so a driving keypoint `(x, y)` lies at pixel `(x W, y H)` of a generated frame,
the point the skeleton drawing puts the joint's centre at (`skeleton.draw_body`: `x * w`, `y * h` of its
canvas). Generated keypoints come from DWPose (`prep.dwpose.PoseEstimator`) on each generated frame,
normalised by that frame's size, hence also `(x W, y H)`.

Protocol, on the 18 OpenPose body keypoints only:
  * A keypoint is visible when its score is > 0.3, the rule by which the skeleton drawing draws a joint
    (`skeleton.VISIBLE`; DWPose's neck score is 1 or 0).
  * People are matched one to one, greedily by increasing mean distance over the keypoints visible in
    both; a pair without such a keypoint is never matched.
  * `error`: the mean Euclidean distance in pixels over the keypoints visible in both people of every
    matched pair of the frame.
  * `pck`: the fraction of those keypoints closer than `alpha * max(H, W)`: MMPose's PCK (`PCKAccuracy`,
    `keypoint_pck_accuracy`: distance / max side of a box < thr, thr 0.05 by default) with the whole
    frame as the box. It does not depend on how large the person appears, so compare it between clips of
    one resolution and framing.
  * `pck_bbox`: the same with the box of MMPose's default `norm_item='bbox'` (PCK of Yang & Ramanan,
    TPAMI 2013): here the extent of the driving person's visible body keypoints (tighter than an
    annotated person box, so this PCK is somewhat stricter than MMPose's on annotated data).
  * Frames are not averaged in, but counted, when the driving skeleton shows no visible body keypoint
    (`no_driving`: nothing to compare), when no person with a visible body keypoint is detected in the
    generated frame (`no_person`), or when no matched pair shares a visible keypoint (`no_common`).
    `compared` and `driving_visible` give per frame how many of the driving skeleton's visible keypoints
    were compared. A clip's values are the means over its evaluated frames (NaN if none).

Numpy only. Shapes: `F` frames, `P` driving people, `Q` generated people, `K` compared keypoints.
"""

import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from sa_jax.prep import pipeline, skeleton
from sa_jax.prep.dwpose import PoseEstimator
from sa_jax.prep.keypoints import BODY, Pose

VISIBLE = skeleton.VISIBLE          # a joint is drawn (and compared) when its score is > 0.3
DEFAULT_ALPHA = 0.05                # MMPose PCKAccuracy's default threshold


class PoseError(NamedTuple):
  """Pose error of one clip.

  Attributes:
    error: float64 `[F]` mean keypoint distance in pixels, NaN where the frame is not evaluated.
    pck: float64 `[F]` fraction of compared keypoints within `alpha * max(H, W)`, NaN likewise.
    pck_bbox: float64 `[F]` fraction within `alpha *` the driving person's keypoint box side, NaN likewise
      (and where every compared person shows a single keypoint: no box).
    compared: int `[F]` keypoints compared (visible in both people of a matched pair).
    driving_visible: int `[F]` visible body keypoints of the driving skeleton (all its people).
    no_driving: frames whose driving skeleton shows no visible body keypoint.
    no_person: frames with a driving skeleton but no person detected in the generated frame.
    no_common: frames with people on both sides but no matched pair sharing a visible keypoint.
    mean_error, mean_pck, mean_pck_bbox: means over the evaluated frames (NaN if none).
    alpha: the PCK threshold.
  """
  error: np.ndarray
  pck: np.ndarray
  pck_bbox: np.ndarray
  compared: np.ndarray
  driving_visible: np.ndarray
  no_driving: int
  no_person: int
  no_common: int
  mean_error: float
  mean_pck: float
  mean_pck_bbox: float
  alpha: float


def read_driving_poses(keypoints_file: str | os.PathLike, align: bool = True) -> list[Pose]:
  """The driving keypoints of a `keypoints.json`, as `sa-prep` drew them into `poses/`.

  Args:
    keypoints_file: a `keypoints.json` written by `sa-prep`.
    align: apply the stored alignment when there is one (what `poses/` shows); False gives the
      detected keypoints (what `sa-prep draw --no-align` draws).
  Returns:
    one `Pose` per frame, normalised by the pose image's size.
  """
  poses, alignment, _ = pipeline.read_keypoints(keypoints_file, align)
  return poses if alignment is None else [alignment.apply(pose) for pose in poses]


def body_pixels(pose: Pose, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
  """Body keypoints of a normalised pose in pixels of a `width` x `height` frame.

  Returns:
    float64 `[P, 18, 2]` (x W, y H) and float64 `[P, 18]` scores.
  """
  return pose.keypoints[:, BODY] * np.array([width, height], np.float64), pose.scores[:, BODY]


def match_distances(driving: np.ndarray, driving_scores: np.ndarray, generated: np.ndarray,
                    generated_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Distances of the keypoints compared in one frame (matching as in the module docstring).

  Args:
    driving: `[P, 18, 2]` pixels; driving_scores: `[P, 18]`.
    generated: `[Q, 18, 2]` pixels; generated_scores: `[Q, 18]`.
  Returns:
    float64 `[K]` distances in pixels and float64 `[K]` the max side of each keypoint's driving-person
    box (the extent of that person's visible keypoints).
  """
  for name, points, scores in (('driving', driving, driving_scores), ('generated', generated, generated_scores)):
    if points.ndim != 3 or points.shape[1:] != (18, 2) or scores.shape != points.shape[:2]:
      raise ValueError(f'{name} keypoints {points.shape} and scores {scores.shape}, expected [N, 18, 2] and [N, 18]')
  seen, shown = driving_scores > VISIBLE, generated_scores > VISIBLE           # [P, 18], [Q, 18]
  common = seen[:, None] & shown[None]                                          # [P, Q, 18]
  distance = np.linalg.norm(driving[:, None] - generated[None], axis=-1)        # [P, Q, 18]
  counts = common.sum(-1)                                                       # [P, Q]
  cost = np.where(counts > 0, np.where(common, distance, 0.0).sum(-1) / np.maximum(counts, 1), np.inf)
  distances, sizes, used_p, used_q = [], [], set(), set()
  for flat in np.argsort(cost, axis=None, kind='stable'):
    p, q = divmod(int(flat), cost.shape[1])
    if not np.isfinite(cost[p, q]):
      break
    if p in used_p or q in used_q:
      continue
    used_p.add(p)
    used_q.add(q)
    box = driving[p][seen[p]]                                                   # [V, 2]
    distances.append(distance[p, q][common[p, q]])
    sizes.append(np.full(counts[p, q], np.max(box.max(0) - box.min(0))))
  if not distances:
    return np.zeros(0), np.zeros(0)
  return np.concatenate(distances), np.concatenate(sizes)


def pose_error(driving: Sequence[Pose], generated: Sequence[Pose], width: int, height: int,
               alpha: float = DEFAULT_ALPHA) -> PoseError:
  """Pose error of generated frames against the driving keypoints (module docstring).

  Args:
    driving: `F` driving poses, normalised by their pose image (`read_driving_poses`).
    generated: `F` poses detected in the generated frames, normalised by the frame size.
    width, height: the generated frames' size W x H.
    alpha: PCK threshold, a fraction of the box side.
  Returns:
    `PoseError`.
  """
  if len(driving) != len(generated):
    raise ValueError(f'{len(driving)} driving poses but {len(generated)} generated frames: need one each')
  if width <= 0 or height <= 0:
    raise ValueError(f'frame size {width}x{height} must be positive')
  if alpha <= 0:
    raise ValueError(f'alpha is {alpha}, expected > 0')
  count = len(driving)
  error, pck, pck_bbox = (np.full(count, np.nan) for _ in range(3))
  compared, driving_visible = np.zeros(count, int), np.zeros(count, int)
  no_driving = no_person = no_common = 0
  for i, (drive, made) in enumerate(zip(driving, generated)):
    points, scores = body_pixels(drive, width, height)
    found, found_scores = body_pixels(made, width, height)
    driving_visible[i] = int(np.sum(scores > VISIBLE))
    if driving_visible[i] == 0:
      no_driving += 1
      continue
    if not np.any(found_scores > VISIBLE):
      no_person += 1
      continue
    distances, sizes = match_distances(points, scores, found, found_scores)
    compared[i] = distances.size
    if distances.size == 0:
      no_common += 1
      continue
    error[i] = np.mean(distances)
    pck[i] = np.mean(distances < alpha * max(width, height))
    boxed = sizes > 0                         # a person showing one keypoint has no box
    pck_bbox[i] = np.mean(distances[boxed] < alpha * sizes[boxed]) if boxed.any() else np.nan

  def mean(values: np.ndarray) -> float:       # over the evaluated frames: those with a value
    return float(np.mean(values[~np.isnan(values)])) if not np.isnan(values).all() else float('nan')

  return PoseError(error, pck, pck_bbox, compared, driving_visible, no_driving, no_person, no_common,
                   mean(error), mean(pck), mean(pck_bbox), float(alpha))


def clip_pose_error(estimator: PoseEstimator, frames: np.ndarray, driving: Sequence[Pose],
                    alpha: float = DEFAULT_ALPHA) -> PoseError:
  """DWPose on the generated frames, compared with the first `F` driving poses.

  Args:
    estimator: a `PoseEstimator` (local ONNX models, `model_files.dwpose_files`).
    frames: uint8 `[F, H, W, 3]` generated frames (RGB).
    driving: at least `F` driving poses (`read_driving_poses`); `sa-animate` animates the first `F`.
    alpha: PCK threshold.
  Returns:
    `PoseError`.
  """
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f'frames have shape {frames.shape} and dtype {frames.dtype}, expected uint8 [F, H, W, 3]')
  if len(driving) < frames.shape[0]:
    raise ValueError(f'{frames.shape[0]} generated frames but only {len(driving)} driving poses')
  height, width = frames.shape[1:3]
  return pose_error(driving[:frames.shape[0]], [estimator(frame) for frame in frames], width, height, alpha)
