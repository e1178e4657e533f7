"""The assembled trainer: sharded step vs one device, FSDP really splitting the state, kill and
resume, two processes vs one, the NaN stop, export to the release files, and sa-train's errors.

The model is the session's micro model (tests/micro_model.py: the tiny config cut to one UNet level,
one layer per block) with seeded random weights, written as an sa-jax checkpoint: the step compiles
in ~25 s on two cores. The runs that cross a process boundary (kill, resume, jax.distributed) share
a compilation cache.
"""

import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

from configs import svd_xt
from configs import train as train_configs
from sa_jax import animate, checkpoint, diffusion, outputs, sharding
from sa_jax.data import clips, synthetic
from sa_jax.models.stable_animator import ModelConfigs
from sa_jax.training import optimizer, trainer
from sa_jax.training import step as step_lib
from tests import conftest
from tools import train as train_tool

REPO = Path(__file__).resolve().parents[2]
SIZE, FRAMES, STEPS = 32, 2, 6
RUN_SIZE = 64   # the subprocess runs also make a validation video, which sa-animate makes at multiples of 64
LEARNING_RATE = 1e-4


@pytest.fixture(scope='module')
def init_dir(micro_checkpoint):
  return micro_checkpoint


@pytest.fixture(scope='module')
def clip_root(tmp_path_factory):
  """Three good synthetic clips and one whose poses lack a frame."""
  root = tmp_path_factory.mktemp('clips') / 'clips'
  written = synthetic.write_clips(root, 4, num_frames=12, width=SIZE, height=SIZE, seed=3)
  (written[-1] / 'poses' / 'frame_5.png').unlink()
  return root


def run_config(init_dir, clip_root, **overrides):
  config = train_configs.get_config('tiny')
  config.model.init = str(init_dir)
  config.data.roots = str(clip_root)
  config.data.update(width=SIZE, height=SIZE, num_frames=FRAMES, worker_count=0)
  config.update(num_steps=STEPS, log_every=1, compile_cache=False)
  config.optimizer.learning_rate = LEARNING_RATE
  config.checkpoint.every = 2
  for dotted, value in overrides.items():
    *path, leaf = dotted.split('__')
    node = config
    for part in path:
      node = node[part]
    node[leaf] = value
  return config


def _first_batch(config, batch_size):
  loader = clips.make_loader(trainer.data_config(config), batch_size=batch_size)
  return next(iter(loader))


# --------------------------------------------------------------------------- in-process: sharding

# The sharded runs of the step and their devices: data x fsdp x context on all 8, and context alone
# on 2 (its 4 videos per batch shard take the re-splitting path of docs/training.md).
MESHES = (('mesh', {'data': 2, 'fsdp': 2, 'context': 2}, 8), ('context', {'context': 2}, 2))
SHARDED_FRAMES = 4   # two per device on the context axis: a halo on each side of the inner frames


