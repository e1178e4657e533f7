"""sa_jax.eval.pose: the comparison on given keypoints, and the driving keypoints of a real sa-prep folder
(synthetic DWPose models) against the joints its skeleton images show."""

import cv2
import numpy as np
import onnx
import pytest
from PIL import Image

from sa_jax.eval import pose
from sa_jax.prep import pipeline, skeleton
from sa_jax.prep.dwpose import PoseEstimator
from sa_jax.prep.keypoints import BODY, NUM_KEYPOINTS, Pose
from tests.prep import synthetic_models
from tests.prep.conftest import BLACK, GREY, RED

pytestmark = pytest.mark.filterwarnings('ignore:`estimate` is deprecated:FutureWarning')

WIDTH, HEIGHT = 200, 100
SHIFT = np.array([3.0, 4.0])     # a 5 pixel shift
# Pixels go through x / W * W in float64: distances are exact to ~1e-13 px.
PIXEL_ATOL = 1e-9


def _pose(bodies, scores=0.9, width=WIDTH, height=HEIGHT) -> Pose:
  """A Pose from body keypoints in pixels `[P, 18, 2]` and scores (`[P, 18]` or one value)."""
  bodies = np.asarray(bodies, np.float64).reshape(-1, 18, 2)
  keypoints = np.zeros((len(bodies), NUM_KEYPOINTS, 2))
  keypoints[:, BODY] = bodies / (width, height)
  all_scores = np.zeros((len(bodies), NUM_KEYPOINTS))
  all_scores[:, BODY] = np.broadcast_to(scores, bodies.shape[:2])
  return Pose(keypoints, all_scores, width, height)


@pytest.fixture(scope='module')
def body():
  """One person's 18 keypoints in pixels, inside the frame; its box side (max of width and height)."""
  points = np.random.default_rng(0).uniform((20, 10), (180, 90), (18, 2))
  return points, np.max(points.max(0) - points.min(0))


def test_identical_keypoints_have_no_error(body):
  points, _ = body
  result = pose.pose_error([_pose(points)], [_pose(points)], WIDTH, HEIGHT)
  assert result.error[0] == pytest.approx(0, abs=PIXEL_ATOL)
  assert result.pck[0] == result.pck_bbox[0] == 1 and result.compared[0] == 18
  assert (result.no_driving, result.no_person, result.no_common) == (0, 0, 0)


def test_known_shift(body):
  points, side = body
  driving, generated = [_pose(points)], [_pose(points + SHIFT)]
  result = pose.pose_error(driving, generated, WIDTH, HEIGHT)
  assert result.error[0] == pytest.approx(5, abs=PIXEL_ATOL) and result.mean_error == result.error[0]
  # thresholds alpha * max(W, H) = alpha * 200 of 5.5 and 4.5 px, and alpha * side of the same
  assert pose.pose_error(driving, generated, WIDTH, HEIGHT, alpha=5.5 / 200).pck[0] == 1
  assert pose.pose_error(driving, generated, WIDTH, HEIGHT, alpha=4.5 / 200).pck[0] == 0
  assert pose.pose_error(driving, generated, WIDTH, HEIGHT, alpha=5.5 / side).pck_bbox[0] == 1
  assert pose.pose_error(driving, generated, WIDTH, HEIGHT, alpha=4.5 / side).pck_bbox[0] == 0


def test_invisible_keypoints_are_excluded(body):
  points, _ = body
  driving_scores, generated_scores = np.full(18, 0.9), np.full(18, 0.9)
  moved = points + SHIFT
  moved[3] += 100
  generated_scores[3] = pose.VISIBLE           # exactly 0.3: not drawn, not compared
  moved[5] -= 100
  driving_scores[5] = 0.2
  result = pose.pose_error([_pose(points, driving_scores)], [_pose(moved, generated_scores)], WIDTH, HEIGHT)
  assert result.error[0] == pytest.approx(5, abs=PIXEL_ATOL)
  assert result.compared[0] == 16 and result.driving_visible[0] == 17


def test_frames_without_people_or_common_keypoints_are_counted(body):
  points, _ = body
  upper, lower = np.full(18, 0.9), np.full(18, 0.9)
  upper[9:], lower[:9] = 0, 0
  driving = [_pose(points), _pose(points), Pose.empty(WIDTH, HEIGHT), _pose(points), _pose(points, upper)]
  generated = [_pose(points + SHIFT), _pose(points), _pose(points), Pose.empty(WIDTH, HEIGHT),
               _pose(points, lower)]
  result = pose.pose_error(driving, generated, WIDTH, HEIGHT)
  assert (result.no_driving, result.no_person, result.no_common) == (1, 1, 1)
  assert np.isnan(result.error[2:]).all() and np.isnan(result.pck[2:]).all()
  np.testing.assert_array_equal(result.compared, [18, 18, 0, 0, 0])
  assert result.mean_error == pytest.approx(2.5, abs=PIXEL_ATOL)   # (5 + 0) / 2, the others left out
  assert result.mean_pck == 1
  nothing = pose.pose_error(driving[2:4], generated[2:4], WIDTH, HEIGHT)
  assert np.isnan(nothing.mean_error) and np.isnan(nothing.mean_pck)


def test_people_are_matched_one_to_one(body):
  points, _ = body
  other = points[::-1].copy()                  # another person, other places
  result = pose.pose_error([_pose([points, other])], [_pose([other + SHIFT, points])], WIDTH, HEIGHT)
  assert result.error[0] == pytest.approx(2.5, abs=PIXEL_ATOL)        # 18 keypoints at 0, 18 at 5
  assert result.compared[0] == 36
  single = pose.pose_error([_pose([points, other])], [_pose(other + SHIFT)], WIDTH, HEIGHT)
  assert single.error[0] == pytest.approx(5, abs=PIXEL_ATOL)
  assert single.compared[0] == 18 and single.driving_visible[0] == 36


