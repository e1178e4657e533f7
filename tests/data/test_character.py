"""The character dataset (sa_jax/data/character.py) and sa-make-dataset."""

import filecmp
import json

import numpy as np
import pytest
from PIL import Image

from sa_jax import animate
from sa_jax.data import character, clip_files, clips
from sa_jax.prep import pipeline
from tools import make_dataset

SIZE, FRAMES = 64, 6
ARGS = dict(clips=4, eval_clips=2, identities=3, motions=3, held_out_identities=2, held_out_motions=2,
            num_frames=FRAMES, width=SIZE, height=SIZE)


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp('character') / 'data'
  return root, character.write_dataset(root, seed=3, progress=False, **ARGS)


def _files(root):
  return sorted(p.relative_to(root) for p in root.rglob('*') if p.is_file())


def test_same_seed_same_bytes_and_another_seed_another_dataset(dataset, tmp_path):
  root, _ = dataset
  again, other = tmp_path / 'again', tmp_path / 'other'
  character.write_dataset(again, seed=3, progress=False, **ARGS)
  character.write_dataset(other, seed=4, progress=False, **ARGS)
  files = _files(root)
  assert files == _files(again) == _files(other)
  assert all(filecmp.cmp(root / f, again / f, shallow=False) for f in files)
  assert not filecmp.cmp(root / 'train/00000/images/frame_0.png', other / 'train/00000/images/frame_0.png',
                         shallow=False)


def test_evaluation_clips_hold_out_identities_and_motions(dataset):
  root, record = dataset
  assert record == json.loads((root / character.DATASET_FILE).read_text())
  train = [c for c in record['clips'] if c['split'] == 'train']
  held_out = [c for c in record['clips'] if c['split'] == 'eval']
  assert len(train) == ARGS['clips'] and len(held_out) == ARGS['eval_clips']
  assert all(c['identity'] < ARGS['identities'] <= e['identity'] for c in train for e in held_out)
  assert all(c['motion'] < ARGS['motions'] <= e['motion'] for c in train for e in held_out)
  # Each identity has a face pattern of its own (marks, eye and mouth colours).
  looks = {c['identity']: character.make_identity(3, c['identity']) for c in record['clips']}
  assert len({(i.code, i.eyes, i.mouth) for i in looks.values()}) == len(looks)


def test_clips_are_training_data_with_skeletons_sa_prep_redraws(dataset, tmp_path):
  root, record = dataset
  folder = root / record['clips'][0]['folder']
  # The training pipeline reads every clip of both splits.
  config = clips.DataConfig(roots=(str(root / 'train'), str(root / 'eval')), width=SIZE, height=SIZE,
                            num_frames=4, stride=1, seed=0)
  assert len(clips.clip_source(config.roots)) == ARGS['clips'] + ARGS['eval_clips']
  element = clips.read_clip(clip_files.FolderClip(str(folder)), config, np.random.default_rng(0))
  assert element['frames'].shape == (4, SIZE, SIZE, 3) and element['face_embedding'].shape == (512,)
  # poses/ is what sa-prep draws from keypoints.json.
  pipeline.redraw(folder / pipeline.KEYPOINTS_FILE, tmp_path / 'poses', align=False)
  for i in range(FRAMES):
    drawn = np.asarray(Image.open(folder / 'poses' / f'frame_{i}.png'))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / 'poses' / f'frame_{i}.png')), drawn)
    assert drawn.any()
  # The face mask is the head's box: it covers the face's keypoints (nose and eyes).
  keypoints = json.loads((folder / pipeline.KEYPOINTS_FILE).read_text())['frames'][0]['people'][0]['body']
  mask = np.asarray(Image.open(folder / 'faces' / 'frame_0.png'))
  for x, y in (keypoints[0], keypoints[14], keypoints[15]):
    assert mask[int(y * SIZE), int(x * SIZE)] == 255
  assert 0 < (mask == 255).mean() < 0.2


def test_cli_checks_before_writing_and_replaces_only_its_own_output(tmp_path, capsys):
  with pytest.raises(SystemExit):
    make_dataset.main([str(tmp_path / 'a'), '--frames', '0'])
  assert '--frames is 0, expected >= 1' in capsys.readouterr().err and not (tmp_path / 'a').exists()
  with pytest.raises(SystemExit):
    make_dataset.main([str(tmp_path / 'a'), '--face-embedder-steps', '-1'])
  assert '--face-embedder-steps is -1, expected >= 0' in capsys.readouterr().err
  foreign = tmp_path / 'foreign'
  foreign.mkdir()
  (foreign / 'notes.txt').write_text('keep')
  with pytest.raises(SystemExit, match='^sa-make-dataset: error: .*foreign'):
    make_dataset.main([str(foreign), '--overwrite'])
  assert (foreign / 'notes.txt').read_text() == 'keep'
  out = tmp_path / 'out'
  argv = [str(out), '--clips', '1', '--eval-clips', '1', '--frames', '2', '--size', '64', '--face-embedder-steps', '0',
          '--pose-estimator-steps', '0']
  make_dataset.main(argv)
  with pytest.raises(SystemExit, match='not empty; pass --overwrite'):
    make_dataset.main(argv)
  make_dataset.main(argv + ['--overwrite', '--seed', '1'])
  assert json.loads((out / character.DATASET_FILE).read_text())['seed'] == 1


def test_evaluation_clips_are_animation_cases_of_their_first_frame(dataset):
  root, record = dataset
  for entry in record['clips']:
    folder = root / entry['folder']
    rows = np.load(folder / clip_files.PER_FRAME)
    assert rows.shape == (FRAMES, 512) and np.allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-6)
    if entry['split'] == 'train':
      assert not (folder / 'reference.png').exists()
      continue
    np.testing.assert_array_equal(np.asarray(Image.open(folder / 'reference.png')),
                                  np.asarray(Image.open(folder / 'images' / 'frame_0.png')))
    np.testing.assert_array_equal(np.asarray(Image.open(folder / 'reference_face_mask.png')),
                                  np.asarray(Image.open(folder / 'faces' / 'frame_0.png')))
    np.testing.assert_array_equal(np.load(folder / clip_files.SINGLE), rows[0])
    assert animate.find_cases([folder]) == [folder]