def test_sharded_step_equals_one_device_and_fsdp_splits_the_state(init_dir, clip_root):
  config = run_config(init_dir, clip_root, data__num_frames=SHARDED_FRAMES)
  ckpt = trainer.model_config(config)
  step_config = trainer.step_config(config, ckpt)
  params, _ = checkpoint.load(init_dir)
  batch = _first_batch(config, 4)   # one video per data x fsdp shard
  key = jax.random.key(config.seed)
  results, compiled, assemblies, batches = {}, {}, {}, {}
  for name, shape, count in (('one', {}, 1),) + MESHES:
    mesh = sharding.make_mesh(shape, jax.devices()[:count])
    assembly = assemblies[name] = trainer.assemble(step_config, mesh, sharding.LOGICAL_RULES)
    state = trainer.initial_state(assembly, params)
    global_batch = batches[name] = trainer.global_batch(batch, assembly.batch_shardings)
    compiled[name] = assembly.train_step.lower(state, global_batch, key).compile()
    results[name] = compiled[name](state, global_batch, key)
  one_state, one_metrics = results['one']

  # The forward and backward differ only in reduction order and partitioning. A float32 sum of n
  # terms reordered differs by at most ~n EPS32 of the sum of magnitudes (EPS32 = 1.2e-7); the
  # loss and the norms are means/sums of positive terms, and the longest reduction here (a
  # 32-channel GroupNorm over 4 frames of a 4x4 map, a few hundred terms per row) gives a few 1e-6
  # relative: 1e-5 relative.
  # One AdamW step moves each parameter by lr * m / (sqrt(v) + eps) + lr * wd * p, at most
  # about lr (|m / sqrt(v)| <= 1 on the first step) plus the decay; a rounding-level gradient
  # difference can flip the sign of a tiny gradient's update, so elementwise the two differ by
  # at most 2 lr (1 + wd |p|).
  wd = config.optimizer.weight_decay
  _, frozen = optimizer.partition(params)
  for mesh_name, _, _ in MESHES:
    mesh_state, mesh_metrics = results[mesh_name]
    for name in ('loss', 'grad_norm', 'grad_norm/unet', 'grad_norm/pose_net', 'grad_norm/face_encoder'):
      np.testing.assert_allclose(mesh_metrics[name], one_metrics[name], rtol=1e-5, err_msg=f'{mesh_name}: {name}')
    for path, a in traverse_util.flatten_dict(one_state['params']).items():
      b = traverse_util.flatten_dict(mesh_state['params'])[path]
      bound = 2 * LEARNING_RATE * (1 + wd * np.abs(np.asarray(a))) + 1e-7 * np.abs(np.asarray(a))
      assert np.all(np.abs(np.asarray(a) - np.asarray(b)) <= bound), f'{mesh_name}: {"/".join(path)}'
    # The frozen parameters come back from the step bit for bit (they are not differentiated).
    for (path, want), got in zip(jax.tree_util.tree_flatten_with_path(frozen)[0],
                                 jax.tree.leaves(jax.device_get(mesh_state['frozen']))):
      np.testing.assert_array_equal(got, want, err_msg=f'{mesh_name}: {jax.tree_util.keystr(path)}')
    # Context: each device holds half of every video's frames (and the videos of its batch shard).
    for field in ('frames', 'poses', 'face_masks'):
      shards = getattr(batches[mesh_name], field).addressable_shards
      assert {s.data.shape[1] for s in shards} == {SHARDED_FRAMES // 2}, (mesh_name, field)

  # FSDP: the parameters and optimiser moments live in quarters on the fsdp x context axes (plus
  # the few arrays too small or not divisible to split, as in the context=2 halves below).
  mesh_state = results['mesh'][0]
  device = jax.devices()[0]
  on_device = lambda tree: sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards
                               if s.device == device)
  total = sum(x.nbytes for x in jax.tree.leaves(mesh_state))
  assert 0.245 < on_device(mesh_state) / total < 0.30, f'{on_device(mesh_state) / total:.3f} of the state on one device'
  unsplit = [x for x in jax.tree.leaves(mesh_state) if x.size > 1024 and x.sharding.shard_shape(x.shape) == x.shape]
  assert not unsplit, f'{len(unsplit)} large state arrays are replicated'
  # XLA's estimate sees the same split: its per-device arguments are this device's state plus its
  # slice of the batch (and the key), and the donated state is aliased to the output.
  memory = trainer.memory_gib(compiled['mesh'])
  np.testing.assert_allclose(memory['argument'] * 2 ** 30, on_device(mesh_state) + on_device(batches['mesh']),
                             rtol=0.02)
  assert memory['alias'] * 2 ** 30 >= 0.9 * on_device(mesh_state) and memory['total'] > memory['argument']
  # Context alone splits the state as fsdp does (the devices that share a video share its state)
  # and the activations: the temporaries of context=2 are at most the gradients (reduced whole
  # before they are split) plus half of the rest of one device's, with a tenth of that for XLA's
  # buffer placement.
  context_state = results['context'][0]
  assert 0.49 < on_device(context_state) / total < 0.55, f'{on_device(context_state) / total:.3f} on one device'
  temp = {name: trainer.memory_gib(compiled[name])['temp'] * 2 ** 30 for name in ('one', 'context')}
  grads = sum(x.nbytes for x in jax.tree.leaves(one_state['params']))
  assert temp['context'] <= 1.1 * (grads + (temp['one'] - grads) / 2), (temp, grads)

  # A batch without a valid video, and one whose loss is not finite (a NaN face embedding), change
  # nothing but the step count, on one device and on the mesh; the second reports it (the trainer
  # then stops). Each call gets a copy of the state: the step donates it.
  invalid_videos = int(np.sum(~np.asarray(batch['valid'], bool)))    # the clip without a frame, if drawn
  bad_batches = (('invalid', dict(batch, valid=np.zeros_like(batch['valid'])), 4, 1),
                 ('non-finite', dict(batch, face_embedding=np.full_like(batch['face_embedding'], np.nan)),
                  invalid_videos, 0))
  for mesh_name in ('one', 'mesh'):
    state = results[mesh_name][0]
    before = jax.device_get(state)
    for name, bad, skipped, finite in bad_batches:
      label = f'{mesh_name}, {name}'
      after, metrics = compiled[mesh_name](jax.tree.map(jnp.copy, state),
                                           trainer.global_batch(bad, assemblies[mesh_name].batch_shardings), key)
      assert int(after['step']) == int(before['step']) + 1, label
      assert (float(metrics['skipped_videos']), float(metrics['finite'])) == (skipped, finite), label
      for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(before['params'])[0],
                              jax.tree.leaves(jax.device_get(after['params']))):
        np.testing.assert_array_equal(a, b, err_msg=f'{label}: {jax.tree_util.keystr(path)}')


