"""sa_jax.eval.face: CSIM with a tiny random IResNet (HJB crops) and with the synthetic antelopev2 models."""

import types

import jax
import numpy as np
import onnx
import pytest

from sa_jax.eval import face
from sa_jax.models import iresnet, stable_animator
from sa_jax.models.random_init import random_params
from sa_jax.prep import faces
from tests.prep import synthetic_models
from tests.prep.conftest import GREY, RED

pytestmark = pytest.mark.filterwarnings('ignore:`estimate` is deprecated:FutureWarning')

HEIGHT, WIDTH = 40, 48
CONFIG = iresnet.IResNetConfig(layers=(1, 1, 1, 1), num_features=8)
# cos(e, e') of equal crops: the embeddings may differ by float32 rounding between batch sizes (XLA picks
# other kernels), which moves the cosine only at second order; its own rounding (two norms and a dot of
# E = 8 terms, ~E ulp of 6e-8 each) is below 1e-6.
COSINE_ATOL = 1e-6
# cos(e, r) of different faces, e embedded by another compiled program (batch 1 vs 2) than the result's:
# the rounding differences, ~1e-5 relative (as between eager and jitted HJB embeddings), enter at first
# order, times |cos| <= 1 and the network's conditioning, so 1e-4.
OTHER_COSINE_ATOL = 1e-4


@pytest.fixture(scope='module')
def params():
  return random_params(iresnet.abstract_params(CONFIG))


def _mask(box):
  """uint8 [HEIGHT, WIDTH] mask, 255 inside the inclusive box (y0, y1, x0, x1)."""
  mask = np.zeros((HEIGHT, WIDTH), np.uint8)
  if box is not None:
    mask[box[0]:box[1] + 1, box[2]:box[3] + 1] = 255
  return mask


def test_cosine_of_known_embeddings():
  reference = np.array([3.0, 0.0, 0.0, 0.0], np.float32)
  embeddings = np.array([[0.5, 0, 0, 0], [0, 2, 0, 0], [-7, 0, 0, 0], [1, 1, 0, 0]], np.float32)
  np.testing.assert_allclose(face.cosine(embeddings, reference), [1, 0, -1, np.sqrt(0.5)], atol=COSINE_ATOL)


def test_summary_never_averages_missing_faces():
  summary = face.summarize(np.array([0.5, np.nan, 0.25, np.nan]))
  assert summary.frames_without_face == 2 and summary.mean == pytest.approx(0.375, abs=1e-7)
  empty = face.summarize(np.full(3, np.nan))
  assert empty.frames_without_face == 3 and np.isnan(empty.mean)


def test_mask_boxes_and_no_face_masks():
  masks = np.stack([_mask((5, 20, 10, 30)), _mask(None), np.full((HEIGHT, WIDTH), 255, np.uint8)])
  boxes, has_face = face.mask_boxes(masks)
  np.testing.assert_array_equal(has_face, [True, False, False])  # empty, and sa-prep's whole-frame "no face"
  np.testing.assert_array_equal(boxes[0], [5, 20, 10, 30])


def test_reference_embedding_is_hjbs(params):
  # The HJB target r (stable_animator.reference_face_embedding): same normalisation, crop and network.
  rng = np.random.default_rng(1)
  reference = rng.integers(0, 256, (HEIGHT, WIDTH, 3), np.uint8)
  box = (4, 30, 6, 40)
  ours = face.iresnet_reference_embedding(params, CONFIG, reference, _mask(box))
  configs = types.SimpleNamespace(face_embedder=CONFIG)
  hjb = jax.jit(lambda p, x, b: stable_animator.reference_face_embedding({'face_embedder': p}, configs, x, b))(
      params, reference[None], np.array([box], np.int32))
  np.testing.assert_array_equal(ours, np.asarray(hjb)[0])


