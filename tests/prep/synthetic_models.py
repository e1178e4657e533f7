"""Tiny ONNX stand-ins for the pre-processing models, built with `onnx.helper` (no downloads).

Each has the signature of the real model, and outputs that are constants switched on or off by a simple
image statistic, so the detections are deterministic and known:

* `yolox_detector`: input [1, 3, 640, 640] raw pixels, output [1, 8400, 85]. One person box, centre
  (320, 320), size 400 x 560 in letterbox pixels, score 0.81, when the mean pixel is above 40, none
  below 33.
* `simcc_pose_model`: input [1, 3, 384, 288], outputs simcc_x [1, 133, 576], simcc_y [1, 133, 768] with one
  peak per keypoint at `POSE_POINTS` (model-input pixels) of height `POSE_SCORES`.
* `scrfd_detector`: SCRFD with keypoints (9 outputs, strides 8/16/32, 2 anchors), input [1, 3, 640, 640].
  One face box (256, 128)-(384, 256) in detector pixels, score 0.9, when the input is red: the mean of the
  blob's channel 0 minus channel 2 is > 0.28 (insightface swaps BGR to RGB, so channel 0 is red only
  for true BGR input).
* `arcface_recogniser`: input [1, 3, 112, 112], output [1, 512] = mean colour x W + b (not normalised).
"""

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
DETECTOR_ANCHOR = 80 * 80 + 40 * 40 + 10 * 20 + 10  # stride-32 cell (10, 10): centre (320, 320)
DETECTOR_BOX = (320.0, 320.0, 400.0, 560.0)  # cx, cy, w, h in letterbox pixels
FACE_ANCHOR = (6 * 20 + 10) * 2  # stride-32 cell (10, 6), first anchor: centre (320, 192)
FACE_BOX = (256.0, 128.0, 384.0, 256.0)  # x1, y1, x2, y2 in detector pixels
POSE_SIZE = (288, 384)  # (w, h) of the pose model input


def _pose_layout() -> tuple[np.ndarray, np.ndarray]:
  """133 COCO-WholeBody points of an upright figure in model-input pixels, and their scores."""
  body = [(144, 60), (152, 52), (136, 52), (162, 56), (126, 56), (184, 110), (104, 110), (200, 170),
          (88, 170), (206, 225), (82, 225), (170, 230), (118, 230), (172, 295), (116, 295), (174, 355),
          (114, 355)]
  feet = [(180, 365), (186, 366), (172, 368), (108, 365), (102, 366), (116, 368)]
  face = [(144 + 22 * math.cos(2 * math.pi * k / 68), 58 + 26 * math.sin(2 * math.pi * k / 68))
          for k in range(68)]
  hands = []
  for wx, wy, side in ((206, 225, 1), (82, 225, -1)):
    hands.append((wx, wy))
    for finger in range(5):
      for joint in range(1, 5):
        hands.append((wx + side * (finger * 4 - 6), wy + 5 * joint))
  points = np.array(body + feet + face + hands, np.float64)
  scores = np.concatenate([np.full(17, 0.9), np.full(6, 0.5), np.full(68, 0.8), np.full(42, 0.7)])
  scores[16] = 0.2  # the right ankle is not visible
  return points, scores


POSE_POINTS, POSE_SCORES = _pose_layout()


def _const(name: str, array: np.ndarray) -> onnx.NodeProto:
  return helper.make_node('Constant', [], [name], value=numpy_helper.from_array(
      np.asarray(array, np.float32), name=f'{name}_value'))


def _model(nodes, inputs, outputs) -> onnx.ModelProto:
  graph = helper.make_graph(nodes, 'synthetic', inputs, outputs)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', OPSET)])
  model.ir_version = 8
  onnx.checker.check_model(model)
  return model


def _gate(nodes: list, signal: str, offset: float, gain: float, name: str) -> str:
  """Clip((signal - offset) * gain, 0, 1) as `name`."""
  nodes += [_const(f'{name}_offset', offset), _const(f'{name}_gain', gain), _const(f'{name}_lo', 0.0),
            _const(f'{name}_hi', 1.0),
            helper.make_node('Sub', [signal, f'{name}_offset'], [f'{name}_centred']),
            helper.make_node('Mul', [f'{name}_centred', f'{name}_gain'], [f'{name}_scaled']),
            helper.make_node('Clip', [f'{name}_scaled', f'{name}_lo', f'{name}_hi'], [name])]
  return name