# ------------------------------------------------------------------------------------ subprocesses

def _command(workdir, init_dir, clip_root, *extra):
  return [sys.executable, '-m', 'tools.train', '--config', f'{REPO}/configs/train.py:tiny',
          f'--workdir={workdir}', '--noprogress', f'--config.model.init={init_dir}',
          f'--config.data.roots={clip_root}', f'--config.data.width={RUN_SIZE}', f'--config.data.height={RUN_SIZE}',
          f'--config.data.num_frames={FRAMES}', '--config.data.worker_count=0', f'--config.num_steps={STEPS}',
          f'--config.validation.every={STEPS}', f'--config.validation.case={animate.SAMPLE_DIR}',
          '--config.validation.num_steps=2',
          '--config.log_every=1', '--config.checkpoint.every=2', f'--config.optimizer.learning_rate={LEARNING_RATE}',
          *extra]


def _env(devices):
  """The runs' environment: the session's compilation cache ($XDG_CACHE_HOME, tests/conftest.py)."""
  return dict(os.environ, XLA_FLAGS=conftest.xla_flags(devices), PYTHONPATH=str(REPO))


def _metric_lines(workdir):
  return [json.loads(line) for line in (Path(workdir) / 'metrics.jsonl').read_text().splitlines()]


def _losses(workdir):
  # The training steps' lines (a validation case with ground truth, as the sample, adds its scores at its step)
  lines = [m for m in _metric_lines(workdir) if 'loss' in m]
  steps = [m['step'] for m in lines]
  assert len(set(steps)) == len(steps), f'metrics.jsonl repeats steps: {steps}'
  return {m['step']: {k: v for k, v in m.items() if k != 'steps_per_second'} for m in lines}


