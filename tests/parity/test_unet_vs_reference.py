"""UNet parity with the original PyTorch StableAnimator UNet, for every 'unet' case."""

import jax
import numpy as np
import pytest
from flax import traverse_util

from convert import unet as convert_unet
from sa_jax.models import unet
from tests.parity import bounds, reference

pytestmark = pytest.mark.parity

CASES = reference.cases('unet')


def _nhwc(x):
  """`[..., C, h, w] -> [..., h, w, C]`."""
  return np.moveaxis(x, -3, -1)


def _video(x, batch):
  """Torch `[(B F), C, h, w]` -> `[B, F, h, w, C]`."""
  return _nhwc(x).reshape((batch, -1) + x.shape[-2:] + x.shape[-3:-2])


@pytest.fixture(scope='module', params=CASES, ids=str)
def case(request):
  c = request.param
  config = unet.UNetConfig.from_dict(c.meta['config'])
  params = convert_unet.load_unet(c.path / 'unet.pth', config)
  model = unet.UNet(config)
  return c, params, jax.jit(model.apply)


@pytest.mark.parametrize('pose', [True, False], ids=['with_pose', 'without_pose'])
def test_single_video(case, pose):
  c, params, apply = case
  io = c.io
  sample = _nhwc(io['sample'])
  pose_latents = _video(io['pose_latents'], sample.shape[0]) if pose else None
  out = apply({'params': params}, sample, io['timestep'], io['encoder_hidden_states'],
              io['added_time_ids'], pose_latents)
  name = 'out_with_pose' if pose else 'out_without_pose'
  expected = _nhwc(io[name])
  # SPREAD_FACTOR x this output's recorded float32-vs-float64 spread (bounds.network_atol).
  reference.assert_close(out, expected, bounds.network_atol(c, name, expected, bounds.README_UNET_ATOL),
                         name=f'{c}: {name}')


def test_batch_of_two(case):
  c, params, apply = case
  io = c.io
  if 'b2_sample' not in io:
    pytest.skip(f'{c} records no batch-of-two run')
  sample = _nhwc(io['b2_sample'])
  out = apply({'params': params}, sample, io['b2_timesteps'], io['b2_encoder_hidden_states'],
              io['b2_added_time_ids'], _video(io['b2_pose_latents'], sample.shape[0]))
  expected = _nhwc(io['b2_out'])
  reference.assert_close(out, expected, bounds.network_atol(c, 'b2_out', expected, bounds.README_UNET_ATOL),
                         name=f'{c}: b2_out')


def test_diffusers_folder_matches_release_file(case):
  """The fp16 diffusers folder holds the base weights of unet.pth; its ID adapter starts as to_k/to_v."""
  c, params, _ = case
  folder = c.path / 'unet'
  if not folder.is_dir():
    pytest.skip(f'{c} has no diffusers folder')
  release = traverse_util.flatten_dict(params, sep='/')
  diffusers = traverse_util.flatten_dict(
      convert_unet.load_unet(folder, convert_unet.read_config(folder)), sep='/')
  assert release.keys() == diffusers.keys()
  for name, value in diffusers.items():
    if '/id_to_' in name:
      np.testing.assert_array_equal(value, diffusers[name.replace('/id_to_', '/to_')], err_msg=name)
    else:
      np.testing.assert_array_equal(value, release[name], err_msg=name)


def test_export_gives_back_the_release_file(case):
  """Flax -> torch names and layouts: a fine-tuned UNet can be handed back to PyTorch users."""
  c, params, _ = case
  original = convert_unet.sd.load_state_dict(c.path / 'unet.pth')
  exported = convert_unet.export_unet(params)
  assert exported.keys() == original.keys()
  for name, value in original.items():
    np.testing.assert_array_equal(exported[name], value, err_msg=name)
