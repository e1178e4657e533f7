"""Training-loss parity with StableAnimator `train.py`, for every 'train_step' case.

The case records every random draw (sigmas, noise, conditioning-dropout uniforms) and the frozen
encoders' outputs, so the loss, its gradients and the trainable subset are compared exactly as
the reference computed them. Models are built from the cases the case's `weights` point to.
"""

import json

import jax
import numpy as np
import pytest
from flax import traverse_util

from configs import train as train_configs
from convert import face_encoder as convert_face_encoder
from convert import pose_net as convert_pose_net
from convert import unet as convert_unet
from sa_jax import diffusion
from sa_jax.models import face_encoder, pose_net, unet
from sa_jax.models.stable_animator import ModelConfigs
from sa_jax.nn.resize import nearest_legacy
from sa_jax.training import loss as loss_lib
from sa_jax.training import optimizer
from tests.parity import bounds, reference

pytestmark = pytest.mark.parity

CASES = reference.cases('train_step')
# Network -> (config class, converter, weights file name inside a case folder).
WEIGHTS = {'unet': (unet.UNetConfig, convert_unet.load_unet, 'unet.pth'),
           'pose_net': (pose_net.PoseNetConfig, convert_pose_net.load_pose_net, 'pose_net.pth'),
           'face_encoder': (face_encoder.FaceEncoderConfig, convert_face_encoder.load_face_encoder,
                            'face_encoder.pth')}
# README's guidance where a case records no float64 comparison: "the training loss: 1e-5 relative".
README_LOSS_RTOL = 1e-5


def _nhwc(x):
  return np.moveaxis(x, -3, -1)                      # [..., C, h, w] -> [..., h, w, C]


def _load(case, name):
  """Config (from the weights' own case.json) and params of one network of a train_step case."""
  config_class, load, file_name = WEIGHTS[name]
  path = (case.path / case.meta['weights'][name]).resolve()
  folder, weights = (path, path / file_name) if path.is_dir() else (path.parent, path)
  meta = json.loads((folder / 'case.json').read_text())
  config = config_class.from_dict(reference.config_fields(config_class, meta['config']))
  return config, load(weights, config)


@pytest.fixture(scope='module', params=CASES, ids=str)
def case(request):
  c = request.param
  loaded = {name: _load(c, name) for name in WEIGHTS}
  # The loss reads only the trained networks' configs; the frozen encoders' outputs are recorded.
  configs = ModelConfigs(unet=loaded['unet'][0], vae=None, image_encoder=None,
                         pose_net=loaded['pose_net'][0], face_encoder=loaded['face_encoder'][0])
  params = {name: p for name, (_, p) in loaded.items()}
  io = c.io
  settings = c.meta['settings']
  release = train_configs.get_config().loss       # the sigma law's settings (the draws are recorded)
  config = loss_lib.LossConfig(fps=int(settings['fps id']) + 1,
                               motion_bucket_id=float(settings['motion_bucket_id']),
                               noise_aug_strength=float(settings['train_noise_aug (added_time_ids[2])']),
                               conditioning_dropout_prob=float(settings['conditioning_dropout_prob']),
                               noise_d_low=release.noise_d_low, noise_d_high=release.noise_d_high)
  b = io['latents'].shape[0]
  inputs = loss_lib.Encoded(
      latents=_nhwc(io['latents']), reference_latents=_nhwc(io['conditional_latents']),
      clip_tokens=io['image_embed'], face_embedding=io['faceid_embeds'], poses=_nhwc(io['pose_pixels']),
      face_masks=_nhwc(io['tgt_face_masks']), valid=np.ones((b,), np.float32))
  draws = loss_lib.Draws(sigma=io['sigmas'], noise=_nhwc(io['noise']), dropout=io['random_p'])
  model = unet.UNet(configs.unet)
  unet_apply = lambda p, *args: model.apply({'params': p}, *args)

  def objective(trainable, frozen):
    return loss_lib.loss(optimizer.merge(trainable, frozen), configs, unet_apply, inputs, draws, config)

  trainable, frozen = optimizer.partition(params)
  (value, aux), grads = jax.jit(jax.value_and_grad(objective, has_aux=True))(trainable, frozen)
  return c, params, (value, aux, grads)