def _final_state(workdir):
  """`{key path: numpy array}` of the last step's saved state."""
  path = Path(workdir) / 'checkpoints' / str(STEPS) / 'state'
  leaves, _ = jax.tree_util.tree_flatten_with_path(ocp.StandardCheckpointer().restore(path))
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, init_dir, clip_root):
  workdir = tmp_path_factory.mktemp('run') / 'uninterrupted'
  subprocess.run(_command(workdir, init_dir, clip_root, '--config.mesh.shape=data=2'), env=_env(2),
                 cwd=REPO, check=True, timeout=600)
  return workdir


@pytest.mark.heavy
def test_run_writes_metrics_and_a_validation_video(uninterrupted):
  losses = _losses(uninterrupted)
  assert all(np.isfinite(m['loss']) and m['valid_videos'] + m['skipped_videos'] == 2 for m in losses.values())
  assert any(m['skipped_videos'] > 0 for m in losses.values()), 'the bad clip was never drawn'
  assert list((uninterrupted / 'tensorboard').iterdir()), 'no TensorBoard events'
  video = uninterrupted / 'validation' / f'step_{STEPS:06d}.mp4'
  assert video.is_file() and video.stat().st_size > 0
  scores = [m for m in _metric_lines(uninterrupted) if 'validation/psnr' in m]
  assert [m['step'] for m in scores] == [STEPS] and np.isfinite(scores[0]['validation/psnr']), 'no validation scores'


