"""Whole-body keypoints in the OpenPose-134 layout of the DWPose tools (SPEC §6).

DWPose predicts the 133 COCO-WholeBody keypoints; `dwpose.to_openpose` inserts a neck and re-orders the
body into OpenPose order, giving 134 keypoints per person (P people, K = 134):

  body        0-17    OpenPose-18 (0 nose, 1 neck, 2-4 right arm, 5-7 left arm, 8-10 right leg,
                      11-13 left leg, 14-17 eyes and ears)
  feet       18-23    (kept, never drawn)
  face       24-91    68 landmarks
  left hand  92-112   21 points
  right hand 113-133  21 points

Coordinates are normalised by the size of the image they were detected on: (x / width, y / height).
Scores are the DWPose SimCC confidences (the neck score is 1 when both shoulders score > 0.3, else 0).
Arrays are float64, as in the reference tools, so that drawing from a JSON round trip is bit-exact.
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

NUM_KEYPOINTS = 134
BODY = slice(0, 18)
FEET = slice(18, 24)
FACE = slice(24, 92)
LEFT_HAND = slice(92, 113)
RIGHT_HAND = slice(113, 134)
PARTS = (('body', BODY), ('feet', FEET), ('face', FACE), ('left_hand', LEFT_HAND),
         ('right_hand', RIGHT_HAND))


@dataclasses.dataclass(frozen=True)
class Pose:
  """The people found in one image.

  Attributes:
    keypoints: float64 [P, 134, 2], (x / width, y / height).
    scores: float64 [P, 134].
    width: width in pixels of the image the keypoints were detected on.
    height: its height in pixels.
  """
  keypoints: np.ndarray
  scores: np.ndarray
  width: int
  height: int

  def __post_init__(self):
    keypoints = np.asarray(self.keypoints, np.float64).reshape(-1, NUM_KEYPOINTS, 2)
    scores = np.asarray(self.scores, np.float64)
    if scores.shape != keypoints.shape[:2]:
      raise ValueError(f'scores have shape {scores.shape}, expected {keypoints.shape[:2]} '
                       f'to match keypoints {keypoints.shape}')
    if self.width <= 0 or self.height <= 0:
      raise ValueError(f'image size {self.width}x{self.height} must be positive')
    object.__setattr__(self, 'keypoints', keypoints)
    object.__setattr__(self, 'scores', scores)

  @classmethod
  def empty(cls, width: int, height: int) -> 'Pose':
    """A pose with no people (an empty skeleton)."""
    return cls(np.zeros((0, NUM_KEYPOINTS, 2)), np.zeros((0, NUM_KEYPOINTS)), width, height)

  @property
  def num_people(self) -> int:
    return self.keypoints.shape[0]

  def transformed(self, a: Sequence[float], b: Sequence[float]) -> 'Pose':
    """Applies `(x, y) -> (a_x x + b_x, a_y y + b_y)` to every keypoint; scores are kept."""
    return dataclasses.replace(self, keypoints=self.keypoints * np.asarray(a, np.float64)
                               + np.asarray(b, np.float64))

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready form: one entry per person with `<part>` [[x, y], ...] and `<part>_scores`."""
    people = []
    for keypoints, scores in zip(self.keypoints, self.scores):
      person = {}
      for name, part in PARTS:
        person[name] = keypoints[part].tolist()
        person[f'{name}_scores'] = scores[part].tolist()
      people.append(person)
    return {'width': self.width, 'height': self.height, 'people': people}

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> 'Pose':
    """Inverse of `to_dict` (exact: JSON keeps every float64 digit)."""
    width, height = int(data['width']), int(data['height'])
    people = data['people']
    if not people:
      return cls.empty(width, height)
    keypoints = np.zeros((len(people), NUM_KEYPOINTS, 2))
    scores = np.zeros((len(people), NUM_KEYPOINTS))
    for n, person in enumerate(people):
      for name, part in PARTS:
        size = part.stop - part.start
        points = np.asarray(person[name], np.float64)
        if points.shape != (size, 2):
          raise ValueError(f'person {n} {name} has shape {points.shape}, expected {(size, 2)}')
        keypoints[n, part] = points
        scores[n, part] = np.asarray(person[f'{name}_scores'], np.float64)
    return cls(keypoints, scores, width, height)
