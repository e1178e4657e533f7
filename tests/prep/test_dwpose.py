"""DWPose pre/post-processing, and the estimator on the synthetic detector and pose model."""

import numpy as np
import pytest

from sa_jax.prep import dwpose
from tests.prep import synthetic_models
from tests.prep.conftest import GREY


@pytest.fixture(scope='module')
def estimator(inputs):
  return dwpose.PoseEstimator(inputs.dwpose_dir / 'yolox_l.onnx',
                              inputs.dwpose_dir / 'dw-ll_ucoco_384.onnx', ['CPUExecutionProvider'])


def test_letterbox_is_top_left_with_fill_114():
  image = np.random.default_rng(0).integers(0, 255, (64, 48, 3), np.uint8)
  blob, ratio = dwpose.letterbox(image, (640, 640))
  assert blob.shape == (1, 3, 640, 640) and blob.dtype == np.float32 and ratio == 10
  assert (blob[0, :, :, 480:] == 114).all()
  assert blob[0, :, :640, :480].std() > 10  # the resized image


def test_decode_yolox_grid_and_strides():
  predictions = np.zeros((8400, 85), np.float32)
  predictions[0] = 0  # stride 8, cell (0, 0): centre (0, 0), size 8 x 8
  predictions[80 * 80 + 3, :4] = (0.5, 0.25, np.log(2), 0)  # stride 16, cell (3, 0)
  predictions[80 * 80 + 3, 4:6] = (0.5, 0.8)
  boxes, scores = dwpose.decode_yolox(predictions, (640, 640))
  np.testing.assert_allclose(boxes[0], (-4, -4, 4, 4))
  np.testing.assert_allclose(boxes[80 * 80 + 3], (56 - 16, 4 - 8, 56 + 16, 4 + 8), rtol=1e-6)
  assert scores.shape == (8400, 80) and scores[80 * 80 + 3, 0] == np.float32(0.5) * np.float32(0.8)
  with pytest.raises(ValueError, match='detector output has 10 rows, expected 8400'):
    dwpose.decode_yolox(predictions[:10], (640, 640))


def test_nms_keeps_the_best_of_overlapping_boxes():
  boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 12]], np.float32)
  scores = np.array([0.5, 0.9, 0.7, 0.3], np.float32)
  assert dwpose.nms(boxes, scores, 0.45) == [1, 2]


def test_crop_matrix_maps_the_box_onto_the_input():
  center, scale = dwpose._box_to_center_scale(np.array([12.0, 4.0, 52.0, 60.0]), 288 / 384)
  np.testing.assert_allclose(center, (32, 32))
  np.testing.assert_allclose(scale, (70 * 0.75, 70))  # 1.25 padding, widened to w / h = 0.75
  matrix = dwpose.crop_matrix(center, scale, (288, 384))
  np.testing.assert_allclose(matrix @ [32, 32, 1], (144, 192), atol=1e-4)
  np.testing.assert_allclose(matrix @ [32 - scale[0] / 2, 32 - scale[1] / 2, 1], (0, 0), atol=1e-4)


def test_simcc_maximum():
  simcc_x = np.zeros((3, 8), np.float32)
  simcc_y = np.zeros((3, 6), np.float32)
  simcc_x[0, 5], simcc_y[0, 2] = 0.9, 0.7
  simcc_x[1, 1], simcc_y[1, 4] = 0.4, 0.6
  locations, scores = dwpose.simcc_maximum(simcc_x, simcc_y)
  np.testing.assert_array_equal(locations, [[5, 2], [1, 4], [-1, -1]])
  np.testing.assert_array_equal(scores, np.float32([0.7, 0.4, 0.0]))


def test_to_openpose_inserts_the_neck_and_reorders():
  keypoints = np.arange(133 * 2, dtype=np.float64).reshape(1, 133, 2)
  scores = np.full((1, 133), 0.9, np.float32)
  scores[0, 5] = 0.25  # a shoulder at <= 0.3 hides the neck
  points, conf = dwpose.to_openpose(keypoints, scores)
  assert points.shape == (1, 134, 2) and conf.shape == (1, 134)
  np.testing.assert_array_equal(points[0, 1], (keypoints[0, 5] + keypoints[0, 6]) / 2)
  assert conf[0, 1] == 0
  for openpose, coco in ((0, 0), (2, 6), (5, 5), (8, 12), (11, 11), (14, 2), (17, 3)):
    np.testing.assert_array_equal(points[0, openpose], keypoints[0, coco])
  np.testing.assert_array_equal(points[0, 18:], keypoints[0, 17:])  # feet, face, hands shift by one


def test_estimator_on_synthetic_models(estimator):
  image = np.full((64, 64, 3), GREY, np.uint8)
  np.testing.assert_allclose(dwpose.detect_people(estimator.detector, image), [[12, 4, 52, 60]])
  pose = estimator(image)
  assert pose.num_people == 1 and (pose.width, pose.height) == (64, 64)
  # box (12, 4, 52, 60): centre (32, 32), scale (52.5, 70) over the 288 x 384 input
  bins = np.round(2 * synthetic_models.POSE_POINTS) / 2  # SimCC resolution: half a pixel
  coco = bins / (288, 384) * (52.5, 70) + 32 - np.array([52.5, 70]) / 2
  points, scores = dwpose.to_openpose(coco[None], synthetic_models.POSE_SCORES[None].astype(np.float32))
  np.testing.assert_allclose(pose.keypoints, points / 64, atol=1e-12)
  np.testing.assert_allclose(pose.scores, scores, atol=1e-7)


def test_no_person_gives_an_empty_pose_or_the_whole_image(estimator, inputs):
  black = np.zeros((64, 64, 3), np.uint8)
  assert estimator(black).num_people == 0
  fallback = dwpose.PoseEstimator(inputs.dwpose_dir / 'yolox_l.onnx',
                                  inputs.dwpose_dir / 'dw-ll_ucoco_384.onnx',
                                  ['CPUExecutionProvider'], whole_image_fallback=True)
  assert fallback(black).num_people == 1


def test_rejects_bad_images(estimator):
  with pytest.raises(ValueError, match=r'expected uint8 \[H, W, 3\]'):
    estimator(np.zeros((64, 64), np.uint8))


@pytest.mark.parametrize('content', [b'', b'\x00not a model\xff' * 8])
def test_unreadable_model_is_one_line_naming_it(inputs, tmp_path, content):
  (tmp_path / 'yolox_l.onnx').write_bytes(content)
  with pytest.raises(ValueError, match=r'^.*yolox_l.onnx: not a readable ONNX model \(\w+: ') as err:
    dwpose.PoseEstimator(tmp_path / 'yolox_l.onnx', inputs.dwpose_dir / 'dw-ll_ucoco_384.onnx',
                         ['CPUExecutionProvider'])
  assert '\n' not in str(err.value)