@pytest.mark.heavy
def test_killed_run_resumes_identically(tmp_path, uninterrupted, init_dir, clip_root):
  workdir = tmp_path / 'killed'
  # (No validation video: it comes after the last step, and the run test checks it.)
  command = _command(workdir, init_dir, clip_root, '--config.mesh.shape=data=2', '--config.validation.every=0')
  # Killed after a random number of logged steps, once the (asynchronous) checkpoint of step 2 is
  # complete, so that the second run really resumes; later saves may be cut mid-write.
  kill_after = random.Random().randrange(3, STEPS)
  process = subprocess.Popen(command, env=_env(2), cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  metrics, first_checkpoint = workdir / 'metrics.jsonl', workdir / 'checkpoints' / '2'
  deadline = time.monotonic() + 600
  while time.monotonic() < deadline and process.poll() is None:
    if (first_checkpoint.is_dir() and metrics.exists()
        and len(metrics.read_text().splitlines()) >= kill_after):
      break
    time.sleep(0.01)
  assert process.poll() is None, 'the run ended before it could be killed'
  process.send_signal(signal.SIGKILL)
  process.wait()
  resumed = subprocess.run(command, env=_env(2), cwd=REPO, check=True, timeout=600,
                           stderr=subprocess.PIPE, text=True)
  assert 'resumed from step' in resumed.stderr, resumed.stderr[-2000:]

  expected = _losses(uninterrupted)
  assert sorted(expected) == list(range(1, STEPS + 1))
  assert _losses(workdir) == expected, f'killed after {kill_after} logged steps'
  want, got = _final_state(uninterrupted), _final_state(workdir)
  assert want.keys() == got.keys()
  for path in want:
    np.testing.assert_array_equal(got[path], want[path], err_msg=path)


@pytest.mark.heavy
def test_two_processes_agree_with_one(tmp_path, uninterrupted, init_dir, clip_root):
  workdir = tmp_path / 'two'
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  processes = [subprocess.Popen(
      # (No validation video: the run test checks it, and its programs would compile again for two processes.)
      _command(workdir, init_dir, clip_root, '--config.mesh.shape=data=2', '--config.validation.every=0',
               '--config.distributed.enabled=True',
               f'--config.distributed.coordinator_address=localhost:{port}',
               '--config.distributed.num_processes=2', f'--config.distributed.process_id={i}'),
      env=_env(1), cwd=REPO, stderr=subprocess.PIPE, text=True) for i in range(2)]
  errors = [p.communicate(timeout=600)[1] for p in processes]
  for p, err in zip(processes, errors):
    assert p.returncode == 0, err[-3000:]
  expected, got = _losses(uninterrupted), _losses(workdir)
  assert sorted(got) == sorted(expected)
  # Same global batches and draws, the same partitioned program with its collectives across two
  # processes instead of within one: at most the reordering of the cross-device sums, the bound of
  # the sharded test above (1e-5 relative).
  for step in expected:
    np.testing.assert_allclose(got[step]['loss'], expected[step]['loss'], rtol=1e-5, err_msg=f'step {step}')


@pytest.mark.heavy
def test_export_writes_the_release_files(tmp_path, uninterrupted, init_dir, clip_root):
  from convert import release
  out = tmp_path / 'release'
  train_tool.main(['--config', f'{REPO}/configs/train.py:tiny', f'--workdir={uninterrupted}',
                   f'--config.model.init={init_dir}', f'--config.data.roots={clip_root}',
                   f'--config.data.width={RUN_SIZE}', f'--config.data.height={RUN_SIZE}',
                   f'--config.data.num_frames={FRAMES}', f'--export={out}'])
  assert sorted(p.name for p in out.iterdir()) == sorted([*release.TRAINED_FILES.values(), release.MANIFEST])
  init, ckpt = checkpoint.load(init_dir)
  state = _final_state(uninterrupted)
  for name, file in release.TRAINED_FILES.items():
    exported = traverse_util.flatten_dict(release.CONVERTERS[name].load(out / file, getattr(ckpt.models, name)))
    before = traverse_util.flatten_dict(init[name])
    for path, value in exported.items():
      if optimizer.is_trainable(name, path):
        saved = state[jax.tree_util.keystr(tuple(jax.tree_util.DictKey(k) for k in ('params', name) + path))]
        np.testing.assert_array_equal(value, saved, err_msg=f'{name} {path}')
      else:
        np.testing.assert_array_equal(value, before[path], err_msg=f'{name} {path}')
  with pytest.raises(SystemExit, match='sa-train: error: .*exist'):
    train_tool.main(['--config', f'{REPO}/configs/train.py:tiny', f'--workdir={uninterrupted}',
                     f'--config.model.init={init_dir}', f'--config.data.roots={clip_root}', f'--export={out}'])


@pytest.mark.heavy
def test_export_checkpoint_is_an_sa_jax_checkpoint_of_the_step(tmp_path, uninterrupted):
  out = tmp_path / 'model'
  train_tool.main([f'--workdir={uninterrupted}', f'--export_checkpoint={out}'])
  params, ckpt = checkpoint.load(out)
  saved = trainer.saved_settings(uninterrupted)[1]
  assert ckpt.models == checkpoint.CheckpointConfig.from_json(saved['model_config']).models
  assert ckpt.source == f'sa-train --workdir {uninterrupted}: step {STEPS}'
  want = trainer.exported_params(uninterrupted)
  assert jax.tree.structure(params) == jax.tree.structure(want)
  jax.tree.map(np.testing.assert_array_equal, params, want)
  with pytest.raises(SystemExit, match='sa-train: error: .*exist'):
    train_tool.main([f'--workdir={uninterrupted}', f'--export_checkpoint={out}'])
  with pytest.raises(SystemExit, match='sa-train: error: --export and --export_checkpoint'):
    train_tool.main([f'--workdir={uninterrupted}', f'--export_checkpoint={out}', f'--export={tmp_path / "r"}'])


def _batch_reading_step(monkeypatch, finite_steps=None):
  """Replaces the train step by one that only reads the batch: it counts the step, reports the mean
  pixel as its loss and the batch's width, and from step `finite_steps` on (0-based; None: never) a
  non-finite loss. For the tests of the loop around the step, not of its maths."""
  original = step_lib.make_train_step

  def make_train_step(config):
    _, tx = original(config)

    def train_step(state, batch, key):
      pixels = jnp.mean(batch.frames.astype(jnp.float32))
      finite = jnp.float32(1) if finite_steps is None else (state['step'] < finite_steps).astype(jnp.float32)
      return dict(state, step=state['step'] + 1), dict(
          loss=pixels, grad_norm=pixels, finite=finite, valid_videos=jnp.sum(batch.valid.astype(jnp.float32)),
          skipped_videos=jnp.float32(0), width=jnp.float32(batch.frames.shape[3]))
    return train_step, tx

  monkeypatch.setattr(step_lib, 'make_train_step', make_train_step)


def test_each_training_size_compiles_the_step_once(tmp_path, init_dir, clip_root, monkeypatch, caplog):
  """Two sizes (a root written WxH:path), 6 steps, one size per step: the trainer's jitted step is
  compiled once per size (what is counted is the loop feeding both shapes to one jitted function)."""
  _batch_reading_step(monkeypatch)
  config = run_config(init_dir, clip_root, num_steps=6, checkpoint__every=6)
  config.data.roots = f'{clip_root},{2 * SIZE}x{SIZE}:{clip_root}'
  with jax.log_compiles(True), caplog.at_level(logging.WARNING):
    trainer.train(config, tmp_path / 'sizes', progress=False)
  compiled = [r for r in caplog.records if 'Finished XLA compilation' in r.getMessage()
              and 'step_on_mesh' in r.getMessage()]
  widths = [m['width'] for m in _losses(tmp_path / 'sizes').values()]
  assert sorted(set(widths)) == [SIZE, 2 * SIZE] and len(compiled) == 2, (widths, len(compiled))


# ------------------------------------------------------------------------------------ NaN and errors

def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, init_dir, clip_root, monkeypatch):
  """The loop around the step (which reports a non-finite loss as `finite` 0 and keeps its state:
  the sharded step test): a checkpoint each step, a non-finite loss at step 3."""
  _batch_reading_step(monkeypatch, finite_steps=2)
  config = run_config(init_dir, clip_root, checkpoint__every=1)
  workdir = tmp_path / 'nan'
  with pytest.raises(trainer.TrainingError, match=r'step 3: the loss or the gradients are not finite.* '
                                                  r'the last good checkpoint is step 2$'):
    trainer.train(config, workdir, progress=False)
  steps = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
  assert steps == [1, 2]
  assert sorted(_losses(workdir)) == [1, 2, 3], 'the failed step is logged'


