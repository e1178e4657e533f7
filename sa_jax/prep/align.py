"""Alignment of driving skeletons to the reference body (SPEC §6 "Reference alignment").

Mirrors `get_video_pose` of StableAnimator `DWPose/skeleton_extraction.py`: on the reference keep the body
joints {0,1,2,5,8,9,10,11,12,13,14,15,16,17} its first person shows (score > 0.3); over all driving frames
with exactly one person fit `y_ref = a_y y + b_y` by least squares (`np.polyfit`, degree 1), set
`a_x = a_y / (fh / fw / H * W)` and `b_x = mean(x_ref - a_x x)`, all in normalised coordinates (H, W: the
reference size). The driving frames' joints are used whatever their own scores, as in the reference.

The reference sets (fh, fw) to the reference size too, so the divisor is 1 (up to rounding) and a_x = a_y.
With `aspect_correct=True`, (fh, fw) is the driving frame size, which keeps one pixel scale on both axes
when the driving frames and the reference have different aspect ratios (docs/prep.md).
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from sa_jax.prep.keypoints import Pose

REFERENCE_JOINTS = (0, 1, 2, 5, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17)
VISIBLE = 0.3


@dataclasses.dataclass(frozen=True)
class Alignment:
  """`(x, y) -> (a[0] x + b[0], a[1] y + b[1])` in normalised coordinates.

  Attributes:
    a: (a_x, a_y) scales.
    b: (b_x, b_y) offsets.
    joints: reference body joints used in the fit.
    frames: indices of the driving frames used in the fit (those with exactly one person).
    aspect_correct: whether a_x was corrected for the driving frames' aspect ratio.
  """
  a: tuple[float, float]
  b: tuple[float, float]
  joints: tuple[int, ...]
  frames: tuple[int, ...]
  aspect_correct: bool = False

  def apply(self, pose: Pose) -> Pose:
    return pose.transformed(self.a, self.b)

  def to_dict(self) -> dict[str, Any]:
    return {'a': list(self.a), 'b': list(self.b), 'joints': list(self.joints),
            'frames': list(self.frames), 'aspect_correct': self.aspect_correct}

  @classmethod
  def from_dict(cls, data: dict[str, Any]) -> 'Alignment':
    return cls(a=tuple(data['a']), b=tuple(data['b']), joints=tuple(data['joints']),
               frames=tuple(data['frames']), aspect_correct=bool(data['aspect_correct']))


def reference_joints(reference: Pose) -> tuple[int, ...]:
  """The alignment joints that the reference's first person shows (score > 0.3)."""
  if reference.num_people == 0:
    return ()
  return tuple(j for j in REFERENCE_JOINTS if reference.scores[0, j] > VISIBLE)


def check_reference(reference: Pose) -> tuple[int, ...]:
  """The reference's alignment joints; an error when there are fewer than 2 (nothing to fit)."""
  if reference.num_people == 0:
    raise ValueError('no person detected in the reference image, so the driving skeletons cannot be '
                     'aligned to it (use --no-align to keep them unaligned)')
  joints = reference_joints(reference)
  if len(joints) < 2:
    raise ValueError(f'the reference body shows {len(joints)} of the alignment joints '
                     f'{REFERENCE_JOINTS} with score > {VISIBLE}, need at least 2 '
                     '(use --no-align to keep the skeletons unaligned)')
  return joints


def fit_alignment(reference: Pose, frames: Sequence[Pose], aspect_correct: bool = False) -> Alignment:
  """Fits the scale and offset that map the driving bodies onto the reference body.

  Args:
    reference: keypoints of the reference image (its first person is the target body).
    frames: keypoints of every driving frame.
    aspect_correct: take (fh, fw) from the first fitted frame instead of the reference (module doc).

  Returns:
    the fitted `Alignment`.
  """
  joints = check_reference(reference)
  used = tuple(i for i, pose in enumerate(frames) if pose.num_people == 1)
  if not used:
    raise ValueError(f'none of the {len(frames)} driving frames has exactly one person, so no alignment '
                     'can be fitted (use --no-align to keep the skeletons unaligned)')
  target = reference.keypoints[0, list(joints)]  # [J, 2]
  driving = np.stack([frames[i].keypoints[0, list(joints)] for i in used])  # [F, J, 2]
  a_y, b_y = np.polyfit(driving[:, :, 1].flatten(), np.tile(target[:, 1], len(used)), 1)
  first = frames[used[0]]
  fh, fw = (first.height, first.width) if aspect_correct else (reference.height, reference.width)
  a_x = a_y / (fh / fw / reference.height * reference.width)
  b_x = np.mean(np.tile(target[:, 0], len(used)) - driving[:, :, 0].flatten() * a_x)
  return Alignment(a=(float(a_x), float(a_y)), b=(float(b_x), float(b_y)), joints=joints, frames=used,
                   aspect_correct=aspect_correct)
