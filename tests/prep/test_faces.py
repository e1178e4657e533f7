"""Face masks, reference face embedding and antelopev2 model lookup."""

import logging
import shutil
import types

import numpy as np
import pytest

from sa_jax.prep import faces, model_files
from tests.prep.conftest import GREY, RED
from tests.prep.synthetic_models import FACE_BOX

pytestmark = pytest.mark.filterwarnings('ignore:`estimate` is deprecated:FutureWarning')


@pytest.fixture(scope='module')
def app(inputs):
  return faces.load_face_analysis(inputs.insightface_root, ['CPUExecutionProvider'])


def test_mask_fills_truncated_inclusive_boxes():
  boxes = np.array([[2.7, 1.2, 5.9, 3.99, 0.9], [-3, 6, 1.5, 20, 0.8]], np.float32)
  mask = faces.face_mask(boxes, (10, 8))
  expected = np.zeros((8, 10), np.uint8)
  expected[1:4, 2:6] = 255
  expected[6:, :2] = 255
  np.testing.assert_array_equal(mask, expected)


def test_mask_scales_boxes_to_the_mask_size():
  mask = faces.face_mask(np.array([[10, 20, 30, 40]], np.float32), (100, 80), (50, 20))
  expected = np.zeros((20, 50), np.uint8)
  expected[5:11, 5:16] = 255
  np.testing.assert_array_equal(mask, expected)


def test_mask_without_face_is_the_whole_frame():
  mask = faces.face_mask(np.zeros((0, 5), np.float32), (10, 8), (6, 4))
  assert mask.shape == (4, 6) and mask.dtype == np.uint8 and (mask == 255).all()


def test_detection_gets_true_bgr(app):
  # The synthetic detector fires on red in its RGB blob, which insightface makes from BGR input: a
  # face is found only because the RGB frame is converted to BGR first.
  red = np.full((64, 48, 3), RED, np.uint8)
  expected = [*np.divide(FACE_BOX, 10), 0.9]  # 64 px high in a 640 px detector input: scale 10
  np.testing.assert_allclose(faces.detect_faces(app, red), [expected], rtol=1e-6)
  assert faces.detect_faces(app, red[..., ::-1].copy()).shape == (0, 5)
  assert faces.detect_faces(app, np.full((64, 64, 3), GREY, np.uint8)).shape == (0, 5)


def test_reference_embedding_is_raw(app):
  boxes, embedding = faces.reference_faces(app, np.full((64, 48, 3), RED, np.uint8))
  assert boxes.shape == (1, 5)
  assert embedding.shape == (512,) and embedding.dtype == np.float32
  assert np.linalg.norm(embedding) > 10  # not the normed embedding


def test_reference_without_face_gives_zeros_and_a_warning(app, caplog):
  with caplog.at_level(logging.WARNING):
    boxes, embedding = faces.reference_faces(app, np.full((64, 48, 3), GREY, np.uint8))
  assert boxes.shape == (0, 5)
  assert embedding.dtype == np.float32 and not embedding.any() and embedding.shape == (512,)
  assert 'no face found in the reference image' in caplog.text


def test_largest_face_wins():
  def face(box, value):
    return types.SimpleNamespace(bbox=np.float32(box), det_score=np.float32(0.9),
                                 embedding=np.full(512, value, np.float32))
  stub = types.SimpleNamespace(get=lambda image: [face([0, 0, 4, 4], 1), face([0, 0, 8, 2], 2),
                                                  face([1, 1, 5, 5], 3), face([0, 0, 2, 2], 4)])
  boxes, embedding = faces.reference_faces(stub, np.zeros((8, 8, 3), np.uint8))
  assert boxes.shape == (4, 5)
  assert embedding[0] == 3  # areas 16, 16, 16, 4: the last of the largest, as a stable sort's [-1]


def test_model_folder_lookup(inputs, tmp_path):
  root = inputs.insightface_root
  assert model_files.antelopev2_dir(root) == root / 'models' / 'antelopev2'
  nested = tmp_path / 'models' / 'antelopev2' / 'antelopev2'
  shutil.copytree(root / 'models' / 'antelopev2', nested)
  assert model_files.antelopev2_dir(tmp_path) == nested
  with pytest.raises(FileNotFoundError, match=r'looked for scrfd_10g_bnkps.onnx, glintr100.onnx \(any '
                     r'.onnx\) in .*empty/models/antelopev2, .*empty/antelopev2'):
    model_files.antelopev2_dir(tmp_path / 'empty')


def test_missing_detector_or_recogniser(inputs, tmp_path):
  source = inputs.insightface_root / 'models' / 'antelopev2'
  only_recogniser = tmp_path / 'a' / 'models' / 'antelopev2'
  only_recogniser.mkdir(parents=True)
  shutil.copy(source / 'glintr100.onnx', only_recogniser)
  with pytest.raises(FileNotFoundError, match="no face detector .* in .*a/models/antelopev2: "
                     r"\['glintr100.onnx'\]"):
    faces.load_face_analysis(tmp_path / 'a', ['CPUExecutionProvider'])
  only_detector = tmp_path / 'b' / 'antelopev2'
  only_detector.mkdir(parents=True)
  shutil.copy(source / 'scrfd_10g_bnkps.onnx', only_detector)
  with pytest.raises(FileNotFoundError, match='no face recogniser'):
    faces.load_face_analysis(tmp_path / 'b', ['CPUExecutionProvider'])


def test_unreadable_model_is_one_line_naming_it(inputs, tmp_path):
  folder = tmp_path / 'models' / 'antelopev2'
  shutil.copytree(inputs.insightface_root / 'models' / 'antelopev2', folder)
  (folder / 'glintr100.onnx').write_bytes(b'\x00not a model\xff' * 8)
  with pytest.raises(ValueError, match=r'^.*antelopev2/glintr100.onnx: not a readable ONNX model '
                     r'\(InvalidProtobuf: ') as err:
    faces.load_face_analysis(tmp_path, ['CPUExecutionProvider'])
  assert '\n' not in str(err.value)
