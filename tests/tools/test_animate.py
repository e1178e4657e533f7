"""sa-animate end to end (demo model and a converted checkpoint) and its input checks."""

import json
import shutil

import imageio_ffmpeg
import jax
import numpy as np
import pytest
from PIL import Image

from configs import animate as animate_config
from sa_jax import animate, diffusion
from sa_jax.checkpoint import CheckpointConfig
from sa_jax.models import stable_animator
from sa_jax.sampling import sampler
from tests import micro_model
from tools import animate as animate_tool

SAMPLE = animate.SAMPLE_DIR
FRAMES = len(list((SAMPLE / 'poses').glob('*.png')))
WIDTH, HEIGHT = Image.open(SAMPLE / 'reference.png').size


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
  with pytest.raises(SystemExit, match='sa-animate: error: outputs exist: .*--overwrite'):
    animate_tool.main(['--out', str(out), '--steps', '2'])


def test_a_later_run_loads_its_programs_instead_of_tracing(tmp_path, monkeypatch):
  """The demo's settings again (stored by the demo test, or here by the first run): a new animator,
  as in a new process, loads the three programs and the parameter shapes from the compilation
  cache's folder, traces nothing and writes the same frames."""
  argv = ['--steps', '2', '--overwrite']
  animate_tool.main(['--out', str(tmp_path / 'first.mp4'), *argv])
  programs = animate.compile_cache_folder() / 'programs'
  assert len(list(programs.glob('*.jaxexport'))) >= 3 and list(programs.glob('*.json'))
  animate.make_animator.cache_clear()
  stable_animator._abstract_params.cache_clear()
  fail = lambda *args, **kwargs: pytest.fail('traced')
  monkeypatch.setattr(jax.export, 'export', fail)
  monkeypatch.setattr(stable_animator, '_abstract_params', fail)
  animate_tool.main(['--out', str(tmp_path / 'again.mp4'), *argv])
  first, again = (sorted((tmp_path / f'{name}_frames').glob('*.png')) for name in ('first', 'again'))
  assert len(first) == FRAMES and [np.asarray(Image.open(p)).tolist() for p in first] == [
      np.asarray(Image.open(p)).tolist() for p in again]


def test_non_finite_output_is_an_error_not_a_black_video(tmp_path, caplog):
  """An embedding so large that the run overflows gives an error instead of a black video (same
  program as the demo test: no new compile). A NaN embedding is refused before compute
  (tests/tools/test_bad_inputs.py)."""
  case = tmp_path / 'case'
  shutil.copytree(SAMPLE, case)
  np.save(case / 'face_embedding.npy', np.full_like(np.load(SAMPLE / 'face_embedding.npy'), 3e38))
  with pytest.raises(SystemExit, match='sa-animate: error: 1 of 1 cases failed'):
    # 0 x 0: the sample's own size, as the demo test runs it (--input alone would generate at 512 x 512).
    animate_tool.main(['--input', str(case), '--out', str(tmp_path / 'x.mp4'), '--steps', '2', '--width', '0',
                       '--height', '0'])
  assert 'the run produced NaN or infinite values' in caplog.text
  assert sorted(p.name for p in tmp_path.iterdir()) == ['case'], 'nothing written'


def test_checkpoint_with_nan_weights_is_refused_before_compute(tmp_path):
  from sa_jax import checkpoint
  params, config = animate.tiny_model()
  params['pose_net']['scale'] = np.full_like(np.asarray(params['pose_net']['scale']), np.nan)
  checkpoint.save(tmp_path / 'ckpt', params, config)
  with pytest.raises(SystemExit, match=r"sa-animate: error: checkpoint .*ckpt: 1 parameter tensors hold NaN .*"
                                       r"\['pose_net'\]\['scale'\]"):
    animate_tool.main(['--checkpoint', str(tmp_path / 'ckpt'), '--input', str(SAMPLE), '--out', str(tmp_path / 'x.mp4'),
                       '--steps', '2'])
  assert not (tmp_path / 'x.mp4').exists()