def test_a_stop_signal_saves_the_step_reached_and_the_same_command_resumes_it(tmp_path, init_dir, clip_root,
                                                                             monkeypatch):
  """A SIGTERM that arrives while step 3 reads its batch, with no periodic checkpoint before step 6:
  step 3 finishes and is saved with its data position, the run stops, and the same settings resume
  it with the batches an uninterrupted run reads (the batch-reading step logs its batch's mean pixel).
  The loop only records a first signal (`outputs.defer_first_signal`), so none is lost in a callback
  that would swallow its exception."""
  _batch_reading_step(monkeypatch)
  config = run_config(init_dir, clip_root, checkpoint__every=6)
  trainer.train(config, tmp_path / 'whole', progress=False)
  monkeypatch.setattr(outputs, '_received', [])
  reads = []
  read = trainer.global_batch

  def global_batch_and_a_signal(local, shardings):
    reads.append(1)
    if len(reads) == 3:
      outputs._on_signal(signal.SIGTERM, None)   # the loop defers a first signal: recorded, not raised
    return read(local, shardings)

  monkeypatch.setattr(trainer, 'global_batch', global_batch_and_a_signal)
  workdir = tmp_path / 'stopped'
  with pytest.raises(outputs.Interrupted, match='SIGTERM'):
    trainer.train(config, workdir, progress=False)

  def steps():
    return sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
  assert steps() == [3] and len(reads) == 3 and sorted(_losses(workdir)) == [1, 2, 3]
  monkeypatch.setattr(outputs, '_received', [])
  monkeypatch.setattr(trainer, 'global_batch', read)
  trainer.train(config, workdir, progress=False)
  assert steps() == [3, 6] and _losses(workdir) == _losses(tmp_path / 'whole')


