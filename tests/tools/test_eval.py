"""sa-eval end to end on a tiny synthetic clip set: scores of known answers, animation with the demo
model, the outputs it writes and replaces, and one-line errors for bad clip sets."""

import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from sa_jax import animate, checkpoint
from sa_jax.data import synthetic
from sa_jax.eval import face, report
from sa_jax.prep import frames as frame_io
from sa_jax.prep import pipeline as prep_pipeline
from tests.prep import conftest as prep_conftest
from tests.prep.conftest import inputs  # noqa: F401  (the synthetic DWPose/insightface models)
from tools import eval as eval_tool

FRAMES = 16                       # FVD's window: each clip gives one
SIZE = Image.open(animate.SAMPLE_DIR / 'reference.png').size   # the demo test's size: its program is reused
OFFSET = 5                        # grey levels added to the noisy clip's frames


def make_clip_set(root, count=2, frames=FRAMES, size=SIZE):
  """Synthetic clips in the sa-prep inference layout with their ground truth in images/."""
  folders = synthetic.write_clips(root, count, num_frames=frames, width=size[0], height=size[1])
  for folder in folders:
    shutil.copy(folder / 'images' / 'frame_0.png', folder / 'reference.png')
    shutil.copy(folder / 'faces' / 'frame_0.png', folder / 'reference_face_mask.png')
    np.save(folder / 'face_embedding.npy', np.load(folder / 'face_embeddings.npy')[0])
  return folders


def write_generated(out, clip, transform):
  """`out/<clip>_frames/frame_<i>.png`: the clip's ground truth passed through `transform`."""
  folder = out / f'{clip.name}_frames'
  folder.mkdir(parents=True)
  for path in frame_io.list_images(clip / 'images'):
    frame_io.save_rgb(folder / path.name, transform(frame_io.load_rgb(path)))


@pytest.fixture(scope='module')
def clip_set(tmp_path_factory):
  root = tmp_path_factory.mktemp('clips')
  folders = make_clip_set(root / 'test')
  generated = root / 'generated'
  write_generated(generated, folders[0], lambda f: f)
  write_generated(generated, folders[1], lambda f: np.minimum(f.astype(np.int32) + OFFSET, 255).astype(np.uint8))
  return root / 'test', folders, generated


@pytest.fixture(scope='module')
def scored(clip_set, tmp_path_factory):
  test, _, generated = clip_set
  out = tmp_path_factory.mktemp('eval') / 'eval'
  eval_tool.main(['--clips', str(test), '--generated', str(generated), '--out', str(out)])
  return out, json.loads((out / 'metrics.json').read_text())


def test_identical_frames_score_perfectly(clip_set, scored):
  _, folders, _ = clip_set
  row = scored[1]['clips'][folders[0].name]
  assert row['frames'] == FRAMES
  assert row['l1'] == 0 and row['l1_disco'] == 0 and row['psnr'] == 'inf' and row['psnr_disco'] == 100
  assert row['ssim'] == pytest.approx(1, abs=1e-6) and row['ssim_disco'] == pytest.approx(1, abs=1e-6)
  assert row['lpips'] == pytest.approx(0, abs=1e-6)


def test_known_error_gives_its_psnr(clip_set, scored):
  """The noisy clip's PSNR per frame is that of its exact MSE, computed here in float64."""
  _, folders, generated = clip_set
  row = scored[1]['clips'][folders[1].name]
  for i, path in enumerate(frame_io.list_images(folders[1] / 'images')):
    truth = frame_io.load_rgb(path).astype(np.float64) / 255
    made = frame_io.load_rgb(generated / f'{folders[1].name}_frames' / path.name).astype(np.float64) / 255
    # float32 metric vs float64 here: MSE to ~1e-6 relative, i.e. ~5e-6 dB.
    assert row['per_frame']['psnr'][i] == pytest.approx(-10 * np.log10(np.mean((made - truth) ** 2)), abs=1e-4)
  assert 0 < row['l1'] <= OFFSET / 255 + 1e-7 and row['lpips'] > 0 and row['ssim'] < 1


def test_set_scores_and_what_was_skipped(scored):
  out, scores = scored
  total = scores['overall']
  assert total['clips'] == 2 and total['fvd_windows'] == 2 and total['fvd'] >= 0
  assert total['psnr'] == 'inf'          # one clip is identical: the mean of inf and a finite PSNR
  assert set(scores['skipped']) == {'csim', 'pose'}
  assert '--face-embedder' in scores['skipped']['csim'] and '--dwpose-dir' in scores['skipped']['pose']
  table = (out / 'metrics.md').read_text()
  assert table.count('\n| ') == 3 and 'csim: not computed' in table
  for name in scores['clips']:
    picture = frame_io.load_rgb(out / 'clips' / f'{name}.png')
    # 4 rows (reference, pose, generated, truth) of 8 evenly spaced frames.
    assert picture.shape == (len(report.LABELS) * (SIZE[1] + 12), report.STRIP_COLUMNS * SIZE[0], 3)