def test_sigmas_and_mask_resize(case):
  c, _, _ = case
  io = c.io
  # Elementwise: float32 rounding of tan's argument near pi/2 (u -> 0) dominates (bounds.py).
  law = train_configs.get_config().loss
  reference.assert_close(diffusion.training_sigmas(io['sigma_u'], law.noise_d_low, law.noise_d_high), io['sigmas'], 0.0,
                         bounds.training_sigma_rtol(io['sigma_u']), name=f'{c}: sigmas')
  h, w = io['latents'].shape[-2:]
  mask = nearest_legacy(_nhwc(io['tgt_face_masks']), (h, w))
  np.testing.assert_array_equal(mask, _nhwc(io['face_mask_latent']), err_msg=f'{c}: face_mask_latent')


def test_loss(case):
  c, _, (value, aux, _) = case
  io = c.io
  expected = io['loss'].reshape(())
  # SPREAD_FACTOR x the recorded float64 spread of the loss (bounds.network_atol); README's 1e-5
  # relative where the case has no record.
  reference.assert_close(value, expected, bounds.network_atol(c, 'loss', expected, README_LOSS_RTOL),
                         name=f'{c}: loss')
  per_video = io['per_sample_loss']
  reference.assert_close(aux.per_video, per_video,
                         bounds.network_atol(c, 'loss', per_video, README_LOSS_RTOL),
                         name=f'{c}: per_sample_loss')
  denoised = _nhwc(io['denoised'])
  reference.assert_close(aux.denoised, denoised,
                         bounds.network_atol(c, 'model_pred', denoised, bounds.README_UNET_ATOL),
                         name=f'{c}: denoised')


def _grad_rtol(case, name):
  """SPREAD_FACTOR x the recorded float32-vs-float64 relative difference of this norm."""
  spread = bounds.float64_record(case).get('grad_norm_rel_diff', {}).get(name)
  return bounds.README_GRAD_RTOL if spread is None else max(bounds.SPREAD_FACTOR * spread, bounds.FLOOR_ULPS *
                                                          bounds.EPS32)


def test_gradient_norms(case):
  c, _, (_, _, grads) = case
  subsets = {'pose_net': grads['pose_net'], 'face_encoder': grads['face_encoder'], 'unet_attentions': grads['unet']}
  for name, tree in subsets.items():
    expected = c.meta['grad_norms'][name]
    actual = float(np.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2) for g in jax.tree.leaves(tree))))
    rtol = _grad_rtol(c, name)
    assert abs(actual - expected) <= rtol * abs(expected), (
        f'{c}: grad norm {name} {actual:.8g} vs reference {expected:.8g} (rtol {rtol:.2g})')


def test_gradient_entries(case):
  c, _, (_, _, grads) = case
  io = c.io
  flat = traverse_util.flatten_dict(grads, sep='/')
  mixers = sorted(k for k in flat if k.startswith('unet/') and k.endswith('/time_mixer/mix_factor'))
  first_mixer = min(mixers, key=lambda k: convert_unet.KEYMAP.to_key(tuple(k.split('/')[1:])))
  recorded = {'grad_pose_net_scale': ('pose_net/scale', 'pose_net'),
              'grad_face_encoder_norm_weight': ('face_encoder/norm/scale', 'face_encoder'),
              'grad_unet_first_time_mixer': (first_mixer, 'unet_attentions')}
  for name, (path, subset) in recorded.items():
    expected = io[name]
    # One entry's error is at most the norm of the subset's gradient error, taken as the norm's
    # relative tolerance times the norm (a single entry such as PoseNet's `scale`, a sum over every
    # output, cancels and has a larger relative error than the norm).
    atol = _grad_rtol(c, subset) * c.meta['grad_norms'][subset]
    reference.assert_close(np.reshape(flat[path], expected.shape), expected, atol, name=f'{c}: {name}')


def test_trainable_subset(case):
  c, params, (_, _, grads) = case
  listed = (c.path / 'trainable_unet_params.txt').read_text().split()
  ours = sorted(convert_unet.KEYMAP.to_key(path[1:]) for path in traverse_util.flatten_dict(grads)
                if path[0] == 'unet')
  assert ours == sorted(listed)
  for name in ('pose_net', 'face_encoder'):
    assert jax.tree.structure(grads[name]) == jax.tree.structure(params[name]), f'{name}: all params train'
  assert set(grads) == {'unet', 'pose_net', 'face_encoder'}
