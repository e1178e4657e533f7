"""Alignment of driving skeletons to the reference body on known transforms."""

import numpy as np
import pytest

from sa_jax.prep.align import REFERENCE_JOINTS, Alignment, fit_alignment
from sa_jax.prep.keypoints import NUM_KEYPOINTS, Pose


def _person(rng, scores=0.9) -> tuple[np.ndarray, np.ndarray]:
  return rng.uniform(0.1, 0.9, (1, NUM_KEYPOINTS, 2)), np.full((1, NUM_KEYPOINTS), scores)


def _frame(keypoints, width=64, height=64, people=1) -> Pose:
  keypoints = np.concatenate([keypoints] * people)
  return Pose(keypoints, np.full(keypoints.shape[:2], 0.9), width, height)


def test_recovers_a_known_scale_and_offset():
  rng = np.random.default_rng(0)
  keypoints, scores = _person(rng)
  reference = Pose(keypoints, scores, 64, 64)
  a, b = np.array([1.3, 1.3]), np.array([0.05, -0.1])
  frames = [_frame((keypoints - b) / a)] * 3
  alignment = fit_alignment(reference, frames)
  np.testing.assert_allclose(alignment.a, a, rtol=1e-12)
  np.testing.assert_allclose(alignment.b, b, atol=1e-12)
  assert alignment.joints == REFERENCE_JOINTS and alignment.frames == (0, 1, 2)
  aligned = alignment.apply(frames[0])  # body, face and hands alike
  np.testing.assert_allclose(aligned.keypoints, keypoints, atol=1e-12)
  np.testing.assert_array_equal(aligned.scores, frames[0].scores)


def test_least_squares_over_frames_and_mean_x_offset():
  rng = np.random.default_rng(1)
  keypoints, scores = _person(rng)
  reference = Pose(keypoints, scores, 64, 64)
  frames = [_frame(_person(rng)[0]) for _ in range(4)]
  alignment = fit_alignment(reference, frames)
  joints = list(REFERENCE_JOINTS)
  y = np.concatenate([f.keypoints[0, joints, 1] for f in frames])
  x = np.concatenate([f.keypoints[0, joints, 0] for f in frames])
  y_ref = np.tile(keypoints[0, joints, 1], 4)
  x_ref = np.tile(keypoints[0, joints, 0], 4)
  a_y = np.sum((y - y.mean()) * (y_ref - y_ref.mean())) / np.sum((y - y.mean()) ** 2)
  b_y = y_ref.mean() - a_y * y.mean()
  np.testing.assert_allclose(alignment.a, [a_y, a_y], rtol=1e-10)
  np.testing.assert_allclose(alignment.b, [np.mean(x_ref - a_y * x), b_y], rtol=1e-10, atol=1e-12)


def test_uses_only_visible_reference_joints_and_single_person_frames():
  rng = np.random.default_rng(2)
  keypoints, scores = _person(rng)
  scores[0, [2, 16, 3]] = (0.3, 0.1, 0.0)  # joints 2, 16 drop out (3 is never an alignment joint)
  reference = Pose(keypoints, scores, 64, 64)
  a, b = np.array([0.8, 0.8]), np.array([0.1, 0.2])
  driving = (keypoints - b) / a
  crowd = _frame(rng.uniform(size=(1, NUM_KEYPOINTS, 2)), people=2)
  frames = [Pose.empty(64, 64), _frame(driving), crowd, _frame(driving)]
  frames[1].keypoints[0, [2, 16]] = 5.0  # far off, but not fitted: the reference does not show them
  alignment = fit_alignment(reference, frames)
  assert alignment.joints == tuple(j for j in REFERENCE_JOINTS if j not in (2, 16))
  assert alignment.frames == (1, 3)
  np.testing.assert_allclose(alignment.a, a, rtol=1e-12)
  np.testing.assert_allclose(alignment.b, b, atol=1e-12)


def test_aspect_correct_keeps_one_pixel_scale():
  rng = np.random.default_rng(3)
  ref_w, ref_h, frame_w, frame_h = 48, 64, 96, 54
  frame_pixels = rng.uniform(5, 50, (1, NUM_KEYPOINTS, 2))
  scale, shift = 0.7, np.array([3.0, 6.0])
  reference = Pose((frame_pixels * scale + shift) / (ref_w, ref_h), np.full((1, NUM_KEYPOINTS), 0.9),
                   ref_w, ref_h)
  frames = [_frame(frame_pixels / (frame_w, frame_h), frame_w, frame_h)]
  corrected = fit_alignment(reference, frames, aspect_correct=True)
  np.testing.assert_allclose(corrected.a, [scale * frame_w / ref_w, scale * frame_h / ref_h], rtol=1e-10)
  np.testing.assert_allclose(corrected.b, shift / (ref_w, ref_h), atol=1e-10)
  as_reference = fit_alignment(reference, frames)
  assert as_reference.a[0] == as_reference.a[1]  # the reference tools' a_x = a_y
  assert as_reference.a[1] == pytest.approx(corrected.a[1])


def test_json_round_trip():
  alignment = Alignment(a=(1.25, 1.25), b=(0.1, -0.2), joints=(0, 1), frames=(0, 2), aspect_correct=True)
  assert Alignment.from_dict(alignment.to_dict()) == alignment


def test_errors_name_the_problem():
  rng = np.random.default_rng(4)
  keypoints, scores = _person(rng)
  frames = [_frame(keypoints)]
  with pytest.raises(ValueError, match='no person detected in the reference'):
    fit_alignment(Pose.empty(64, 64), frames)
  with pytest.raises(ValueError, match='shows 1 of the alignment joints'):
    fit_alignment(Pose(keypoints, np.where(np.arange(NUM_KEYPOINTS) == 0, 0.9, 0.0)[None], 64, 64),
                  frames)
  with pytest.raises(ValueError, match='none of the 2 driving frames has exactly one person'):
    fit_alignment(Pose(keypoints, scores, 64, 64), [Pose.empty(64, 64), _frame(keypoints, people=2)])
