"""Face boxes, face masks and the reference face embedding with insightface antelopev2 (SPEC §1.1, §6).

Mirrors StableAnimator `face_mask_extraction.py` (filled detection boxes, int-truncated inclusive corners,
255 on 0; the whole mask 255 when no face) and the reference-embedding code of `inference_basic.py`
(largest face by box area, raw `face.embedding`, zeros(512) when no face).

Differences (docs/prep.md): insightface gets true BGR (the reference scripts pass RGB, SPEC §8); there is
no facexlib RetinaFace fallback; masks can be written at another size than the image (boxes scaled).
"""

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from insightface.app import FaceAnalysis

from sa_jax import errors
from sa_jax.prep.model_files import antelopev2_dir

logger = logging.getLogger(__name__)

DETECTION_SIZE = (640, 640)
EMBEDDING_DIM = 512


def load_face_analysis(insightface_root: str | os.PathLike,
                       providers: Sequence[str] | None = None) -> FaceAnalysis:
  """antelopev2 detection + recognition models from local files (never downloads).

  Args:
    insightface_root: ROOT as in `FaceAnalysis(name='antelopev2', root=ROOT)` (see `model_files`).
    providers: onnxruntime providers (default: insightface's choice).

  Returns:
    a prepared `FaceAnalysis` (det_size 640, det_thresh 0.5) with 'detection' and 'recognition' models.
  """
  folder = antelopev2_dir(insightface_root)
  kwargs = {'providers': list(providers)} if providers else {}
  try:
    # An absolute folder as `name` makes insightface read it in place (no download in any version).
    app = FaceAnalysis(name=str(folder.resolve()), root=str(insightface_root),
                       allowed_modules=['detection', 'recognition'], **kwargs)
  except (AssertionError, KeyError) as err:
    raise FileNotFoundError(f'no face detector (SCRFD, e.g. scrfd_10g_bnkps.onnx) among the models in '
                            f'{folder}: {sorted(p.name for p in folder.glob("*.onnx"))}') from err
  except Exception as err:  # onnxruntime's own types (InvalidProtobuf, Fail, ...) and insightface's
    raise _unreadable(folder, err) from err
  if 'recognition' not in app.models:
    raise FileNotFoundError(f'no face recogniser (ArcFace, e.g. glintr100.onnx) among the models in '
                            f'{folder}: {sorted(p.name for p in folder.glob("*.onnx"))}')
  app.prepare(ctx_id=0, det_size=DETECTION_SIZE)
  return app


def _unreadable(folder: Path, err: Exception) -> ValueError:
  """The one-line error for a model insightface could not load, naming the file when its message does."""
  cause = errors.first_line(err)
  named = [p for p in sorted(folder.glob('*.onnx')) if f'{os.sep}{p.name}' in cause]
  if named:
    return ValueError(f'{named[0]}: not a readable ONNX model ({type(err).__name__}: {cause})')
  return ValueError(f'insightface models in {folder}: one could not be loaded '
                    f'({type(err).__name__}: {cause})')


def detect_faces(app: FaceAnalysis, image: np.ndarray) -> np.ndarray:
  """Face boxes of an RGB uint8 [H, W, 3] image, fed to insightface as BGR.

  Returns:
    float32 [M, 5] (x1, y1, x2, y2, score) in image pixels, M >= 0.
  """
  boxes, _ = app.det_model.detect(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), max_num=0, metric='default')
  return np.asarray(boxes, np.float32).reshape(-1, 5)


def face_mask(boxes: np.ndarray, image_size: tuple[int, int],
              mask_size: tuple[int, int] | None = None) -> np.ndarray:
  """Filled face boxes, 255 on 0; all 255 when there is no box.

  Args:
    boxes: [M, >=4] (x1, y1, x2, y2, ...) in pixels of an image of `image_size`.
    image_size: (width, height) of the image the boxes were found on.
    mask_size: (width, height) of the mask; box corners are scaled by mask / image (default: image size).

  Returns:
    uint8 [height, width] of `mask_size`.
  """
  width, height = mask_size or image_size
  mask = np.zeros((height, width), np.uint8)
  if len(boxes) == 0:
    mask[:] = 255
    return mask
  sx, sy = width / image_size[0], height / image_size[1]
  for x1, y1, x2, y2 in np.asarray(boxes, np.float64)[:, :4]:
    cv2.rectangle(mask, (int(x1 * sx), int(y1 * sy)), (int(x2 * sx), int(y2 * sy)), 255,
                  thickness=cv2.FILLED)
  return mask


def reference_faces(app: FaceAnalysis, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Face boxes and the identity embedding of the reference (an RGB uint8 [H, W, 3] image).

  Returns:
    float32 [M, 5] boxes (x1, y1, x2, y2, score), and the float32 [512] raw ArcFace embedding of the
    largest face (by box area; the last of equals) or zeros(512) with a warning when there is no face.
  """
  boxes, embedding = largest_face(app, image)
  if embedding is None:
    logger.warning('no face found in the reference image: the face embedding is zeros(%d), which '
                   'removes the identity conditioning', EMBEDDING_DIM)
    return boxes, np.zeros(EMBEDDING_DIM, np.float32)
  return boxes, embedding


def training_embedding(app: FaceAnalysis, image: np.ndarray, size: tuple[int, int]) -> np.ndarray | None:
  """The face embedding the training loader computes for a reference frame (SPEC §5): the frame
  resized to `size` (width, height) with cv2 bilinear, the largest face's raw embedding; None
  without a face (the loader then uses zeros)."""
  return largest_face(app, cv2.resize(image, size, interpolation=cv2.INTER_LINEAR))[1]


def largest_face(app: FaceAnalysis, image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
  """Boxes `[M, 5]` of an RGB image (fed as BGR) and the raw `[512]` embedding of its largest face."""
  faces = app.get(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
  boxes = np.array([np.append(f.bbox[:4], f.det_score) for f in faces], np.float32).reshape(-1, 5)
  if not faces:
    return boxes, None
  largest = faces[0]
  for face in faces[1:]:
    if _area(face.bbox) >= _area(largest.bbox):
      largest = face
  embedding = np.asarray(largest.embedding, np.float32).reshape(-1)
  if embedding.shape != (EMBEDDING_DIM,):
    raise ValueError(f'the face recogniser gives an embedding of shape {embedding.shape}, '
                     f'expected ({EMBEDDING_DIM},) (glintr100)')
  return boxes, embedding


def _area(box: np.ndarray) -> float:
  return float((box[2] - box[0]) * (box[3] - box[1]))