def test_rejects_mismatched_inputs(body):
  with pytest.raises(ValueError, match='2 driving poses but 1 generated frames'):
    pose.pose_error([_pose(body[0])] * 2, [_pose(body[0])], WIDTH, HEIGHT)


# ----------------------------------------------------------------------------- a real sa-prep folder

# The reference's short side is 1080, half the 2160 drawing canvas, so the joint discs (radius 4 on the
# canvas) keep pure-colour pixels after the 2x bilinear reduction. The frames are square (no letterbox
# padding, which the synthetic detector would take for a person in a black frame) and wider than the
# reference, so the alignment moves x (by about +180 px here).
REFERENCE_SIZE, FRAME_SIZE = (1080, 1440), (1440, 1440)     # (w, h)
FRAME_COLOURS = (GREY, BLACK, GREY)                           # person, none, person


@pytest.fixture(scope='module')
def clip(tmp_path_factory):
  root = tmp_path_factory.mktemp('pose_clip')
  dwpose_dir = root / 'DWPose'
  antelope = root / 'insightface' / 'models' / 'antelopev2'
  dwpose_dir.mkdir()
  antelope.mkdir(parents=True)
  onnx.save(synthetic_models.yolox_detector(), dwpose_dir / 'yolox_l.onnx')
  onnx.save(synthetic_models.simcc_pose_model(), dwpose_dir / 'dw-ll_ucoco_384.onnx')
  onnx.save(synthetic_models.scrfd_detector(), antelope / 'scrfd_10g_bnkps.onnx')
  onnx.save(synthetic_models.arcface_recogniser(), antelope / 'glintr100.onnx')
  Image.fromarray(np.full(REFERENCE_SIZE[::-1] + (3,), RED, np.uint8)).save(root / 'reference.png')
  (root / 'frames').mkdir()
  for i, colour in enumerate(FRAME_COLOURS):
    Image.fromarray(np.full(FRAME_SIZE[::-1] + (3,), colour, np.uint8)).save(root / 'frames' / f'frame_{i}.png')
  out = pipeline.prepare(root / 'case', reference=root / 'reference.png', frame_dir=root / 'frames',
                         dwpose_dir=dwpose_dir, insightface_root=root / 'insightface',
                         config=pipeline.PrepConfig(width=64, height=96), providers=['CPUExecutionProvider'])
  estimator = PoseEstimator(dwpose_dir / 'yolox_l.onnx', dwpose_dir / 'dw-ll_ucoco_384.onnx',
                            ['CPUExecutionProvider'])
  return out, estimator


def test_driving_keypoints_are_the_drawn_joints(clip):
  out, _ = clip
  width, height = REFERENCE_SIZE     # the generation size: sa-animate's resize of the poses is then the identity
  points, scores = pose.body_pixels(pose.read_driving_poses(out / 'keypoints.json')[0], width, height)
  unaligned = pose.body_pixels(pose.read_driving_poses(out / 'keypoints.json', align=False)[0], width, height)[0]
  assert np.abs(points - unaligned)[0, scores[0] > pose.VISIBLE, 0].min() > 50     # the alignment matters here
  with Image.open(out / 'poses' / 'frame_0.png') as image:
    drawn = np.array(image)
  assert drawn.shape == (height, width, 3)
  found = 0
  for joint, colour in enumerate(skeleton.BODY_COLORS):
    if scores[0, joint] <= pose.VISIBLE:
      continue
    ys, xs = np.nonzero((drawn == [int(c * scores[0, joint]) for c in colour]).all(-1))
    if xs.size == 0:         # a wrist, covered by the hand drawn over it
      continue
    found += 1
    # Joint j is a disc around canvas pixel c = int(2 x) (canvas = 2 x the image); each output pixel
    # averages 2 x 2 canvas pixels, so the pure ones centre on c / 2 - 0.5 or c / 2, while x lies in
    # [c / 2, c / 2 + 0.5): x minus the centroid lies in [0, 1) on each axis.
    offset = points[0, joint] - (xs.mean(), ys.mean())
    assert (offset >= 0).all() and (offset < 1).all(), (joint, offset)
  assert found >= 14       # 17 visible joints; only wrists may be hidden


def test_dwpose_on_frames_showing_the_driving_pose(clip):
  out, estimator = clip
  driving = pose.read_driving_poses(out / 'keypoints.json', align=False)
  # Generated frames at half the driving size: the driving frame 0, the black frame 1, a black frame 2.
  size = (FRAME_SIZE[0] // 2, FRAME_SIZE[1] // 2)
  with Image.open(out / 'images' / 'frame_0.png') as image:
    shown = cv2.resize(np.array(image), size, interpolation=cv2.INTER_AREA)
  frames = np.stack([shown, np.zeros_like(shown), np.zeros_like(shown)])
  result = pose.clip_pose_error(estimator, frames, driving)
  # The synthetic detector's box is fixed in letterbox pixels, so it scales with the frame: keypoints agree
  # up to float32 box rounding (~6e-8 relative of 720 px).
  assert result.error[0] < 1e-3 and result.pck[0] == 1 and result.compared[0] == 17
  assert (result.no_driving, result.no_person, result.no_common) == (1, 1, 0)
  with pytest.raises(ValueError, match='4 generated frames but only 3 driving poses'):
    pose.clip_pose_error(estimator, np.concatenate([frames, frames[:1]]), driving)
