"""Training from scratch (the demo model's first steps): the face embedder that sa-make-dataset trains
on the identities, and sa-init-model's checkpoint with a VAE trained on the clips' frames."""

import json
import shutil
import signal
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax import traverse_util
from PIL import Image

from configs import svd_xt
from configs import train as train_configs
from sa_jax import checkpoint, outputs
from sa_jax.data import character, clip_files, clips
from sa_jax.eval import pose
from sa_jax.models import iresnet, keypoint_net, vae
from sa_jax.training import autoencoder, face_embedder, scratch
from sa_jax.training import keypoint_net as keypoint_training
from tools import eval as eval_tool
from tools import init_model, make_dataset

SIZE, FRAMES = 64, 4
ARGS = dict(clips=4, eval_clips=2, identities=3, motions=3, held_out_identities=2, held_out_motions=2,
            num_frames=FRAMES, width=SIZE, height=SIZE)
EMBEDDER = iresnet.IResNetConfig.from_dict(svd_xt.get_config('demo').face_embedder.to_dict())
VAE = vae.VAEConfig.from_dict(svd_xt.get_config('demo').vae.to_dict())


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp('scratch') / 'data'
  trainer = face_embedder.Trainer(EMBEDDER, face_embedder.TrainingConfig(steps=25, batch_size=8))
  estimator = keypoint_training.Trainer(keypoint_training.TrainingConfig(steps=60, batch_size=16))
  record = character.write_dataset(root, seed=1, progress=False, face_embedder=trainer, pose_estimator=estimator,
                                   **ARGS)
  return root, record, trainer


def _clip(root, entry):
  folder = root / entry['folder']
  frames = np.stack([np.asarray(Image.open(folder / 'images' / f'frame_{i}.png')) for i in range(FRAMES)])
  masks = np.stack([np.asarray(Image.open(folder / 'faces' / f'frame_{i}.png')) for i in range(FRAMES)])
  return frames, masks, np.load(folder / clip_files.PER_FRAME)


def test_the_face_embedder_trained_on_the_identities_gives_every_clips_embeddings(dataset):
  root, record, trainer = dataset
  assert record['face_embedder'] == character.EMBEDDER_FILE
  params = checkpoint.load_npz(root / character.EMBEDDER_FILE)
  assert jax.tree.structure(params) == jax.tree.structure(nn.unbox(iresnet.abstract_params(EMBEDDER)))
  flat = dict(np.load(root / character.EMBEDDER_FILE, allow_pickle=False))
  by_identity = {}
  for entry in record['clips']:
    frames, masks, rows = _clip(root, entry)
    # The stored rows are the embedder's unit embeddings of each frame's face (float32 rounding).
    np.testing.assert_allclose(rows, trainer.embed(flat, frames, masks), atol=1e-6)
    by_identity.setdefault(entry['identity'], []).append(rows)
  # It learned the training identities: a face is closer to its own identity's mean than to another's.
  train_ids = sorted(i for i in by_identity if i < ARGS['identities'])
  means = np.stack([np.concatenate(by_identity[i]).mean(0) for i in train_ids])
  for k, identity in enumerate(train_ids):
    cos = np.concatenate(by_identity[identity]) @ means.T
    assert (np.argmax(cos, axis=1) == k).mean() > 0.9


def test_the_demo_training_samples_sa_make_datasets_clips():
  data = train_configs.get_config('demo').data
  length = make_dataset._parser().get_default('frames')
  ids, reference = clips.sample_frames(length, data.num_frames, data.stride, np.random.default_rng(0))
  assert len(ids) == data.num_frames and reference not in ids