def test_iresnet_similarity(params):
  rng = np.random.default_rng(0)
  box = (8, 30, 12, 40)
  reference = rng.integers(0, 256, (HEIGHT, WIDTH, 3), np.uint8)
  moved = reference.copy()
  moved[:box[0]] = 0                 # outside the face box only: the crop is unchanged
  other = rng.integers(0, 256, (HEIGHT, WIDTH, 3), np.uint8)
  frames = np.stack([reference, moved, reference, reference, other])
  masks = np.stack([_mask(box), _mask(box), _mask(None), np.full((HEIGHT, WIDTH), 255, np.uint8), _mask(box)])
  target = face.iresnet_reference_embedding(params, CONFIG, reference, _mask(box))
  # batch 2 over 5 frames: three calls, the last padded
  result = face.iresnet_similarity(params, CONFIG, frames, masks, target, batch_size=2)

  other_embedding = np.asarray(face.iresnet_embeddings(params, CONFIG, other[None], np.array([box], np.int32)))[0]
  other_cos = float(other_embedding @ target / np.linalg.norm(other_embedding) / np.linalg.norm(target))
  assert abs(other_cos - 1) > 1e-3   # a different face is told apart
  assert result.per_frame.shape == (5,) and result.per_frame.dtype == np.float32
  np.testing.assert_allclose(result.per_frame[[0, 1]], 1.0, atol=COSINE_ATOL)
  assert np.isnan(result.per_frame[2]) and np.isnan(result.per_frame[3])
  np.testing.assert_allclose(result.per_frame[4], other_cos, atol=OTHER_COSINE_ATOL)
  assert result.frames_without_face == 2
  assert result.mean == pytest.approx(np.mean(result.per_frame[[0, 1, 4]]), abs=1e-7)   # float64 mean of 3
  assert result.mean == pytest.approx((2 + other_cos) / 3, abs=OTHER_COSINE_ATOL)


def test_iresnet_rejects_bad_inputs(params):
  frames = np.zeros((2, HEIGHT, WIDTH, 3), np.uint8)
  target = np.ones(8, np.float32)
  with pytest.raises(ValueError, match=r'face masks have shape \(1, 40, 48\), expected \(2, 40, 48\)'):
    face.iresnet_similarity(params, CONFIG, frames, np.zeros((1, HEIGHT, WIDTH), np.uint8), target)
  masks = np.stack([_mask((1, 2, 3, 4))] * 2)
  with pytest.raises(ValueError, match=r'reference embedding has shape \(512,\), expected \[8\]'):
    face.iresnet_similarity(params, CONFIG, frames, masks, np.ones(512, np.float32))
  with pytest.raises(ValueError, match='all zeros'):
    face.iresnet_similarity(params, CONFIG, frames, masks, np.zeros(8, np.float32))
  with pytest.raises(ValueError, match='reference face mask has no face'):
    face.iresnet_reference_embedding(params, CONFIG, frames[0], _mask(None))


@pytest.fixture(scope='module')
def app(tmp_path_factory):
  root = tmp_path_factory.mktemp('insightface')
  folder = root / 'models' / 'antelopev2'
  folder.mkdir(parents=True)
  onnx.save(synthetic_models.scrfd_detector(), folder / 'scrfd_10g_bnkps.onnx')
  onnx.save(synthetic_models.arcface_recogniser(), folder / 'glintr100.onnx')
  return faces.load_face_analysis(root, ['CPUExecutionProvider'])


def test_insightface_similarity(app):
  # The synthetic SCRFD finds a face only on red; the synthetic ArcFace embeds the crop's mean colour.
  _, reference = faces.reference_faces(app, np.full((64, 48, 3), RED, np.uint8))
  reddish = np.full((64, 64, 3), (200, 60, 100), np.uint8)
  frames = np.stack([np.full((64, 64, 3), RED, np.uint8), np.full((64, 64, 3), GREY, np.uint8), reddish])
  result = face.insightface_similarity(app, frames, reference)

  _, embedding = faces.reference_faces(app, reddish)
  reddish_cos = float(embedding @ reference / np.linalg.norm(embedding) / np.linalg.norm(reference))
  assert abs(reddish_cos - 1) > 1e-6           # another colour, another embedding
  np.testing.assert_allclose(result.per_frame[0], 1.0, atol=COSINE_ATOL)   # same face, other frame size
  assert np.isnan(result.per_frame[1]) and result.frames_without_face == 1
  np.testing.assert_allclose(result.per_frame[2], reddish_cos, atol=COSINE_ATOL)
  assert result.mean == pytest.approx((1 + reddish_cos) / 2, abs=COSINE_ATOL)


def test_insightface_needs_a_reference_face(app):
  with pytest.raises(ValueError, match='all zeros'):
    face.insightface_similarity(app, np.zeros((1, 8, 8, 3), np.uint8), np.zeros(512, np.float32))
