"""sa-animate end to end (demo model and a converted checkpoint) and its input checks."""

import json
import shutil

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from sa_jax import animate
from tools import animate as animate_tool

SAMPLE = animate.SAMPLE_DIR
FRAMES = len(list((SAMPLE / 'poses').glob('*.png')))


def _check_outputs(out, frames, size):
  reader = imageio_ffmpeg.read_frames(str(out))
  meta = next(reader)
  assert tuple(meta['size']) == size and meta['codec'] == 'h264'
  assert sum(1 for _ in reader) == frames
  with Image.open(out.with_suffix('.gif')) as gif:
    assert gif.n_frames == frames and gif.size == size
  pngs = sorted((out.parent / f'{out.stem}_frames').glob('frame_*.png'))
  assert len(pngs) == frames and Image.open(pngs[0]).size == size
  assert not [p for p in out.parent.iterdir() if p.name.startswith('.')], 'staging left behind'


def test_demo_animates_the_bundled_sample(tmp_path, caplog):
  out = tmp_path / 'out' / 'sample.mp4'
  animate_tool.main(['--out', str(out), '--steps', '2'])
  assert 'DEMO model' in caplog.text
  _check_outputs(out, FRAMES, Image.open(SAMPLE / 'reference.png').size)
  with pytest.raises(FileExistsError, match='--overwrite'):
    animate_tool.main(['--out', str(out), '--steps', '2'])


@pytest.mark.heavy
def test_checkpoint_with_face_correction(checkpoint_dir, tmp_path):
  out = tmp_path / 'hjb.mp4'
  width, height = Image.open(SAMPLE / 'reference.png').size
  animate_tool.main(['--checkpoint', str(checkpoint_dir), '--input', str(SAMPLE), '--out', str(out),
                     '--width', str(width), '--height', str(height), '--steps', '2', '--hjb',
                     '--hjb-start', '1', '--hjb-end', '1', '--hjb-iterations', '1'])
  _check_outputs(out, FRAMES, (width, height))


@pytest.fixture
def case(tmp_path):
  """A writable copy of the sample input folder."""
  folder = tmp_path / 'case'
  shutil.copytree(SAMPLE, folder)
  return folder


@pytest.fixture(scope='module')
def demo():
  return animate.demo_model()


def _run(demo, folder, **options):
  params, config = demo
  size = dict(width=None, height=None)
  return animate.animate(params, config, animate.Inputs(folder=folder), animate.Options(**{**size, **options}))


def _mask(path, fill=None, size=None):
  mask = np.array(Image.open(path))
  if fill is not None:
    mask[:] = fill
  image = Image.fromarray(mask)
  (image.resize(size) if size else image).save(path)


@pytest.mark.parametrize('change, options, message', [
    (None, dict(width=100, height=128), 'not a multiple of 64'),
    (lambda c: (c / 'faces' / 'frame_4.png').unlink(), dict(hjb=True), '4 face masks .* but 5 poses'),
    (lambda c: _mask(c / 'faces' / 'frame_2.png', size=(32, 64)), dict(hjb=True),
     'frame_2.png is 32x64; masks must be at the generation size 64x128'),
    (lambda c: _mask(c / 'faces' / 'frame_3.png', fill=0), dict(hjb=True), 'frame_3.png: no face pixel'),
    (lambda c: _mask(c / 'reference_face_mask.png', size=(64, 64)), dict(hjb=True),
     'reference face mask .* is 64x64, the reference image 64x128'),
    (lambda c: (c / 'faces').rename(c / 'elsewhere'), dict(hjb=True), 'needs per-frame face masks'),
    (lambda c: np.save(c / 'face_embedding.npy', np.zeros(10)), {}, 'has 10 values, the face encoder needs 512'),
    (lambda c: (c / 'face_embedding.npy').unlink(), {}, 'no face embedding'),
    (lambda c: shutil.rmtree(c / 'poses'), {}, 'need a reference image and a pose folder'),
])
def test_bad_inputs_are_reported_before_any_work(demo, case, change, options, message):
  if change is not None:
    change(case)
  with pytest.raises(ValueError, match=message):
    _run(demo, case, **options)


def test_checkpoint_mismatch_is_listed(demo, case):
  params, config = demo
  bigger = json.loads(json.dumps(config))
  bigger['models']['pose_net']['noise_latent_channels'] = 64
  with pytest.raises(ValueError, match='pose_net.noise_latent_channels 64 != unet.block_out_channels'):
    animate.animate(params, bigger, animate.Inputs(folder=case), animate.Options(width=None, height=None))
  wider = json.loads(json.dumps(config))
  wider['models']['vae']['block_out_channels'] = [64, 64, 32, 32]
  with pytest.raises(ValueError, match=r'(?s)do not fit its config \(76\):.*\n  vae/decoder/conv_out/kernel: '
                     r'checkpoint \(3, 3, 32, 3\), config \(3, 3, 64, 3\)'):
    animate.animate(params, wider, animate.Inputs(folder=case), animate.Options(width=None, height=None))
  without_embedder = {k: v for k, v in params.items() if k != 'face_embedder'}
  with pytest.raises(ValueError, match='needs the face embedder'):
    animate.animate(without_embedder, config, animate.Inputs(folder=case),
                    animate.Options(width=None, height=None, hjb=True))


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
  frames = np.zeros((3, 64, 64, 3), np.uint8)
  out = tmp_path / 'video.mp4'

  def broken_save(self, *args, **kwargs):
    raise OSError('disk full')

  monkeypatch.setattr(Image.Image, 'save', broken_save)
  with pytest.raises(OSError, match='disk full'):
    animate.write_outputs(frames, out, fps=7)
  assert list(tmp_path.iterdir()) == []
  with pytest.raises(ValueError, match='must end in .mp4'):
    animate.write_outputs(frames, tmp_path / 'video.avi', fps=7)