def test_replaces_only_its_own_output(clip_set, scored, tmp_path):
  test, _, generated = clip_set
  out, _ = scored
  argv = ['--clips', str(test), '--generated', str(generated), '--metrics', 'l1']
  with pytest.raises(SystemExit, match=f'sa-eval: error: output {out} exists; pass --overwrite'):
    eval_tool.main([*argv, '--out', str(out)])
  eval_tool.main([*argv, '--out', str(out), '--overwrite'])
  assert set(json.loads((out / 'metrics.json').read_text())['overall']) == {'l1', 'l1_disco', 'clips'}
  foreign = tmp_path / 'mine'
  foreign.mkdir()
  (foreign / 'notes.txt').write_text('keep')
  with pytest.raises(SystemExit, match=r'is not an sa-eval output \(a folder with its metrics.json\); refusing'):
    eval_tool.main([*argv, '--out', str(foreign), '--overwrite'])
  assert (foreign / 'notes.txt').read_text() == 'keep'
  with pytest.raises(SystemExit, match='is or holds the input'):
    eval_tool.main([*argv, '--out', str(test.parent), '--overwrite'])


def test_demo_model_animates_then_scores(clip_set, tmp_path):
  test, folders, _ = clip_set
  out = tmp_path / 'eval'
  eval_tool.main(['--clips', str(test), '--demo', '--out', str(out), '--metrics', 'l1,psnr,ssim',
                  '--num-frames', '5', '--steps', '2', '--width', '0', '--height', '0'])
  scores = json.loads((out / 'metrics.json').read_text())
  assert sorted(scores['clips']) == sorted(f.name for f in folders) and scores['failed'] == []
  for folder in folders:
    assert len(frame_io.list_images(out / 'generated' / f'{folder.name}_frames')) == 5
    assert (out / 'generated' / f'{folder.name}.mp4').is_file()
    assert scores['clips'][folder.name]['frames'] == 5 and np.isfinite(scores['clips'][folder.name]['psnr'])
  assert not [p for p in out.parent.iterdir() if p.name.startswith('.')], 'staging left behind'


def _bad(tmp_path, fault):
  """A one-clip set with `fault` applied to the clip or its generated frames."""
  clip = make_clip_set(tmp_path / 'test', count=1, frames=3, size=(64, 64))[0]
  generated = tmp_path / 'generated'
  write_generated(generated, clip, lambda f: f)
  fault(clip, generated / f'{clip.name}_frames')
  return ['--clips', str(tmp_path / 'test'), '--generated', str(generated), '--out', str(tmp_path / 'eval')]


def _resize(folder, size):
  for path in frame_io.list_images(folder):
    frame_io.save_rgb(path, np.asarray(Image.fromarray(frame_io.load_rgb(path)).resize(size)))


@pytest.mark.parametrize('fault, message', [
    (lambda clip, made: shutil.rmtree(clip / 'images'), r'clip .*00000: no ground truth: .*images is missing'),
    (lambda clip, made: (made / 'frame_2.png').unlink(),
     r'clip 00000: 2 generated frames but 3 ground-truth frames in .*images; they must match'),
    (lambda clip, made: _resize(made, (64, 128)),
     r'clip 00000: generated frames are 64x128 but the ground truth 64x64: aspect ratios differ'),
    (lambda clip, made: shutil.rmtree(made), r'clip 00000: no generated frames in .*generated'),
    (lambda clip, made: (clip / 'poses' / 'frame_2.png').unlink(),
     r'clip 00000: 2 pose frames in .*poses, fewer than the 3 frames to score'),
    (lambda clip, made: (clip / 'images' / 'frame_1.png').write_bytes(b'not a png'),
     r'cannot read image .*00000/images/frame_1.png'),
])
def test_bad_clip_sets_are_one_line_errors_naming_the_clip(tmp_path, capsys, fault, message):
  argv = _bad(tmp_path, fault)
  with pytest.raises(SystemExit) as stop:
    eval_tool.main(argv)
  assert stop.value.code != 0
  first, *rest = str(stop.value.code).splitlines()
  assert first.startswith('sa-eval: error: ') and not rest
  assert re.search(message, first), first
  assert not (tmp_path / 'eval').exists()


def test_larger_generated_frames_of_the_same_aspect_are_resized(tmp_path):
  """... and FVD, asked for clips shorter than its window, is skipped with the reason (no I3D loaded)."""
  argv = _bad(tmp_path, lambda clip, made: _resize(made, (128, 128)))
  eval_tool.main([*argv, '--metrics', 'psnr,fvd'])
  scores = json.loads((tmp_path / 'eval' / 'metrics.json').read_text())
  assert scores['overall']['psnr'] > 20 and 'fvd' not in scores['overall']
  assert scores['skipped'] == {'fvd': 'clip 00000 has 3 frames to score; FVD needs 16 per clip'}