def test_init_model_trains_the_vae_and_keeps_the_face_embedder(dataset, tmp_path, caplog):
  root, _, _ = dataset
  out = tmp_path / 'init'
  with pytest.raises(SystemExit, match='^sa-init-model: error: --clips .*: no clip folder'):
    init_model.main(['--clips', str(tmp_path), '--out', str(out)])
  with pytest.raises(SystemExit, match='at least 16'):
    init_model.main(['--clips', str(root / 'train'), '--out', str(out), '--vae-frames', '16'])
  other = tmp_path / 'other.npz'                   # a face embedder of another size: refused before training
  np.savez(other, **{'fc/kernel': np.zeros((8, 8), np.float32)})
  with pytest.raises(SystemExit, match=r'^sa-init-model: error: checkpoint parameters do not fit its config'):
    init_model.main(['--clips', str(root / 'train'), '--out', str(out), '--face-embedder', str(other)])
  assert not out.exists()
  init_model.main(['--clips', str(root / 'train'), '--out', str(out), '--vae-steps', '12', '--vae-batch-size', '4',
                   '--face-embedder', str(root / character.EMBEDDER_FILE), '--vae-frames', str(FRAMES)])
  # Its progress is logged (pytest's stderr is no terminal, so tqdm's bar is off): each step of 12.
  logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith('VAE: step ')]
  assert [m.split(',')[0] for m in logged] == [f'VAE: step {i}/12' for i in range(1, 13)]
  params, config = checkpoint.load(out)
  demo = svd_xt.get_config('demo')
  assert config.models.names == ('unet', 'vae', 'image_encoder', 'pose_net', 'face_encoder', 'face_embedder')
  assert config.models.unet.block_out_channels == tuple(demo.unet.block_out_channels)
  assert config.models.face_embedder == EMBEDDER
  np.testing.assert_array_equal(np.asarray(params['face_embedder']['fc']['kernel']),
                                checkpoint.load_npz(root / character.EMBEDDER_FILE)['fc']['kernel'])
  # The networks to train start as the original's: PoseNet and the face tokens' last projection at
  # zero, every ID projection a copy of its attention's, no biases, unit norms, even temporal mixing.
  assert float(params['pose_net']['scale'][0]) == scratch.POSE_SCALE
  for zero in (params['pose_net']['final_proj'], params['face_encoder']['fusion_model']['proj_out']):
    assert not any(np.any(v) for v in jax.tree.leaves(zero))
  unet = traverse_util.flatten_dict(params['unet'])
  copies = [p for p in unet if p[-2] in ('id_to_k', 'id_to_v')]
  assert copies and all(np.array_equal(unet[p], unet[p[:-2] + (p[-2][3:], 'kernel')]) for p in copies)
  assert not any(np.any(v) for p, v in unet.items() if p[-1] == 'bias')
  assert {float(x) for p, v in unet.items() if p[-1] in ('scale', 'mix_factor') for x in (v.min(), v.max())} == {
      1.0, scratch.MIX_FACTOR}
  # The VAE trained: its reconstructions beat those of its initialisation, and the latents' means
  # have unit variance once scaled by the measured factor.
  frames = scratch.read_clip_frames(sorted((root / 'train').iterdir()), FRAMES)[:2]        # [2, F, H, W, 3]
  initial = autoencoder.initial_params(config.models.vae, jax.random.split(jax.random.key(0))[0], (SIZE, SIZE))
  # It started with every residual branch at zero. The demo's one resnet per level: encoder one per
  # level + 2 mid resnets + the mid attention; decoder 2 per level and 1 mid, each spatial + temporal
  # (with one layer its mid block has no attention).
  assert config.models.vae.layers_per_block == 1
  kernels = {p: v for p, v in traverse_util.flatten_dict(initial).items() if p[-1] == 'kernel'}
  zero = {p for p, v in kernels.items() if not np.any(v)}
  assert zero == {p for p in kernels if p[-2] in autoencoder.RESIDUAL_OUTPUTS}
  levels = len(demo.vae.block_out_channels)
  assert len(zero) == (levels + 2 + 1) + (levels * 2 + 1) * 2
  # Its last layer passed each frame through unchanged: every frame's colours its own.
  frame_mix = np.asarray(initial['decoder']['time_conv_out']['kernel'])[:, 0, 0]       # [3, C, C]
  np.testing.assert_array_equal(frame_mix, np.stack([np.zeros((3, 3)), np.eye(3), np.zeros((3, 3))]))
  # Its posterior's log-variance was INITIAL_LOGVAR whatever the image: the latents were the means.
  moments, latent = initial['quant_conv'], config.models.vae.latent_channels
  assert not np.any(moments['kernel'][..., latent:]) and np.all(moments['bias'][latent:] == autoencoder.INITIAL_LOGVAR)
  key = jax.random.key(1)
  loss = jax.jit(lambda p, x: autoencoder.loss(p, config.models.vae, x, key)[0])
  trained_l1, initial_l1 = loss(params['vae'], frames), loss(initial, frames)
  assert trained_l1 < 0.8 * initial_l1
  scale = config.models.vae.scaling_factor
  every = scratch.read_clip_frames(sorted((root / 'train').iterdir()), FRAMES).reshape((-1, SIZE, SIZE, 3))
  assert scale == pytest.approx(autoencoder.latent_scale(params['vae'], config.models.vae, every), rel=1e-5)
  assert json.loads((out / checkpoint.CONFIG).read_text())['source'] == 'sa-init-model: from scratch'
  # Another model on the same latents takes this VAE (its measured scale too), not one of another shape.
  again = tmp_path / 'again'
  with pytest.raises(SystemExit, match=r'^sa-init-model: error: checkpoint .*init: its VAE is .*expected the archi'):
    init_model.main(['--vae', str(out), '--out', str(again), '--config', 'tiny'])
  init_model.main(['--vae', str(out), '--out', str(again), '--seed', '3'])
  params_again, config_again = checkpoint.load(again)
  assert (config_again.models.vae, config_again.models.unet) == (config.models.vae, config.models.unet)
  for a, b in zip(jax.tree.leaves(params['vae']), jax.tree.leaves(params_again['vae'])):
    np.testing.assert_array_equal(a, b)
  assert 'face_embedder' not in params_again
  assert not np.array_equal(params['unet']['conv_in']['kernel'], params_again['unet']['conv_in']['kernel'])


