"""Shared fixtures for the pre-processing tests: synthetic models and driving inputs, built once."""

import dataclasses
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import onnx
import pytest
from PIL import Image

from tests.prep import synthetic_models

RED = (220, 40, 40)  # person and face
GREY = (150, 150, 150)  # person, no face
BLACK = (0, 0, 0)  # neither
VIDEO_COLOURS = (RED, GREY, BLACK, RED, GREY)
VIDEO_SIZE = (64, 64)  # (w, h)
REFERENCE_SIZE = (48, 64)  # (w, h)


@dataclasses.dataclass(frozen=True)
class Inputs:
  dwpose_dir: Path
  insightface_root: Path
  video: Path
  reference: Path


def write_video(path: Path, colours, size=VIDEO_SIZE) -> Path:
  """A lossless H.264 clip of flat-colour frames."""
  writer = imageio_ffmpeg.write_frames(str(path), size, fps=5, codec='libx264',
                                       ffmpeg_log_level='error', output_params=['-qp', '0'])
  writer.send(None)
  for colour in colours:
    writer.send(np.full((size[1], size[0], 3), colour, np.uint8).tobytes())
  writer.close()
  return path


@pytest.fixture(scope='session')
def inputs(tmp_path_factory) -> Inputs:
  root = tmp_path_factory.mktemp('prep_inputs')
  dwpose_dir = root / 'DWPose'
  dwpose_dir.mkdir()
  onnx.save(synthetic_models.yolox_detector(), dwpose_dir / 'yolox_l.onnx')
  onnx.save(synthetic_models.simcc_pose_model(), dwpose_dir / 'dw-ll_ucoco_384.onnx')
  antelope = root / 'insightface' / 'models' / 'antelopev2'
  antelope.mkdir(parents=True)
  onnx.save(synthetic_models.scrfd_detector(), antelope / 'scrfd_10g_bnkps.onnx')
  onnx.save(synthetic_models.arcface_recogniser(), antelope / 'glintr100.onnx')
  reference = root / 'reference.png'
  Image.fromarray(np.full((REFERENCE_SIZE[1], REFERENCE_SIZE[0], 3), RED, np.uint8)).save(reference)
  video = write_video(root / 'drive.mp4', VIDEO_COLOURS)
  return Inputs(dwpose_dir, root / 'insightface', video, reference)