@pytest.fixture(scope='module')
def prepared(inputs, tmp_path_factory):
  """A clip made by sa-prep from the synthetic driving video (red: person and face, grey: person, black:
  neither), generated frames equal to its driving frames."""
  root = tmp_path_factory.mktemp('prepared')
  clip = prep_pipeline.prepare(root / 'test' / 'drive', reference=inputs.reference, video=inputs.video,
                               dwpose_dir=inputs.dwpose_dir, insightface_root=inputs.insightface_root,
                               config=prep_pipeline.PrepConfig(width=64, height=64))
  write_generated(root / 'generated', clip, lambda f: f)
  return root


def _score(root, out, *options):
  eval_tool.main(['--clips', str(root / 'test'), '--generated', str(root / 'generated'), '--out', str(out),
                  *options])
  return json.loads((out / 'metrics.json').read_text())['clips']['drive']


def test_face_similarity_and_pose_error_with_the_prep_models(inputs, prepared, tmp_path):
  row = _score(prepared, tmp_path / 'eval', '--metrics', 'csim,pose', '--insightface-root',
               str(inputs.insightface_root), '--dwpose-dir', str(inputs.dwpose_dir))
  faces = [c == prep_conftest.RED for c in prep_conftest.VIDEO_COLOURS]
  assert row['no_face_frames'] == faces.count(False)
  assert [v is None for v in row['per_frame']['csim']] == [not f for f in faces]
  # The reference and the face frames are one flat red: the same face crop, similarity 1 up to float32.
  assert row['csim'] == pytest.approx(1, abs=1e-5)
  people = [c != prep_conftest.BLACK for c in prep_conftest.VIDEO_COLOURS]
  assert row['no_driving_frames'] == people.count(False) and row['no_person_frames'] == 0
  assert np.isfinite(row['pose_error_px']) and 0 <= row['pck'] <= 1


def test_face_similarity_with_our_iresnet(release_dir, checkpoint_dir, prepared, tmp_path):
  """The face embedder of a converted checkpoint, or the release's .pth itself, crops the faces of the
  clip's masks (sa-prep's all-255 mask of a frame without a face counts as no face)."""
  from_pth = _score(prepared, tmp_path / 'pth', '--metrics', 'csim', '--face-embedder',
                    str(release_dir / 'Animation' / 'glintr100_torch.pth'))
  row = _score(prepared, tmp_path / 'eval', '--metrics', 'csim', '--face-embedder', str(checkpoint_dir))
  faces = [c == prep_conftest.RED for c in prep_conftest.VIDEO_COLOURS]
  assert [v is None for v in row['per_frame']['csim']] == [not f for f in faces]
  # What the library gives for the clip's own masks and reference (float32: equal to rounding).
  params, config = checkpoint.load(checkpoint_dir, ['face_embedder'])
  clip = prepared / 'test' / 'drive'
  params, config = params['face_embedder'], config.models.face_embedder
  reference = face.iresnet_reference_embedding(params, config, frame_io.load_rgb(clip / 'reference.png'),
                                               frame_io.load_mask(clip / 'reference_face_mask.png'))
  frames = np.stack([frame_io.load_rgb(p) for p in frame_io.list_images(clip / 'images')])
  masks = np.stack([frame_io.load_mask(p) for p in frame_io.list_images(clip / 'faces')])
  expected = face.iresnet_similarity(params, config, frames, masks, reference)
  assert row['csim'] == pytest.approx(expected.mean, abs=1e-6)
  # Flat red crops of two box sizes: the same face but for the crops' bilinear borders.
  assert row['csim'] > 0.99
  assert from_pth['per_frame']['csim'] == row['per_frame']['csim']


def test_a_reference_without_a_face_leaves_csim_undefined(inputs, prepared, tmp_path):
  root = tmp_path / 'copy'
  shutil.copytree(prepared, root)
  clip = root / 'test' / 'drive'
  np.save(clip / 'face_embedding.npy', np.zeros(512, np.float32))      # what sa-prep writes without a face
  argv = ['--metrics', 'l1,csim', '--insightface-root', str(inputs.insightface_root)]
  row = _score(root, tmp_path / 'eval', *argv)
  assert row['csim'] is None and row['no_reference_face'] and 'csim' not in row['per_frame']
  assert 'no face in the reference' in (tmp_path / 'eval' / 'metrics.md').read_text()
  np.save(clip / 'face_embedding.npy', np.zeros(3, np.float32))
  with pytest.raises(SystemExit, match=r'sa-eval: error: .*face_embedding.npy: face embedding has 3 values'):
    _score(root, tmp_path / 'eval2', *argv)
