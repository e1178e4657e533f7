"""Tests of sa_jax/models/iresnet.py (and the inference BatchNorm of sa_jax/nn/norms.py it uses)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from configs import svd_xt
from sa_jax.models import iresnet
from sa_jax.nn.norms import BatchNorm
from sa_jax.models.random_init import random_params

# Measured once from the reference: StableAnimator `animation/helper/backbones/iresnet.py` (commit
# 020e7f2) instantiated with torch 2.13.0, `iresnet100(num_features=512)`: 925 state-dict entries,
# 65,156,160 parameters (`.parameters()`), 65,225,792 floats in the state dict without the 154
# `num_batches_tracked` counters. sa-jax keeps the running statistics as parameters, so its tree
# holds the 771 floating entries and 65,225,792 values.
R100_TORCH_ENTRIES = 925
R100_BATCHNORMS = 154
R100_VALUES = 65_225_792


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(tree)))


@pytest.fixture(scope='module')
def tiny():
  config = iresnet.IResNetConfig(layers=(1, 1, 1, 1), num_features=8)
  model = iresnet.IResNet(config)
  faces = np.random.default_rng(0).uniform(-1.0, 1.0, (2, 112, 112, 3)).astype(np.float32)
  params = random_params(iresnet.abstract_params(config))
  return model, params, faces


def test_shapes(tiny):
  model, params, faces = tiny
  out = jax.jit(model.apply)({'params': params}, faces)
  assert out.shape == (2, 8)
  assert np.isfinite(out).all()
  assert 'downsample_0' in params['layer1_0'] and 'downsample_0' in params['layer4_0']


def test_gradient_wrt_faces_is_finite(tiny):
  model, params, faces = tiny
  grad = jax.jit(jax.grad(lambda x: jnp.sum(model.apply({'params': params}, x) ** 2)))(faces)
  assert grad.shape == faces.shape
  assert np.isfinite(grad).all() and np.abs(grad).max() > 0


def test_rejects_wrong_size(tiny):
  model, params, faces = tiny
  with pytest.raises(ValueError, match='faces must be'):
    model.apply({'params': params}, faces[:, :56, :56])


def test_batchnorm_uses_stored_statistics():
  x = np.random.default_rng(0).standard_normal((2, 3, 5, 4)).astype(np.float32)
  stats = {'scale': jnp.array([1.0, 2.0, 0.5, -1.0]), 'bias': jnp.array([0.0, 0.1, -0.2, 0.3]),
           'mean': jnp.array([0.5, -0.5, 0.0, 1.0]), 'var': jnp.array([1.0, 4.0, 0.25, 2.0])}
  out = BatchNorm(1e-5).apply({'params': stats}, x)
  expected = (x - stats['mean']) / np.sqrt(stats['var'] + 1e-5) * stats['scale'] + stats['bias']
  np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_config_from_dict():
  release = iresnet.IResNetConfig.from_dict(svd_xt.get_config().face_embedder.to_dict())
  assert release == iresnet.IResNetConfig(layers=(3, 13, 30, 3), num_features=512)
  assert iresnet.IResNetConfig.from_dict({'layers': 'r50'}).layers == (3, 4, 14, 3)
  with pytest.raises(ValueError, match='4 positive block counts'):
    iresnet.IResNetConfig.from_dict({'layers': [2, 2, 2]})
  with pytest.raises(ValueError, match=r"unknown keys \['fp16'\]; allowed keys are "
                                       r"\['layers', 'num_features', 'widths'\]"):
    iresnet.IResNetConfig.from_dict({'layers': 'r50', 'fp16': False})
  with pytest.raises(ValueError, match='4 positive channel counts'):
    iresnet.IResNetConfig.from_dict({'widths': [16, 32, 64]})
  # Narrower stages (the demo's face embedder): the fc reads widths[-1] x 7 x 7.
  narrow = iresnet.IResNetConfig.from_dict({'layers': [1, 1, 1, 1], 'widths': [16, 32, 64, 64], 'num_features': 8})
  tree = nn.unbox(iresnet.abstract_params(narrow))
  assert tree['conv1']['kernel'].shape == (3, 3, 3, 16) and tree['fc']['kernel'].shape == (64 * 7 * 7, 8)


def test_r100_parameter_count():
  tree = iresnet.abstract_params(iresnet.IResNetConfig())
  assert len(jax.tree.leaves(nn.unbox(tree))) == R100_TORCH_ENTRIES - R100_BATCHNORMS
  assert _count(tree) == R100_VALUES
