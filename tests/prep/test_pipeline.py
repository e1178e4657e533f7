"""`sa-prep` end to end on the synthetic models: the animate folder, training data, redraw, failures."""

import json
import logging

import numpy as np
import pytest
from PIL import Image

from sa_jax.prep import skeleton
from sa_jax.prep.align import Alignment
from sa_jax.prep.keypoints import Pose
from tests.prep.conftest import BLACK, REFERENCE_SIZE, VIDEO_SIZE
from tools import prep

pytestmark = pytest.mark.filterwarnings('ignore:`estimate` is deprecated:FutureWarning')

WIDTH, HEIGHT = 32, 40  # generation size of the face masks


def _models(inputs) -> list[str]:
  return ['--dwpose-dir', str(inputs.dwpose_dir), '--insightface-root', str(inputs.insightface_root)]


def _read(path) -> tuple[np.ndarray, str]:
  with Image.open(path) as image:
    return np.array(image), image.mode


def _frames(folder) -> list[str]:
  return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope='module')
def animate_folder(inputs, tmp_path_factory):
  out = tmp_path_factory.mktemp('prep_out') / 'case'
  prep.main(['--reference', str(inputs.reference), '--video', str(inputs.video), '--out', str(out),
             '--width', str(WIDTH), '--height', str(HEIGHT), *_models(inputs)])
  return out


def test_animate_folder_layout(animate_folder, inputs):
  out = animate_folder
  names = [f'frame_{i}.png' for i in range(5)]
  assert sorted(p.name for p in out.iterdir()) == [
      'face_embedding.npy', 'faces', 'images', 'keypoints.json', 'poses', 'reference.png',
      'reference_face_mask.png']
  assert _frames(out / 'images') == _frames(out / 'poses') == _frames(out / 'faces') == names

  reference, mode = _read(out / 'reference.png')
  assert mode == 'RGB'
  np.testing.assert_array_equal(reference, _read(inputs.reference)[0])
  mask, mode = _read(out / 'reference_face_mask.png')
  assert mode == 'L' and mask.shape == (REFERENCE_SIZE[1], REFERENCE_SIZE[0])
  rows, columns = np.nonzero(mask == 255)  # the face box (25.6, 12.8)-(38.4, 25.6), inclusive
  assert (rows.min(), rows.max(), columns.min(), columns.max()) == (12, 25, 25, 38)
  assert set(np.unique(mask)) == {0, 255}
  embedding = np.load(out / 'face_embedding.npy')
  assert embedding.dtype == np.float32 and embedding.shape == (512,) and embedding.any()

  for name in names:
    image, mode = _read(out / 'images' / name)
    assert mode == 'RGB' and image.shape == (VIDEO_SIZE[1], VIDEO_SIZE[0], 3)
    pose, mode = _read(out / 'poses' / name)
    assert mode == 'RGB' and pose.shape == (REFERENCE_SIZE[1], REFERENCE_SIZE[0], 3)
    face, mode = _read(out / 'faces' / name)
    assert mode == 'L' and face.shape == (HEIGHT, WIDTH) and face.dtype == np.uint8
  for i in (0, 3):  # red frames: the face box (25.6, 12.8)-(38.4, 25.6) scaled by (32 / 64, 40 / 64)
    rows, columns = np.nonzero(_read(out / 'faces' / f'frame_{i}.png')[0] == 255)
    assert (rows.min(), rows.max(), columns.min(), columns.max()) == (8, 16, 12, 19)
  for i in (1, 2, 4):  # no face: the whole frame
    assert (_read(out / 'faces' / f'frame_{i}.png')[0] == 255).all()
  assert not _read(out / 'poses' / 'frame_2.png')[0].any()  # black frame: no person, empty skeleton
  assert _read(out / 'poses' / 'frame_0.png')[0].any()


def test_keypoints_json_redraws_the_skeletons(animate_folder):
  record = json.loads((animate_folder / 'keypoints.json').read_text())
  assert record['generation_size'] == {'width': WIDTH, 'height': HEIGHT}
  assert record['reference']['source'] == 'reference.png'
  assert [len(f['people']) for f in record['frames']] == [1, 1, 0, 1, 1]
  assert record['frames'][2]['source'] == 'drive.mp4 frame 2'
  assert [len(f['faces']) for f in record['frames']] == [1, 0, 0, 1, 0]
  alignment = Alignment.from_dict(record['alignment'])
  assert alignment.frames == (0, 1, 3, 4)
  # Same pixel box in both images, widths 48 and 64: y is kept, x shifts by x (1/48 - 1/64) on average.
  np.testing.assert_allclose(alignment.a, (1, 1), atol=1e-12)
  pose = Pose.from_dict(record['frames'][0])
  reference = Pose.from_dict(record['reference'])
  joints = list(alignment.joints)
  shift = np.mean(reference.keypoints[0, joints, 0] - pose.keypoints[0, joints, 0])
  np.testing.assert_allclose(alignment.b, (shift, 0), atol=1e-12)
  expected = skeleton.draw_pose(alignment.apply(pose), reference.height, reference.width)
  np.testing.assert_array_equal(_read(animate_folder / 'poses' / 'frame_0.png')[0], expected)