def yolox_detector() -> onnx.ModelProto:
  base = np.zeros((1, 8400, 85), np.float32)
  cx, cy, w, h = DETECTOR_BOX
  base[0, DETECTOR_ANCHOR, :4] = [cx / 32 - 10, cy / 32 - 10, math.log(w / 32), math.log(h / 32)]
  base[0, DETECTOR_ANCHOR, 5] = 0.9
  objectness = np.zeros_like(base)
  objectness[0, DETECTOR_ANCHOR, 4] = 0.9
  nodes = [helper.make_node('ReduceMean', ['images'], ['mean'], keepdims=0)]
  _gate(nodes, 'mean', 30.0, 0.1, 'person')
  nodes += [_const('base', base), _const('objectness', objectness),
            helper.make_node('Mul', ['objectness', 'person'], ['gated']),
            helper.make_node('Add', ['base', 'gated'], ['output'])]
  return _model(nodes, [helper.make_tensor_value_info('images', TensorProto.FLOAT, [1, 3, 640, 640])],
                [helper.make_tensor_value_info('output', TensorProto.FLOAT, [1, 8400, 85])])


def simcc_pose_model() -> onnx.ModelProto:
  w, h = POSE_SIZE
  simcc_x = np.zeros((1, 133, 2 * w), np.float32)
  simcc_y = np.zeros((1, 133, 2 * h), np.float32)
  for k, ((x, y), score) in enumerate(zip(POSE_POINTS, POSE_SCORES)):
    simcc_x[0, k, int(round(2 * x))] = score
    simcc_y[0, k, int(round(2 * y))] = score
  nodes = [helper.make_node('ReduceMean', ['input'], ['mean'], keepdims=0), _const('zero', 0.0),
           helper.make_node('Mul', ['mean', 'zero'], ['nothing']), _const('peaks_x', simcc_x),
           _const('peaks_y', simcc_y), helper.make_node('Add', ['peaks_x', 'nothing'], ['simcc_x']),
           helper.make_node('Add', ['peaks_y', 'nothing'], ['simcc_y'])]
  return _model(nodes, [helper.make_tensor_value_info('input', TensorProto.FLOAT, [1, 3, h, w])],
                [helper.make_tensor_value_info('simcc_x', TensorProto.FLOAT, [1, 133, 2 * w]),
                 helper.make_tensor_value_info('simcc_y', TensorProto.FLOAT, [1, 133, 2 * h])])


def scrfd_detector() -> onnx.ModelProto:
  red_minus_blue = np.array([1.0, 0.0, -1.0], np.float32).reshape(1, 3, 1, 1)
  nodes = [_const('rb_weight', red_minus_blue),
           helper.make_node('Conv', ['input.1', 'rb_weight'], ['rb']),
           helper.make_node('ReduceMean', ['rb'], ['redness'], keepdims=0)]
  _gate(nodes, 'redness', 0.28, 1000.0, 'face')
  names = {'score': [], 'bbox': [], 'kps': []}
  for stride in (8, 16, 32):
    rows = (640 // stride) ** 2 * 2
    for kind, width in (('score', 1), ('bbox', 4), ('kps', 10)):
      value = np.zeros((rows, width), np.float32)
      if stride == 32 and kind == 'bbox':
        value[FACE_ANCHOR] = 2.0  # distances x 32 = 64 px from the anchor centre
      if stride == 32 and kind == 'kps':
        value[FACE_ANCHOR] = [-0.6, -0.4, 0.6, -0.4, 0.0, 0.1, -0.5, 0.6, 0.5, 0.6]
      name = f'{kind}_{stride}'
      if stride == 32 and kind == 'score':
        value[FACE_ANCHOR] = 0.9
        nodes += [_const(f'{name}_on', value), helper.make_node('Mul', [f'{name}_on', 'face'], [name])]
      else:
        nodes.append(_const(name, value))
      names[kind].append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [rows, width]))
  outputs = names['score'] + names['bbox'] + names['kps']
  return _model(nodes, [helper.make_tensor_value_info('input.1', TensorProto.FLOAT, [1, 3, 640, 640])],
                outputs)


def arcface_recogniser(seed: int = 0) -> onnx.ModelProto:
  rng = np.random.default_rng(seed)
  nodes = [helper.make_node('GlobalAveragePool', ['input.1'], ['pooled']),
           helper.make_node('Flatten', ['pooled'], ['colour']),
           _const('fc_weight', rng.normal(size=(3, 512))), _const('fc_bias', 5 + rng.normal(size=512)),
           helper.make_node('Gemm', ['colour', 'fc_weight', 'fc_bias'], ['fc1'])]
  return _model(nodes, [helper.make_tensor_value_info('input.1', TensorProto.FLOAT, [1, 3, 112, 112])],
                [helper.make_tensor_value_info('fc1', TensorProto.FLOAT, [1, 512])])
