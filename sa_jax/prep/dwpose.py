"""DWPose whole-body keypoints with onnxruntime (SPEC §6).

Mirrors StableAnimator `DWPose/dwpose_utils` (`onnxdet.py` YOLOX person detector, `onnxpose.py` RTMPose
SimCC top-down pose model, `wholebody.py` OpenPose re-ordering, `dwpose_detector.py` normalisation),
with the same pre- and post-processing, dtypes and operation order so that keypoints match the reference
tools bit for bit. Images are RGB uint8 [H, W, 3], as the reference feeds them (cv2 BGR -> RGB).

Difference (docs/prep.md): when the detector finds no person, the reference runs the pose model on the
whole image; here the frame gets no people unless `whole_image_fallback=True`.
"""

import os
from collections.abc import Sequence

import cv2
import numpy as np
import onnxruntime

from sa_jax import errors
from sa_jax.prep.keypoints import Pose

DETECTOR_SIZE = (640, 640)  # (h, w) when the ONNX input shape is symbolic
LETTERBOX_FILL = 114
STRIDES = (8, 16, 32)
NMS_IOU = 0.45
CANDIDATE_SCORE = 0.1
PERSON_SCORE = 0.3
BOX_PADDING = 1.25
PIXEL_MEAN = np.array([123.675, 116.28, 103.53])
PIXEL_STD = np.array([58.395, 57.12, 57.375])
SIMCC_SPLIT_RATIO = 2.0
VISIBLE = 0.3
# COCO-WholeBody body indices (after the neck is inserted at 17) -> OpenPose-18 positions.
MMPOSE_ORDER = (17, 6, 8, 10, 7, 9, 12, 14, 16, 13, 15, 2, 1, 4, 3)
OPENPOSE_ORDER = (1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17)


def default_providers() -> list[str]:
  """CUDA when this onnxruntime build has it, then CPU."""
  available = onnxruntime.get_available_providers()
  return [p for p in ('CUDAExecutionProvider', 'CPUExecutionProvider') if p in available]


def open_session(path: str | os.PathLike, providers: Sequence[str]) -> onnxruntime.InferenceSession:
  """An onnxruntime session of the model file at `path`; a file onnxruntime cannot load (garbage,
  truncated, empty) is a one-line ValueError naming it."""
  try:
    return onnxruntime.InferenceSession(str(path), providers=list(providers))
  except Exception as err:  # onnxruntime raises its own types (InvalidProtobuf, Fail, NoSuchFile, ...)
    cause = errors.first_line(err)
    raise ValueError(f'{path}: not a readable ONNX model ({type(err).__name__}: {cause})') from err


def _spatial_input_size(session: onnxruntime.InferenceSession, default: tuple[int, int] | None):
  """(h, w) of the session's NCHW input; `default` when the dims are symbolic."""
  shape = session.get_inputs()[0].shape
  if len(shape) != 4:
    raise ValueError(f'model input {session.get_inputs()[0].name} has shape {shape}, expected NCHW')
  h, w = shape[2:]
  if isinstance(h, int) and isinstance(w, int):
    return h, w
  if default is None:
    raise ValueError(f'pose model input shape {shape} must fix height and width')
  return default