def test_the_pose_estimator_learned_the_keypoints_and_serves_sa_eval(dataset, tmp_path):
  root, record, _ = dataset
  assert record['pose_estimator'] == character.POSE_ESTIMATOR_FILE
  estimator = keypoint_net.Estimator(checkpoint.load_npz(root / character.POSE_ESTIMATOR_FILE))
  errors, baseline, held_out = [], [], []
  for entry in record['clips']:
    frames, _, _ = _clip(root, entry)
    driving = pose.read_driving_poses(root / entry['folder'] / 'keypoints.json')
    truth = np.stack([d.keypoints[0, :18] for d in driving])                              # [F, 18, 2]
    found = [estimator(frame) for frame in frames]
    assert all(p.scores[0, :18].min() == 1 and p.keypoints.shape[0] == 1 for p in found)
    error = np.stack([p.keypoints[0, :18] for p in found]) - truth
    if entry['split'] == 'eval':        # sa-eval's pose error: mean pixel distance per frame, then per clip
      held_out.append(np.linalg.norm(error * SIZE, axis=-1).mean())
    else:
      errors.append(error)
      baseline.append(truth.mean(axis=1, keepdims=True) - truth)
  # After 60 steps of 16 frames it already beats guessing, on the frames it trained on, each frame's
  # own mean keypoint for every joint.
  assert np.abs(np.concatenate(errors)).mean() < 0.7 * np.abs(np.concatenate(baseline)).mean()
  # sa-eval measures the pose error with it: the ground truth scored as generated frames (its floor).
  generated = tmp_path / 'generated'
  for entry in record['clips']:
    if entry['split'] == 'eval':
      shutil.copytree(root / entry['folder'] / 'images', generated / Path(entry['folder']).name)
  eval_tool.main(['--clips', str(root / 'eval'), '--generated', str(generated), '--out', str(tmp_path / 'eval'),
                  '--metrics', 'pose', '--pose-estimator', str(root / character.POSE_ESTIMATOR_FILE)])
  scores = json.loads((tmp_path / 'eval' / 'metrics.json').read_text())
  assert scores['overall']['pose_error_px'] == pytest.approx(np.mean(held_out), rel=1e-5)
  # The flip it trains with mirrors the frame and swaps left and right, and undoes itself.
  frames, _, _ = _clip(root, record['clips'][0])
  points = np.stack([d.keypoints[0, :18] for d in pose.read_driving_poses(
      root / record['clips'][0]['folder'] / 'keypoints.json')])
  flipped_frames, flipped = keypoint_training.mirrored(frames, points)
  np.testing.assert_allclose(flipped[:, 2], np.stack([1 - points[:, 5, 0], points[:, 5, 1]], axis=-1))
  again_frames, again = keypoint_training.mirrored(flipped_frames, flipped)
  np.testing.assert_array_equal(again_frames, frames)
  np.testing.assert_allclose(again, points)


@pytest.mark.parametrize('loop', ['vae', 'face embedder', 'keypoints', 'dataset'])
def test_a_swallowed_stop_signal_stops_each_long_loop_before_its_next_step(loop, tmp_path, monkeypatch):
  """A SIGTERM whose exception a callback swallowed is recorded (`outputs._on_signal`); each loop of
  sa-init-model and sa-make-dataset checks for one before every step, so it stops before the next
  step (here before the first: nothing is compiled) and sa-make-dataset leaves no folder."""
  monkeypatch.setattr(outputs, '_received', [])
  try:
    outputs._on_signal(signal.SIGTERM, None)
  except outputs.Interrupted:
    pass
  frames = np.zeros((2, 4, SIZE, SIZE, 3), np.uint8)
  runs = {
      'vae': lambda: autoencoder.train(frames, VAE, autoencoder.TrainingConfig(steps=2), progress=False),
      'face embedder': lambda: face_embedder.train(frames[0], np.tile([[8, 24, 8, 24]], (4, 1)), np.arange(4) % 2,
                                                   EMBEDDER, face_embedder.TrainingConfig(steps=2), progress=False),
      'keypoints': lambda: keypoint_training.train(frames[0], np.zeros((4, 18, 2), np.float32),
                                                   keypoint_training.TrainingConfig(steps=2), progress=False),
      'dataset': lambda: character.write_dataset(tmp_path / 'data', seed=1, progress=False, **ARGS),
  }
  with pytest.raises(outputs.Interrupted, match='SIGTERM'):
    runs[loop]()
  assert not (tmp_path / 'data').exists()
