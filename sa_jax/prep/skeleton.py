"""Skeleton images from whole-body keypoints (SPEC §6 "Drawing").

Mirrors `draw_pose` / `draw_bodypose` / `draw_handpose` / `draw_facepose` of StableAnimator
`DWPose/skeleton_extraction.py` (identical in `training_skeleton_extraction.py`), drawn with the same cv2
primitives, colours, widths, thresholds and integer truncations so the pixels are identical.

Colour order: the reference draws the colours below into a canvas, converts it BGR->RGB and saves the result
with `cv2.imwrite` (which swaps again), so the saved file shows the listed colours as RGB. Here the canvas
is RGB from the start and is returned as is: same file, no double swap.
"""

import colorsys
import math

import cv2
import numpy as np

from sa_jax.prep.keypoints import BODY, FACE, LEFT_HAND, RIGHT_HAND, Pose

CANVAS_SHORT_SIDE = 2160
VISIBLE = 0.3
STICK_WIDTH = 4
JOINT_RADIUS = 4
LIMB_DIM = 0.6
HAND_LINE_WIDTH = 2
HAND_POINT_RADIUS = 4
FACE_POINT_RADIUS = 3
# Points whose integer canvas coordinate is not above this are not drawn (hands and faces).
MIN_COORDINATE = 0.01
# OpenPose limbs as 0-based joint pairs (the reference's 1-based limbSeq minus 1; its last two entries,
# ear-shoulder, are never drawn).
LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
         (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))
BODY_COLORS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
               (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
               (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))
HAND_EDGES = ((0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10),
              (10, 11), (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19),
              (19, 20))


def canvas_size(height: int, width: int, short_side: int = CANVAS_SHORT_SIDE) -> tuple[int, int]:
  """(h, w) of the drawing canvas: the image scaled so its short side is `short_side`."""
  smaller = min(height, width)
  ratio = short_side / smaller if smaller != short_side else 1
  return int(height * ratio), int(width * ratio)


def _scaled(color, alpha: float) -> tuple[int, ...]:
  return tuple(int(c * alpha) for c in color)


def draw_body(canvas: np.ndarray, body: np.ndarray, scores: np.ndarray) -> np.ndarray:
  """Limbs (ellipses, colour x conf_a x conf_b), the whole canvas x 0.6, then joints (colour x conf).

  Args:
    canvas: uint8 [h, w, 3], drawn on in place for the limbs.
    body: [P, 18, 2] normalised keypoints; scores: [P, 18]. A limb needs both scores >= 0.3, a joint
      a score > 0.3.

  Returns:
    the new uint8 [h, w, 3] canvas (the 0.6 dimming makes a new array).
  """
  h, w = canvas.shape[:2]
  for limb, color in zip(LIMBS, BODY_COLORS):
    for points, conf in zip(body, scores):
      if conf[limb[0]] < VISIBLE or conf[limb[1]] < VISIBLE:
        continue
      xs = points[list(limb), 0] * float(w)
      ys = points[list(limb), 1] * float(h)
      length = ((ys[0] - ys[1]) ** 2 + (xs[0] - xs[1]) ** 2) ** 0.5
      angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
      polygon = cv2.ellipse2Poly((int(np.mean(xs)), int(np.mean(ys))), (int(length / 2), STICK_WIDTH),
                                 int(angle), 0, 360, 1)
      cv2.fillConvexPoly(canvas, polygon, _scaled(color, conf[limb[0]] * conf[limb[1]]))
  canvas = (canvas * LIMB_DIM).astype(np.uint8)
  for joint, color in enumerate(BODY_COLORS):
    for points, conf in zip(body, scores):
      if conf[joint] <= VISIBLE:
        continue
      center = (int(points[joint, 0] * w), int(points[joint, 1] * h))
      cv2.circle(canvas, center, JOINT_RADIUS, _scaled(color, conf[joint]), thickness=-1)
  return canvas


def draw_hands(canvas: np.ndarray, hands: np.ndarray, scores: np.ndarray) -> np.ndarray:
  """Hand edges (HSV rainbow x s_a x s_b, width 2) then points ((0, 0, score) in RGB), in place.

  Args:
    hands: [Q, 21, 2] normalised keypoints; scores: [Q, 21].
  """
  h, w = canvas.shape[:2]
  for points, conf in zip(hands, scores):
    pixels = [(int(x * w), int(y * h)) for x, y in points]
    for k, (a, b) in enumerate(HAND_EDGES):
      score = int(conf[a] * conf[b] * 255)
      if min(pixels[a] + pixels[b]) > MIN_COORDINATE:
        color = tuple(c * score for c in colorsys.hsv_to_rgb(k / float(len(HAND_EDGES)), 1.0, 1.0))
        cv2.line(canvas, pixels[a], pixels[b], color, thickness=HAND_LINE_WIDTH)
    for pixel, score in zip(pixels, conf):
      if min(pixel) > MIN_COORDINATE:
        cv2.circle(canvas, pixel, HAND_POINT_RADIUS, (0, 0, int(score * 255)), thickness=-1)
  return canvas


def draw_faces(canvas: np.ndarray, faces: np.ndarray, scores: np.ndarray) -> np.ndarray:
  """Face landmarks as radius-3 grey dots (score x 255), in place.

  Args:
    faces: [P, 68, 2] normalised keypoints; scores: [P, 68].
  """
  h, w = canvas.shape[:2]
  for points, conf in zip(faces, scores):
    for (x, y), score in zip(points, conf):
      pixel = (int(x * w), int(y * h))
      if min(pixel) > MIN_COORDINATE:
        grey = int(score * 255)
        cv2.circle(canvas, pixel, FACE_POINT_RADIUS, (grey, grey, grey), thickness=-1)
  return canvas


def draw_canvas(pose: Pose, height: int, width: int,
                short_side: int = CANVAS_SHORT_SIDE) -> np.ndarray:
  """The full-resolution skeleton canvas, uint8 [h, w, 3] RGB with h, w = `canvas_size(...)`.

  Body first, then hands (all left hands, then all right hands), then faces, as the reference.
  """
  canvas = np.zeros(canvas_size(height, width, short_side) + (3,), np.uint8)
  canvas = draw_body(canvas, pose.keypoints[:, BODY], pose.scores[:, BODY])
  hands = np.concatenate([pose.keypoints[:, LEFT_HAND], pose.keypoints[:, RIGHT_HAND]])
  hand_scores = np.concatenate([pose.scores[:, LEFT_HAND], pose.scores[:, RIGHT_HAND]])
  canvas = draw_hands(canvas, hands, hand_scores)
  return draw_faces(canvas, pose.keypoints[:, FACE], pose.scores[:, FACE])


def draw_pose(pose: Pose, height: int, width: int, short_side: int = CANVAS_SHORT_SIDE) -> np.ndarray:
  """Skeleton image of `pose` at (height, width): the canvas resized with cv2 bilinear.

  Args:
    pose: normalised keypoints (any source image size: only the normalised coordinates matter).
    height, width: output size in pixels.
    short_side: canvas short side before the resize (2160 in the reference).

  Returns:
    uint8 [height, width, 3] RGB.
  """
  if height <= 0 or width <= 0:
    raise ValueError(f'skeleton size {width}x{height} must be positive')
  return cv2.resize(draw_canvas(pose, height, width, short_side), (width, height))
