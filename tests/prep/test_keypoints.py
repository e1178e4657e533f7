"""The keypoint container and its exact JSON round trip."""

import json

import numpy as np
import pytest

from sa_jax.prep.keypoints import NUM_KEYPOINTS, PARTS, Pose


def test_json_round_trip_is_exact():
  rng = np.random.default_rng(0)
  pose = Pose(rng.uniform(size=(2, NUM_KEYPOINTS, 2)), rng.uniform(size=(2, NUM_KEYPOINTS)), 64, 48)
  data = json.loads(json.dumps(pose.to_dict()))
  assert set(data['people'][0]) == {k for name, _ in PARTS for k in (name, f'{name}_scores')}
  assert len(data['people'][0]['left_hand']) == 21 and len(data['people'][0]['face']) == 68
  back = Pose.from_dict(data)
  np.testing.assert_array_equal(back.keypoints, pose.keypoints)
  np.testing.assert_array_equal(back.scores, pose.scores)
  assert (back.width, back.height) == (64, 48)
  assert Pose.from_dict(Pose.empty(5, 6).to_dict()).num_people == 0


def test_transformed_and_checks():
  pose = Pose(np.ones((1, NUM_KEYPOINTS, 2)), np.ones((1, NUM_KEYPOINTS)), 4, 4)
  np.testing.assert_array_equal(pose.transformed((2, 3), (0.5, -1)).keypoints[0, 0], (2.5, 2))
  with pytest.raises(ValueError, match='scores have shape'):
    Pose(np.ones((1, NUM_KEYPOINTS, 2)), np.ones((2, NUM_KEYPOINTS)), 4, 4)
  with pytest.raises(ValueError, match='image size 0x4 must be positive'):
    Pose.empty(0, 4)
