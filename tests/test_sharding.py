"""The UNet on a data=2 x fsdp=4 mesh of simulated CPU devices matches one device."""

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from sa_jax import sharding
from sa_jax.models import random_init, unet


@pytest.fixture(scope='module')
def mesh():
  if jax.device_count() < 8:
    raise RuntimeError('needs 8 devices: tests/conftest.py sets '
                       'XLA_FLAGS=--xla_force_host_platform_device_count=8 before JAX starts')
  return sharding.make_mesh({sharding.DATA: 2, sharding.FSDP: 4}, jax.devices()[:8])


def test_make_mesh_checks_device_count():
  with pytest.raises(ValueError, match='needs 16 devices'):
    sharding.make_mesh({sharding.DATA: 4, sharding.FSDP: 4}, jax.devices()[:8])
  with pytest.raises(ValueError, match='unknown mesh axes'):
    sharding.make_mesh({'model': 2}, jax.devices()[:2])
  assert sharding.make_mesh({sharding.DATA: -1}, jax.devices()[:8]).shape[sharding.DATA] == 8


def test_unet_fsdp_matches_single_device(mesh):
  # Two levels, one layer each: every block type, a fast compile.
  config = unet.UNetConfig.from_dict(dict(
      block_out_channels=[32, 64], num_attention_heads=[1, 2], layers_per_block=1,
      down_block_types=['CrossAttnDownBlockSpatioTemporal', 'DownBlockSpatioTemporal'],
      up_block_types=['UpBlockSpatioTemporal', 'CrossAttnUpBlockSpatioTemporal'],
      cross_attention_dim=64, addition_time_embed_dim=16, projection_class_embeddings_input_dim=48))
  model = unet.UNet(config)
  rng = np.random.default_rng(0)
  b, f, h, w = 2, 4, 16, 8
  inputs = (rng.standard_normal((b, f, h, w, 8), np.float32), np.array([0.3, -0.2], np.float32),
            rng.standard_normal((b, 5, 64), np.float32), np.array([[6, 127, 0.02]] * b, np.float32),
            rng.standard_normal((b, f, h, w, 32), np.float32))
  boxed = unet.abstract_params(config)
  params = random_init.random_params(boxed, seed=1)
  expected = jax.jit(model.apply)({'params': params}, *inputs)

  param_shardings = sharding.param_shardings(boxed, mesh)
  specs = [tuple(s.spec) for s in jax.tree.leaves(param_shardings)]
  assert any(sharding.FSDP in spec for spec in specs), 'no parameter is FSDP-sharded'
  sharded = jax.device_put(params, param_shardings)
  data = NamedSharding(mesh, PartitionSpec(sharding.DATA))
  inputs = jax.device_put(inputs, data)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    out = jax.jit(model.apply, out_shardings=data)({'params': sharded}, *inputs)
  assert out.sharding.spec == data.spec
  np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=2e-5, rtol=0)