def test_a_run_saved_before_a_setting_existed_resumes_as_it_trained(init_dir, clip_root):
  """Settings added later (`trainer.IMPLICIT_SETTINGS`) are filled in with the values older runs had,
  so such a run resumes under today's defaults; a value a run saved is kept."""
  current = json.loads(run_config(init_dir, clip_root).to_json())
  older = json.loads(run_config(init_dir, clip_root).to_json())
  del older['trained'], older['loss']['noise_d_low'], older['loss']['noise_d_high']
  with pytest.raises(ValueError, match=r'differ: trained \(None'):
    trainer._check_resumable(current, older, 'runs/old')
  trainer._check_resumable(current, trainer.with_implicit_settings(older), 'runs/old')
  older['loss']['noise_d_low'] = 8.0
  assert trainer.with_implicit_settings(older)['loss']['noise_d_low'] == 8.0


@pytest.mark.parametrize('argv, message', [
    (['--config.optimizer.lerning_rate=1'], 'lerning_rate'),
    (['--config.data.roots=/nonexistent/clips'], 'data root /nonexistent/clips does not exist'),
    (['--config.model.init=/nonexistent'], 'model.init /nonexistent is not an sa-jax checkpoint'),
    (['--config.data.width=36'], 'data.width is 36, expected a positive multiple of'),
    (['--config.dtype=float16'], "dtype 'float16'"),
    (['--config.data.num_frames=3', '--config.mesh.shape=context=2,fsdp=-1'], 'does not split over mesh axis context=2'),
    (['--config.lora.rank=4', '--config.lora.targets=to_qq'], "lora.targets ['to_qq'] name no projection"),
    (['--config.data.roots=36x32:/'], 'data root 36x32:/: size 36x32, expected multiples of'),
    (['--config.encode_chunk_size=2', '--config.data.num_frames=4', '--config.mesh.shape=context=4,fsdp=-1'],
     'encode_chunk_size 2 with data.num_frames 4 and mesh axis context=4'),
    (['--config.trained=unet'], "trained 'unet', expected one of"),
    (['--config.trained=all', '--config.lora.rank=4'], "trained 'all' with lora.rank 4"),
    (['--config.loss.noise_d_low=0'], 'loss.noise_d_low is 0.0, expected > 0'),
], ids=['unknown-field', 'roots', 'init', 'size', 'dtype', 'context', 'lora', 'bucket-size', 'encode-chunks',
        'trained', 'trained-lora', 'sigma-law'])
def test_cli_errors_are_one_line(tmp_path, init_dir, clip_root, capsys, argv, message):
  base = ['--config', f'{REPO}/configs/train.py:tiny', f'--workdir={tmp_path / "w"}',
          f'--config.model.init={init_dir}', f'--config.data.roots={clip_root}']
  with pytest.raises(SystemExit) as exit_info:
    train_tool.main(base + argv)
  text = str(exit_info.value)
  assert text.startswith('sa-train: error: ') and message in text and '\n' not in text, text
  assert not (tmp_path / 'w').exists(), 'nothing is written before the checks pass'


def test_release_config_passes_its_checks(tmp_path, clip_root):
  """The untouched release settings start (checked against a release-architecture config.json)."""
  models = ModelConfigs.from_dict(svd_xt.get_config().to_dict())
  init = tmp_path / 'release'
  init.mkdir()
  (init / checkpoint.CONFIG).write_text(json.dumps(
      checkpoint.CheckpointConfig(models=models, scheduler=diffusion.ScheduleConfig()).to_json()))
  config = train_configs.get_config()
  config.model.init, config.data.roots = str(init), str(clip_root)
  trainer.check_config(config, tmp_path / 'work')
  assert trainer.size_multiple(trainer.model_config(config).models) == 64
