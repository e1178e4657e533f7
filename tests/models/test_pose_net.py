"""Tests of sa_jax/models/pose_net.py: shapes, batch flattening, full-size parameter count."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from sa_jax.models import pose_net
from sa_jax.models.random_init import random_params

# Measured once from the reference: StableAnimator `animation/modules/pose_net.py` (commit 020e7f2)
# instantiated with torch 2.13.0 (diffusers' ModelMixin stubbed as nn.Module),
# `sum(p.numel() for p in PoseNet(320).parameters())` = 205,557 over 19 state-dict entries.
FULL_PARAMS = 205_557
FULL_ENTRIES = 19


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(tree)))


@pytest.fixture(scope='module')
def tiny():
  config = pose_net.PoseNetConfig(noise_latent_channels=8)
  model = pose_net.PoseNet(config)
  poses = np.random.default_rng(0).uniform(-1.0, 1.0, (3, 24, 16, 3)).astype(np.float32)
  params = random_params(pose_net.abstract_params(config))
  return jax.jit(model.apply), params, poses


def test_shapes_and_scale(tiny):
  apply, params, poses = tiny
  out = apply({'params': params}, poses)
  assert out.shape == (3, 3, 2, 8)
  assert out.dtype == jnp.float32
  doubled = apply({'params': {**params, 'scale': 2 * params['scale']}}, poses)
  np.testing.assert_allclose(doubled, 2 * out, rtol=1e-6)


def test_five_d_input_is_flattened_batch_major(tiny):
  apply, params, poses = tiny
  video = np.stack([poses, poses[::-1]])                           # [B=2, F=3, H, W, 3]
  out = apply({'params': params}, video)
  assert out.shape == (6, 3, 2, 8)
  np.testing.assert_allclose(out[:3], apply({'params': params}, poses), atol=1e-6)
  np.testing.assert_allclose(out[3:], apply({'params': params}, poses[::-1]), atol=1e-6)


def test_rejects_wrong_channels(tiny):
  apply, params, poses = tiny
  with pytest.raises(ValueError, match='poses must be'):
    apply({'params': params}, poses[..., :2])


def test_from_dict_rejects_unknown_keys():
  assert pose_net.PoseNetConfig.from_dict({'noise_latent_channels': 320}) == pose_net.PoseNetConfig(320)
  with pytest.raises(ValueError, match=r"unknown keys \['noise_latent_channel'\]; allowed keys are "
                     r"\['noise_latent_channels', 'spatial_factor'\]"):
    pose_net.PoseNetConfig.from_dict({'noise_latent_channel': 320})
  with pytest.raises(ValueError, match='spatial_factor 16; expected one of'):
    pose_net.PoseNetConfig.from_dict({'spatial_factor': 16})


@pytest.mark.parametrize('factor', pose_net.SPATIAL_FACTORS)
def test_spatial_factor_keeps_that_many_strided_layers(factor):
  """A smaller factor (a VAE of fewer levels) turns the last strided 4x4 convolutions into 3x3
  stride-1 ones: the output is H / factor, and the release's names stay."""
  config = pose_net.PoseNetConfig(noise_latent_channels=8, spatial_factor=factor)
  params = random_params(pose_net.abstract_params(config))
  out = pose_net.PoseNet(config).apply({'params': params}, np.zeros((2, 32, 16, 3), np.float32))
  assert out.shape == (2, 32 // factor, 16 // factor, 8)
  release = nn.unbox(pose_net.abstract_params(pose_net.PoseNetConfig(8)))
  assert set(params) == set(release)
  kernels = {name: params[name]['kernel'].shape[0] for name in params if name.startswith('conv_layers')}
  strided = ['conv_layers_2', 'conv_layers_6', 'conv_layers_10'][:factor.bit_length() - 1]
  assert {name for name, size in kernels.items() if size == 4} == set(strided)


def test_full_size_parameter_count():
  tree = pose_net.abstract_params(pose_net.PoseNetConfig(320))
  assert len(jax.tree.leaves(nn.unbox(tree))) == FULL_ENTRIES
  assert _count(tree) == FULL_PARAMS