@pytest.mark.parametrize('make, message', [
    (lambda out: (out.parent / f'{out.stem}_frames').mkdir() or (out.parent / f'{out.stem}_frames' / 'notes.txt')
     .write_text('mine'), 'is not an sa-animate output'),
    (lambda out: out.mkdir() or (out / 'a.txt').write_text('mine'), 'is not an sa-animate output'),
], ids=['foreign-file-in-frames', 'folder-named-like-the-video'])
def test_overwrite_refuses_what_it_did_not_write(tmp_path, make, message):
  out = tmp_path / 'x.mp4'
  make(out)
  before = sorted(str(p) for p in tmp_path.rglob('*'))
  with pytest.raises(SystemExit, match=f'sa-animate: error: .*{message}'):
    animate_tool.main(['--out', str(out), '--steps', '2', '--overwrite'])
  assert sorted(str(p) for p in tmp_path.rglob('*')) == before


def test_output_may_not_hold_an_input(tmp_path):
  """`--out out.mp4` would replace `out_frames/`, which here is the input case folder."""
  frames = tmp_path / 'out_frames'
  shutil.copytree(SAMPLE, frames)
  with pytest.raises(SystemExit, match='sa-animate: error: output .*out_frames is or holds the input'):
    animate_tool.main(['--input', str(frames), '--out', str(tmp_path / 'out.mp4'), '--steps', '2', '--overwrite'])
  assert sorted(p.name for p in frames.iterdir()) == sorted(p.name for p in SAMPLE.iterdir())


@pytest.mark.heavy
def test_checkpoint_with_face_correction(tmp_path):
  out = tmp_path / 'hjb.mp4'
  width, height = Image.open(SAMPLE / 'reference.png').size
  # The micro model with a face embedder (HJB's values are checked against the original in
  # tests/parity; here, that sa-animate runs it from a checkpoint). The sample's first 4 frames, all
  # in one decode chunk: the face-loss gradient then traces the decoder and the face embedder once,
  # not again for a tail chunk (the tail is tested in tests/sampling/test_hjb.py and test_sampler.py).
  checkpoint_dir = micro_model.write_checkpoint(tmp_path / 'micro', face_embedder=True)
  frames = 4
  animate_tool.main(['--checkpoint', str(checkpoint_dir), '--input', str(SAMPLE), '--out', str(out),
                     '--width', str(width), '--height', str(height), '--num-frames', str(frames), '--steps', '2',
                     '--hjb', '--hjb-start', '1', '--hjb-end', '1', '--hjb-iterations', '1',
                     '--decode-chunk-size', str(frames)])
  _check_outputs(out, frames, (width, height))


@pytest.fixture
def case(tmp_path):
  """A writable copy of the sample input folder."""
  folder = tmp_path / 'case'
  shutil.copytree(SAMPLE, folder)
  return folder


@pytest.fixture(scope='module')
def demo():
  return animate.tiny_model()


@pytest.fixture(scope='module')
def micro(micro_checkpoint):
  """The session's micro model (tests/micro_model.py), read as sa-animate reads a checkpoint."""
  from sa_jax import checkpoint
  return checkpoint.load(micro_checkpoint)


def _settings(width=0, height=0, hjb=False, steps=2, **io):
  run = animate_config.get_config()
  run.io.update(width=width, height=height, **io)
  run.hjb.enabled = hjb
  run.sampler.num_steps = steps
  run.io.compile_cache = False
  return run


def _run(demo, folder, **options):
  params, config = demo
  return animate.animate(params, config, animate.Inputs(folder=folder), _settings(**options))


def _mask(path, fill=None, size=None):
  mask = np.array(Image.open(path))
  if fill is not None:
    mask[:] = fill
  image = Image.fromarray(mask)
  (image.resize(size) if size else image).save(path)