def letterbox(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float]:
  """Top-left letterbox (bilinear resize, fill 114, no normalisation).

  Args:
    image: uint8 [H, W, 3].
    size: (h, w) of the detector input.

  Returns:
    float32 [1, 3, h, w] pixels in 0..255 and the resize ratio.
  """
  padded = np.full((size[0], size[1], 3), LETTERBOX_FILL, np.uint8)
  ratio = min(size[0] / image.shape[0], size[1] / image.shape[1])
  new_h, new_w = int(image.shape[0] * ratio), int(image.shape[1] * ratio)
  padded[:new_h, :new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
  blob = np.ascontiguousarray(padded.transpose(2, 0, 1), np.float32)  # [h, w, 3] -> [3, h, w]
  return blob[None], ratio


def decode_yolox(predictions: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
  """YOLOX grid decode (strides 8/16/32, grid cells in row-major order per stride).

  Args:
    predictions: float32 [N, 5 + C] rows (dx, dy, log w, log h, objectness, class scores).
    size: (h, w) of the detector input.

  Returns:
    boxes float32 [N, 4] (x1, y1, x2, y2) in detector-input pixels, scores float32 [N, C].
  """
  grids, strides = [], []
  for stride in STRIDES:
    xv, yv = np.meshgrid(np.arange(size[1] // stride), np.arange(size[0] // stride))
    grids.append(np.stack((xv, yv), 2).reshape(-1, 2))  # [h/s, w/s, 2] -> [h/s * w/s, 2]
    strides.append(np.full((grids[-1].shape[0], 1), stride))
  grid, stride = np.concatenate(grids), np.concatenate(strides)
  if predictions.shape[0] != grid.shape[0]:
    raise ValueError(f'detector output has {predictions.shape[0]} rows, expected {grid.shape[0]} '
                     f'for a {size[1]}x{size[0]} input with strides {STRIDES}')
  # float32 outputs, int grids: the reference computes these in float64 and stores float32.
  centre = ((predictions[:, :2] + grid) * stride).astype(np.float32)
  extent = (np.exp(predictions[:, 2:4]) * stride).astype(np.float32)
  boxes = np.empty_like(centre, shape=(centre.shape[0], 4))
  boxes[:, :2] = centre - extent / 2.
  boxes[:, 2:] = centre + extent / 2.
  return boxes, predictions[:, 4:5] * predictions[:, 5:]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
  """Greedy single-class NMS with the +1 pixel area convention; indices by descending score."""
  x1, y1, x2, y2 = boxes.T
  areas = (x2 - x1 + 1) * (y2 - y1 + 1)
  order = scores.argsort()[::-1]
  keep = []
  while order.size > 0:
    i, rest = order[0], order[1:]
    keep.append(int(i))
    inter_w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
    inter_h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
    inter = inter_w * inter_h
    overlap = inter / (areas[i] + areas[rest] - inter)
    order = rest[overlap <= iou_threshold]
  return keep


def detect_people(session: onnxruntime.InferenceSession, image: np.ndarray) -> np.ndarray:
  """Person boxes: class-0 candidates > 0.1, NMS IoU 0.45, kept if score > 0.3.

  Only class 0 is decoded: the reference's class-aware NMS treats classes independently, so the other
  79 classes never change the person boxes.

  Args:
    image: RGB uint8 [H, W, 3].

  Returns:
    float64 [P, 4] boxes (x1, y1, x2, y2) in image pixels, by descending score.
  """
  size = _spatial_input_size(session, DETECTOR_SIZE)
  blob, ratio = letterbox(image, size)
  output = session.run(None, {session.get_inputs()[0].name: blob})[0]
  if output.ndim != 3 or output.shape[0] != 1 or output.shape[2] < 6:
    raise ValueError(f'detector output has shape {output.shape}, expected [1, N, 5 + classes]')
  boxes, scores = decode_yolox(np.asarray(output[0], np.float32), size)
  boxes /= ratio
  person = scores[:, 0]
  candidates = person > CANDIDATE_SCORE
  boxes, person = boxes[candidates], person[candidates]
  keep = nms(boxes, person, NMS_IOU)
  boxes, person = boxes[keep], person[keep]
  return boxes[person > PERSON_SCORE].astype(np.float64)


def _box_to_center_scale(box: np.ndarray, aspect: float) -> tuple[np.ndarray, np.ndarray]:
  """Centre and padded scale (w, h) of a box, widened to the model aspect ratio w / h."""
  x1, y1, x2, y2 = box
  center = np.array([x1 + x2, y1 + y2]) * 0.5
  w, h = np.array([x2 - x1, y2 - y1]) * BOX_PADDING
  scale = np.array([w, w / aspect]) if w > h * aspect else np.array([h * aspect, h])
  return center, scale


def _third_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """`b + rot90(a - b)`: the third point that fixes an affine map from two."""
  direction = a - b
  return b + np.r_[-direction[1], direction[0]]


def crop_matrix(center: np.ndarray, scale: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """2x3 affine map from the box (centre, scale) to a (w, h) model input, no rotation."""
  w, h = size
  src = np.zeros((3, 2), np.float32)
  src[0] = center
  src[1] = center + np.array([0., scale[0] * -0.5])
  src[2] = _third_point(src[0], src[1])
  dst = np.zeros((3, 2), np.float32)
  dst[0] = [w * 0.5, h * 0.5]
  dst[1] = np.array([w * 0.5, h * 0.5]) + np.array([0., w * -0.5])
  dst[2] = _third_point(dst[0], dst[1])
  return cv2.getAffineTransform(src, dst)


def simcc_maximum(simcc_x: np.ndarray, simcc_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Argmax decode of SimCC vectors.

  Args:
    simcc_x: [K, Wx]; simcc_y: [K, Wy].

  Returns:
    float32 [K, 2] bin locations (-1 where the score <= 0), float32 [K] scores = min(max_x, max_y).
  """
  locations = np.stack((simcc_x.argmax(1), simcc_y.argmax(1)), -1).astype(np.float32)
  max_x, max_y = simcc_x.max(1), simcc_y.max(1)
  scores = np.where(max_x > max_y, max_y, max_x)
  locations[scores <= 0.] = -1
  return locations, scores


def estimate_keypoints(session: onnxruntime.InferenceSession, image: np.ndarray,
                       boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Top-down SimCC pose for each box.

  Args:
    image: RGB uint8 [H, W, 3].
    boxes: [P, 4] (x1, y1, x2, y2) image pixels.

  Returns:
    float64 [P, 133, 2] keypoints in image pixels, float32 [P, 133] scores.
  """
  h, w = _spatial_input_size(session, None)
  input_name = session.get_inputs()[0].name
  all_keypoints, all_scores = [], []
  for box in boxes:
    center, scale = _box_to_center_scale(np.asarray(box, np.float64), w / h)
    crop = cv2.warpAffine(image, crop_matrix(center, scale, (w, h)), (w, h), flags=cv2.INTER_LINEAR)
    crop = (crop - PIXEL_MEAN) / PIXEL_STD
    blob = np.ascontiguousarray(crop.transpose(2, 0, 1)[None], np.float32)  # [h, w, 3] -> [1, 3, h, w]
    outputs = session.run(None, {input_name: blob})
    if len(outputs) != 2 or outputs[0].ndim != 3 or outputs[0].shape[0] != 1:
      raise ValueError(f'pose model outputs {[o.shape for o in outputs]}, expected simcc_x [1, K, Wx] '
                       'and simcc_y [1, K, Wy]')
    locations, scores = simcc_maximum(outputs[0][0], outputs[1][0])
    locations /= SIMCC_SPLIT_RATIO
    all_keypoints.append(locations / np.array([w, h]) * scale + center - scale / 2)
    all_scores.append(scores)
  if not all_keypoints:
    return np.zeros((0, 133, 2)), np.zeros((0, 133), np.float32)
  return np.array(all_keypoints), np.array(all_scores)


def to_openpose(keypoints: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Inserts the neck (mean of the shoulders) at 17 and re-orders the body to OpenPose-18.

  Args:
    keypoints: [P, 133, 2]; scores: [P, 133].

  Returns:
    float64 [P, 134, 2], float64 [P, 134] (neck score 1 iff both shoulders > 0.3, else 0).
  """
  info = np.concatenate((keypoints, scores[..., None]), axis=-1)  # [P, 133, 3]
  neck = np.mean(info[:, [5, 6]], axis=1)
  neck[:, 2] = np.logical_and(info[:, 5, 2] > VISIBLE, info[:, 6, 2] > VISIBLE)
  info = np.insert(info, 17, neck, axis=1)  # [P, 134, 3]
  info[:, OPENPOSE_ORDER] = info[:, MMPOSE_ORDER]
  return info[..., :2], info[..., 2]


class PoseEstimator:
  """YOLOX person detector + DWPose SimCC model (`Wholebody` + `DWposeDetectorAligned`).

  Attributes:
    whole_image_fallback: when no person is detected, estimate one on the whole image (reference).
  """

  def __init__(self, detector_path: str, pose_model_path: str,
               providers: Sequence[str] | None = None, whole_image_fallback: bool = False):
    providers = list(providers) if providers else default_providers()
    self.detector = open_session(detector_path, providers)
    self.pose_model = open_session(pose_model_path, providers)
    self.whole_image_fallback = whole_image_fallback
    self._paths = f'{detector_path} and {pose_model_path}'

  def __call__(self, image: np.ndarray) -> Pose:
    """Keypoints of every person in an RGB uint8 [H, W, 3] image, normalised by (W, H)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
      raise ValueError(f'image has shape {image.shape} and dtype {image.dtype}, '
                       'expected uint8 [H, W, 3]')
    height, width = image.shape[:2]
    try:
      boxes = detect_people(self.detector, image)
      if len(boxes) == 0:
        if not self.whole_image_fallback:
          return Pose.empty(width, height)
        boxes = np.array([[0, 0, width, height]], np.float64)
      keypoints, scores = to_openpose(*estimate_keypoints(self.pose_model, image, boxes))
    except Exception as err:   # onnxruntime's own types; shape errors of a model that is not the expected one
      raise ValueError(f'the DWPose models {self._paths} failed ({type(err).__name__}: {errors.first_line(err)}); '
                       'expected the YOLOX person detector and the DWPose whole-body model') from err
    keypoints[..., 0] /= float(width)
    keypoints[..., 1] /= float(height)
    return Pose(keypoints, scores, width, height)
