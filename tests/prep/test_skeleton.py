"""Skeleton drawing against hand-made keypoints: exact pixel colours at joints and along limbs."""

import numpy as np
import pytest

from sa_jax.prep import skeleton
from sa_jax.prep.keypoints import FACE, LEFT_HAND, NUM_KEYPOINTS, RIGHT_HAND, Pose

SIZE = 200  # canvas short side = image size: no resize, so the output is the canvas itself


def _pose(points: dict[int, tuple[float, float, float]]) -> Pose:
  """One person; `points` maps keypoint index -> (x, y, score) in normalised coordinates."""
  keypoints = np.zeros((1, NUM_KEYPOINTS, 2))
  scores = np.zeros((1, NUM_KEYPOINTS))
  for k, (x, y, s) in points.items():
    keypoints[0, k] = (x, y)
    scores[0, k] = s
  return Pose(keypoints, scores, SIZE, SIZE)


def _draw(pose: Pose) -> np.ndarray:
  return skeleton.draw_pose(pose, SIZE, SIZE, short_side=SIZE)


def test_joints_have_their_colour_times_score():
  image = _draw(_pose({0: (0.5, 0.2, 1.0), 4: (0.25, 0.75, 0.5), 7: (0.9, 0.9, 0.3)}))
  np.testing.assert_array_equal(image[40, 100], (255, 0, 0))  # nose, colour 0, score 1
  np.testing.assert_array_equal(image[150, 50], (85, 127, 0))  # right wrist, (170, 255, 0) x 0.5
  assert not image[180, 180].any()  # score 0.3 is not > 0.3: not drawn
  np.testing.assert_array_equal(image[40, 104], (255, 0, 0))  # radius 4
  assert not image[40, 106].any()


def test_limbs_are_dimmed_ellipses_under_the_joints():
  # neck (100, 60) -- right shoulder (60, 60): limb 0, red x 0.9 x 0.8, then the canvas x 0.6
  image = _draw(_pose({1: (0.5, 0.3, 0.9), 2: (0.3, 0.3, 0.8)}))
  limb = int(int(255 * (0.9 * 0.8)) * 0.6)
  for column in (72, 80, 88):
    np.testing.assert_array_equal(image[60, column], (limb, 0, 0))
  np.testing.assert_array_equal(image[63, 80], (limb, 0, 0))  # half-width 4
  assert not image[66, 80].any()
  np.testing.assert_array_equal(image[60, 100], (int(255 * 0.9), int(85 * 0.9), 0))  # neck joint on top
  np.testing.assert_array_equal(image[60, 60], (int(255 * 0.8), int(170 * 0.8), 0))  # colour 2 x 0.8


def test_limbs_need_both_scores_of_at_least_0_3():
  image = _draw(_pose({1: (0.5, 0.3, 0.9), 2: (0.3, 0.3, 0.29), 5: (0.7, 0.3, 0.3)}))
  assert not image[60, 80].any()  # neck -- right shoulder: 0.29 < 0.3
  limb = (int(int(255 * (0.9 * 0.3)) * 0.6), int(int(85 * (0.9 * 0.3)) * 0.6), 0)
  np.testing.assert_array_equal(image[60, 120], limb)  # neck -- left shoulder: 0.3 makes a limb
  np.testing.assert_array_equal(image[60, 140], limb)  # ... but no joint (needs > 0.3) on its end


def test_vertical_limb_angle():
  # right hip (60, 100) -- right knee (60, 160): limb 7 (colour (0, 255, 85)), along the y axis
  image = _draw(_pose({8: (0.3, 0.5, 1.0), 9: (0.3, 0.8, 1.0)}))
  limb = (0, int(255 * 0.6), int(85 * 0.6))
  for row in (110, 130, 150):
    np.testing.assert_array_equal(image[row, 60], limb)
  np.testing.assert_array_equal(image[130, 63], limb)
  assert not image[130, 66].any()


def test_hands_edges_and_points():
  start = LEFT_HAND.start
  # wrist (40, 160) score 1, thumb base (80, 160) score 0.5, index base (40, 120) score 1; the other
  # points are at (0, 0) and are skipped with their edges.
  image = _draw(_pose({start: (0.2, 0.8, 1.0), start + 1: (0.4, 0.8, 0.5),
                       start + 5: (0.2, 0.6, 1.0)}))
  np.testing.assert_array_equal(image[160, 60], (127, 0, 0))  # edge 0: hsv(0) x int(0.5 * 255)
  np.testing.assert_array_equal(image[140, 40], (204, 255, 0))  # edge 4: hsv(0.2) x 255, rounded
  np.testing.assert_array_equal(image[160, 40], (0, 0, 255))  # points are (0, 0, score) in RGB
  np.testing.assert_array_equal(image[160, 80], (0, 0, 127))
  assert not image[:3, :3].any()
  assert not image[100, 20].any()  # no edge towards the (0, 0) points


def test_right_hand_and_face_points():
  image = _draw(_pose({RIGHT_HAND.start + 4: (0.5, 0.5, 0.8), FACE.start: (0.7, 0.1, 0.6),
                       FACE.start + 1: (0.0, 0.5, 1.0)}))
  np.testing.assert_array_equal(image[100, 100], (0, 0, int(0.8 * 255)))
  np.testing.assert_array_equal(image[20, 140], (153, 153, 153))  # grey, radius 3
  np.testing.assert_array_equal(image[20, 143], (153, 153, 153))
  assert not image[20, 145].any()
  assert not image[100, :4].any()  # x = 0 is skipped


def test_faces_are_drawn_over_hands_over_bodies():
  image = _draw(_pose({0: (0.5, 0.5, 1.0), LEFT_HAND.start: (0.5, 0.5, 1.0),
                       FACE.start: (0.5, 0.5, 1.0)}))
  np.testing.assert_array_equal(image[100, 100], (255, 255, 255))
  np.testing.assert_array_equal(image[100, 96], (0, 0, 255))  # hand point (radius 4) beyond the face dot


def test_several_people_and_empty_pose():
  two = Pose(np.concatenate([_pose({0: (0.2, 0.2, 1.0)}).keypoints,
                             _pose({0: (0.8, 0.8, 1.0)}).keypoints]),
             np.concatenate([_pose({0: (0.2, 0.2, 1.0)}).scores] * 2), SIZE, SIZE)
  image = _draw(two)
  np.testing.assert_array_equal(image[40, 40], (255, 0, 0))
  np.testing.assert_array_equal(image[160, 160], (255, 0, 0))
  assert not _draw(Pose.empty(SIZE, SIZE)).any()


@pytest.mark.parametrize('height, width, expected', [
    (512, 512, (2160, 2160)), (64, 48, (2880, 2160)), (1024, 576, (3840, 2160)),
    (2160, 4000, (2160, 4000))])
def test_canvas_size(height, width, expected):
  assert skeleton.canvas_size(height, width) == expected


def test_output_is_the_resized_canvas():
  pose = _pose({1: (0.5, 0.3, 0.9), 2: (0.3, 0.3, 0.8), 0: (0.5, 0.2, 1.0)})
  image = skeleton.draw_pose(pose, 512, 384)
  assert image.shape == (512, 384, 3) and image.dtype == np.uint8
  assert image.any()
  np.testing.assert_array_equal(skeleton.draw_pose(pose, 2160, 2160),
                                skeleton.draw_canvas(pose, 2160, 2160))