def test_draw_subcommand(animate_folder, tmp_path):
  prep.main(['draw', '--keypoints', str(animate_folder / 'keypoints.json'), '--out', str(tmp_path / 'a')])
  for i in range(5):
    np.testing.assert_array_equal(_read(tmp_path / 'a' / f'frame_{i}.png')[0],
                                  _read(animate_folder / 'poses' / f'frame_{i}.png')[0])
  prep.main(['draw', '--keypoints', str(animate_folder / 'keypoints.json'), '--out', str(tmp_path / 'u'),
             '--no-align'])
  assert _read(tmp_path / 'u' / 'frame_0.png')[0].shape == (VIDEO_SIZE[1], VIDEO_SIZE[0], 3)


def test_training_folder_without_reference(inputs, animate_folder, tmp_path, caplog):
  out = tmp_path / 'clip'
  with caplog.at_level(logging.WARNING):
    prep.main(['--frames', str(animate_folder / 'images'), '--out', str(out), '--no-align',
               '--stride', '2', '--max-frames', '2', *_models(inputs)])
  assert sorted(p.name for p in out.iterdir()) == ['face_embeddings.npy', 'faces', 'images', 'keypoints.json',
                                                   'poses']
  assert _frames(out / 'poses') == ['frame_0.png', 'frame_1.png']
  embeddings = np.load(out / 'face_embeddings.npy', allow_pickle=False)
  assert embeddings.shape == (2, 512) and embeddings.dtype == np.float32 and np.isfinite(embeddings).all()
  assert _read(out / 'poses' / 'frame_0.png')[0].shape == (VIDEO_SIZE[1], VIDEO_SIZE[0], 3)
  assert _read(out / 'faces' / 'frame_0.png')[0].shape == (512, 512)  # default generation size
  record = json.loads((out / 'keypoints.json').read_text())
  assert record['alignment'] is None and record['reference'] is None
  assert [f['source'] for f in record['frames']] == ['frame_0.png', 'frame_2.png']
  assert 'frame 1 (frame_2.png): no person detected, its skeleton is empty' in caplog.text


def test_failures_leave_no_output(inputs, tmp_path):
  out = tmp_path / 'out'
  common = ['--video', str(inputs.video), '--out', str(out)]
  with pytest.raises(SystemExit, match=f'sa-prep: error: .*looked for yolox_l.onnx in the DWPose folder {tmp_path}'):
    prep.main([*common, '--reference', str(inputs.reference), '--dwpose-dir', str(tmp_path),
               '--insightface-root', str(inputs.insightface_root)])
  with pytest.raises(SystemExit, match='sa-prep: error: .*pose model not found: .*nope.onnx .given by --pose-model'):
    prep.main([*common, '--reference', str(inputs.reference), '--pose-model', str(tmp_path / 'nope.onnx'),
               *_models(inputs)])
  with pytest.raises(SystemExit, match='sa-prep: error: .*needs a reference image'):
    prep.main([*common, *_models(inputs)])
  black = tmp_path / 'black.png'
  Image.fromarray(np.full((64, 48, 3), BLACK, np.uint8)).save(black)
  with pytest.raises(SystemExit, match='sa-prep: error: .*no person detected in the reference image'):
    prep.main([*common, '--reference', str(black), *_models(inputs)])
  assert sorted(p.name for p in tmp_path.iterdir()) == ['black.png']


def test_overwrite(inputs, tmp_path):
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'old.txt').write_text('old')
  args = ['--frames', str(inputs.video.parent), '--out', str(out), '--no-align', '--max-frames', '1',
          *_models(inputs)]
  with pytest.raises(SystemExit, match='sa-prep: error: .*is not empty; pass --overwrite'):
    prep.main(args)
  with pytest.raises(SystemExit, match='sa-prep: error: .*exists and is not an sa-prep output folder'):
    prep.main([*args, '--overwrite'])        # old.txt is not ours: never deleted
  assert [p.name for p in out.iterdir()] == ['old.txt']
  (out / 'old.txt').unlink()
  prep.main(args)
  prep.main([*args, '--overwrite'])          # our own output is replaced
  assert sorted(p.name for p in out.iterdir()) == ['face_embeddings.npy', 'faces', 'images', 'keypoints.json',
                                                   'poses']
  assert sorted(p.name for p in tmp_path.iterdir()) == ['out']
  with pytest.raises(SystemExit, match='sa-prep: error: .*is or holds the input'):
    prep.main([*args[:3], str(inputs.video.parent), *args[4:], '--overwrite'])