@pytest.mark.parametrize('change, options, message', [
    (None, dict(width=100, height=128), 'not a multiple of 64'),
    (lambda c: (c / 'faces' / f'frame_{FRAMES - 1}.png').unlink(), dict(hjb=True),
     f'{FRAMES - 1} face masks .* but {FRAMES} poses'),
    (lambda c: _mask(c / 'faces' / 'frame_2.png', size=(32, 48)), dict(hjb=True),
     f'frame_2.png is 32x48; masks must be at the generation size {WIDTH}x{HEIGHT}'),
    (lambda c: _mask(c / 'faces' / 'frame_3.png', fill=0), dict(hjb=True), 'frame_3.png: no face pixel'),
    (lambda c: _mask(c / 'reference_face_mask.png', size=(32, 48)), dict(hjb=True),
     f'reference face mask .* is 32x48, the reference image {WIDTH}x{HEIGHT}'),
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
  bigger = json.loads(json.dumps(config.to_json()))
  bigger['models']['pose_net']['noise_latent_channels'] = 64
  with pytest.raises(ValueError, match='pose_net.noise_latent_channels 64 != unet.block_out_channels'):
    CheckpointConfig.from_json(bigger)
  wider = json.loads(json.dumps(config.to_json()))
  wider['models']['vae']['block_out_channels'] = [64, 64, 32, 32]
  with pytest.raises(ValueError, match=r'(?s)do not fit its config \(76\):.*\n  vae/decoder/conv_out/kernel: '
                     r'checkpoint \(3, 3, 32, 3\), config \(3, 3, 64, 3\)'):
    animate.animate(params, CheckpointConfig.from_json(wider), animate.Inputs(folder=case), _settings())
  without_embedder = {k: v for k, v in params.items() if k != 'face_embedder'}
  with pytest.raises(ValueError, match='needs the face embedder'):
    animate.animate(without_embedder, config, animate.Inputs(folder=case), _settings(hjb=True))


def test_unknown_config_keys_are_refused(demo, tmp_path, capsys):
  with pytest.raises(SystemExit):
    animate_tool.main(['--out', str(tmp_path / 'x.mp4'), '--config.sampler.num_step=3'])
  assert 'num_step' in capsys.readouterr().err
  data = demo[1].to_json()
  with pytest.raises(ValueError, match=r"unknown keys \['sheduler'\]"):
    CheckpointConfig.from_json({**data, 'sheduler': {}})
  with pytest.raises(ValueError, match=r"unknown networks \['pose_nets'\]"):
    CheckpointConfig.from_json({**data, 'models': {**data['models'], 'pose_nets': {}}})
  assert CheckpointConfig.from_json(json.loads(json.dumps(data))) == demo[1]


def test_config_overrides_and_short_flags_set_the_same_fields():
  run = animate_tool.run_config(animate_tool.DEFAULT_CONFIG, ['--config.sampler.num_steps=7',
                                                              '--config.sampler.min_guidance=1.5'])
  assert run.sampler.num_steps == 7 and run.sampler.min_guidance == 1.5
  config = sampler.SamplerConfig.from_config(run, diffusion.ScheduleConfig(), 3)
  assert (config.min_guidance, config.max_guidance, config.tile_size, config.tile_overlap) == (1.5, 3.0, 3, 2)
  default = sampler.SamplerConfig.from_config(animate_config.get_config(), diffusion.ScheduleConfig(), 30)
  assert default.min_guidance == default.max_guidance, 'min guidance defaults to the guidance (no ramp)'


@pytest.mark.heavy
def test_batched_cases_equal_one_at_a_time(micro, micro_checkpoint, tmp_path):
  """Two cases in one compiled batch give the frames each gives alone; a broken case is reported
  by index and does not stop the others; --num-frames takes the first poses. (The micro model: the
  batching does not depend on the model's size.)"""
  params, config = micro
  first, second, broken = (tmp_path / n for n in ('a', 'b', 'broken'))
  for folder in (first, second, broken):
    shutil.copytree(SAMPLE, folder)
  np.save(second / 'face_embedding.npy', np.random.default_rng(1).standard_normal(512).astype(np.float32))
  np.save(broken / 'face_embedding.npy', np.zeros(7))
  run = _settings(num_frames=FRAMES - 1, batch_size=2)
  run.sampler.decode_chunk_size = 3       # a tail chunk too; the mesh test below reuses the one-video programs
  cases = [animate.Inputs(folder=f) for f in (first, broken, second)]
  results = dict(animate.animate_cases(params, config, cases, run))
  assert isinstance(results[1], ValueError) and 'has 7 values' in str(results[1])
  for index, folder in ((0, first), (2, second)):
    alone = animate.animate(params, config, animate.Inputs(folder=folder), run)[0]
    assert results[index].shape == alone.shape == (FRAMES - 1,) + alone.shape[1:]
    diff = np.abs(results[index].astype(np.int16) - alone.astype(np.int16))
    # The same maths on a batch of 2 vs 1 may round differently (float32): within one uint8 level.
    assert diff.max() <= 1, f'case {index}: batched frames differ from one-at-a-time by {diff.max()} levels'
  assert np.abs(results[0].astype(np.int16) - results[2].astype(np.int16)).max() > 1, \
      'different face embeddings must give different videos'
  out = tmp_path / 'out'
  # The settings of `run`, so the batch's program is reused, not compiled again; 0: the sample's size.
  animate_tool.main(['--checkpoint', str(micro_checkpoint), '--input', str(first), str(second), '--out', str(out),
                     '--steps', '2', '--batch-size', '2', '--num-frames', str(FRAMES - 1), '--decode-chunk-size', '3',
                     '--width', '0', '--height', '0', '--no-compile-cache'])
  for name in ('a', 'b'):
    _check_outputs(out / f'{name}.mp4', FRAMES - 1, Image.open(SAMPLE / 'reference.png').size)


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


@pytest.mark.heavy
def test_mesh_run_matches_one_device(micro_checkpoint, tmp_path):
  """sa-animate --mesh data=2,fsdp=4 (8 simulated devices) loads the checkpoint into its shardings,
  stores its sharded programs and gives the frames of a one-device run (the micro model's
  checkpoint: loading and sharding do not depend on the model's size)."""
  width, height = Image.open(SAMPLE / 'reference.png').size
  # The settings of the batched test's one-video runs (4 frames, decode chunks of 3 and 1): in one
  # session the one-device run reuses their programs.
  frames = FRAMES - 1
  common = ['--checkpoint', str(micro_checkpoint), '--input', str(SAMPLE), str(SAMPLE.parent / 'sample'),
            '--steps', '2', '--width', str(width), '--height', str(height), '--num-frames', str(frames),
            '--decode-chunk-size', '3', '--no-compile-cache']
  with pytest.raises(SystemExit, match='share names'):
    animate_tool.main(common + ['--out', str(tmp_path / 'never')])
  common = common[:3] + [str(SAMPLE)] + common[5:]
  animate_tool.main(common + ['--out', str(tmp_path / 'one.mp4')])
  # Its sharded programs are stored (program_cache), as sa-animate does by default: here in a folder
  # of its own (the session's is shared with other tests' runs). JAX's compilation cache of this
  # process, opened once, stays the session's.
  folder = tmp_path / 'cache'
  session_cache = jax.config.jax_compilation_cache_dir
  try:
    animate_tool.main(common[:-1] + ['--out', str(tmp_path / 'mesh.mp4'), '--mesh', 'data=2,fsdp=4',
                                     f'--config.io.compile_cache_dir={folder}'])
  finally:
    jax.config.update('jax_compilation_cache_dir', session_cache)
  assert len(list((folder / 'programs').glob('*.jaxexport'))) == 3
  assert [len(list((tmp_path / f'{n}_frames').glob('frame_*.png'))) for n in ('one', 'mesh')] == [frames, frames]
  for i in range(frames):
    one, mesh = (np.asarray(Image.open(tmp_path / f'{n}_frames' / f'frame_{i}.png'), np.int16)
                 for n in ('one', 'mesh'))
    # Sharded reductions sum in another order (float32): within one uint8 level.
    assert np.abs(one - mesh).max() <= 1, f'frame {i}'


@pytest.mark.parametrize('flags, message', [
    (['--batch-size', '0'], 'io.batch_size is 0; expected >= 1'),
    (['--steps', '0'], 'sampler.num_steps is 0; expected >= 1'),
    (['--dtype', 'float16'], "dtype 'float16'"),
])
def test_bad_run_settings_fail_before_any_work(tmp_path, flags, message):
  with pytest.raises(SystemExit, match=f'sa-animate: error: {message}'):
    animate_tool.main(['--out', str(tmp_path / 'x.mp4'), '--no-compile-cache', *flags])
  assert not any(tmp_path.iterdir())
