"""Tests of sa_jax/models/vae.py (+ vae_encoder.py, vae_decoder.py): shapes, posterior, chunked
decode, gradients and remat, input checks, full-size parameter count."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import svd_xt
from sa_jax.models import random_init, vae
from sa_jax.nn import norms

# Measured once from the reference: diffusers 0.31.0 `AutoencoderKLTemporalDecoder(
# block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
# down_block_types=('DownEncoderBlock2D',) * 4, in_channels=3, out_channels=3)` with torch 2.13.0
# (CPU): `sum(p.numel() for p in m.parameters())` = 97,742,847 (encoder + quant_conv 34,163,664,
# decoder 63,579,183) over `len(m.state_dict())` = 374 tensors (also the count SPEC §3.4 gives).
FULL_PARAMS = 97_742_847
FULL_TENSORS = 374

FRAMES, CHUNK = 5, 2          # two full chunks (lax.map) and a one-frame tail
# Two levels (spatial factor 2) keep compilation short; 4x4 latents keep the GroupNorm statistics
# (a few elements per group) well conditioned enough to compare gradients.
SMALL = dict(block_out_channels=[32, 32], layers_per_block=2, latent_channels=4)


def test_full_size_parameter_count():
  config = vae.VAEConfig.from_dict(svd_xt.get_config().vae)
  leaves = jax.tree.leaves(nn.unbox(vae.abstract_params(config)))
  assert len(leaves) == FULL_TENSORS
  assert sum(int(np.prod(x.shape)) for x in leaves) == FULL_PARAMS


def test_config_from_dict_and_checks():
  config = vae.VAEConfig.from_dict(
      ml_collections.ConfigDict(dict(block_out_channels=[32, 64], sample_size=64,
                                     _class_name='AutoencoderKLTemporalDecoder')))
  assert config.block_out_channels == (32, 64)
  assert config.down_block_types == ('DownEncoderBlock2D',) * 2
  assert config.spatial_factor == 2
  with pytest.raises(ValueError, match='multiples of norm_num_groups 32'):
    vae.VAEConfig.from_dict(dict(block_out_channels=[32, 48]))
  assert vae.VAEConfig.from_dict(dict(block_out_channels=[32, 48], norm_num_groups=16)).norm_num_groups == 16
  with pytest.raises(ValueError, match='multiples of norm_num_groups 0'):
    vae.VAEConfig.from_dict(dict(block_out_channels=[32], norm_num_groups=0))
  with pytest.raises(ValueError, match='unsupported down blocks'):
    vae.VAEConfig.from_dict(dict(block_out_channels=[32], down_block_types=['DownBlock2D']))
  with pytest.raises(ValueError, match='down_block_types has 1 entries'):
    vae.VAEConfig.from_dict(dict(block_out_channels=[32, 32], down_block_types=['DownEncoderBlock2D']))


def test_every_norm_has_the_configs_groups():
  config = vae.VAEConfig.from_dict(dict(SMALL, norm_num_groups=8))
  groups = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, norms.GroupNorm):
      groups.append(context.module.num_groups)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda: vae.VAE(config).init(jax.random.key(0), jnp.zeros((2, 8, 8, 3)), 2))
  # encoder: 2 blocks x 2 resnets x 2 norms, mid block 2 x 2 + attention, conv_norm_out (14);
  # decoder: mid block 2 spatio-temporal resnets x 4 + attention, 2 up blocks x 3 x 4, conv_norm_out (34)
  assert len(groups) == 48 and set(groups) == {8}


@pytest.fixture(scope='module')
def tiny():
  config = vae.VAEConfig.from_dict(svd_xt.get_config('tiny').vae)
  params = random_init.random_params(vae.abstract_params(config), seed=1)
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (2, 16, 8, 3)).astype(np.float32)
  latents = rng.standard_normal((FRAMES, 2, 1, 4)).astype(np.float32)
  return config, params, images, latents


def test_encode_shapes_and_posterior(tiny):
  config, params, images, _ = tiny
  posterior = jax.jit(lambda p, x: vae.encode(p, config, x))(params, images)
  for x in posterior:
    assert x.shape == (2, 2, 1, 4)
  np.testing.assert_array_equal(posterior.mode(), posterior.mean)
  np.testing.assert_allclose(posterior.std, np.exp(0.5 * np.asarray(posterior.logvar)), rtol=1e-6)
  key = jax.random.key(3)
  sample = posterior.sample(key)
  expected = posterior.mean + posterior.std * jax.random.normal(key, posterior.mean.shape)
  np.testing.assert_allclose(sample, expected, rtol=1e-6)
  assert np.abs(np.asarray(sample - posterior.sample(jax.random.key(4)))).max() > 0


def test_logvar_is_clamped():
  moments = jnp.concatenate([jnp.zeros((1, 1, 1, 2)), jnp.array([[[[-100.0, 100.0]]]])], -1)
  posterior = vae.DiagonalGaussian.from_moments(moments)
  np.testing.assert_array_equal(posterior.logvar, [[[[-30.0, 20.0]]]])
  np.testing.assert_allclose(posterior.std, np.exp([[[[-15.0, 10.0]]]]), rtol=1e-6)


@pytest.fixture(scope='module')
def small():
  config = vae.VAEConfig.from_dict(SMALL)
  params = random_init.random_params(vae.abstract_params(config), seed=2)
  latents = np.random.default_rng(1).standard_normal((FRAMES, 4, 4, 4)).astype(np.float32)
  return config, params, latents


@pytest.fixture(scope='module')
def one_call(small):
  """One decoder call on unscaled latents, `num_frames` static."""
  config = small[0]
  return jax.jit(lambda p, x, f: vae.decode_frames(p, config, x, f), static_argnums=2)


def test_decode_shape(tiny):
  config, params, _, latents = tiny
  frames = jax.jit(lambda p, x: vae.decode(p, config, x, FRAMES + 3))(params, latents)   # one call
  assert frames.shape == (FRAMES, 16, 8, 3)


def test_decode_chunks(small, one_call):
  config, params, latents = small
  frames = jax.jit(lambda p, x: vae.decode(p, config, x, CHUNK))(params, latents)
  assert frames.shape == (FRAMES, 8, 8, 3)
  z = (1.0 / config.scaling_factor) * latents
  separate = [one_call(params, z[i:i + CHUNK], len(z[i:i + CHUNK])) for i in range(0, FRAMES, CHUNK)]
  np.testing.assert_allclose(frames, np.concatenate(separate), atol=1e-5)


def test_decode_frames_batches_videos(small, one_call):
  """`[B F, ...]` with num_frames F decodes each video on its own."""
  _, params, latents = small
  z = latents[:4]
  both = one_call(params, z, 2)
  np.testing.assert_allclose(both[:2], one_call(params, z[:2], 2), atol=1e-5)
  np.testing.assert_allclose(both[2:], one_call(params, z[2:], 2), atol=1e-5)


def test_gradients_finite_and_remat_identical(small):
  """The HJB gradient (w.r.t. the latents) through chunked decoding; remat changes nothing."""
  config, params, latents = small
  latents = latents[:2 * CHUNK]                                   # two chunks in the lax.map

  def loss(x, p, remat):
    frames = vae.decode(p, config, x, CHUNK, remat=remat, checkpoint_chunks=remat)
    return jnp.mean(jnp.square(frames)), frames

  grad_fn = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=2)
  (value, frames), grad = grad_fn(latents, params, False)
  assert np.isfinite(value)
  assert np.isfinite(np.asarray(grad)).all() and np.abs(np.asarray(grad)).max() > 0
  (remat_value, remat_frames), remat_grad = grad_fn(latents, params, True)
  np.testing.assert_allclose(remat_value, value, rtol=1e-6)
  np.testing.assert_allclose(remat_frames, frames, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(remat_grad, grad, rtol=1e-5, atol=1e-7)


def test_remat_module_keeps_parameter_names(tiny):
  config = tiny[0]
  plain = jax.tree.map(lambda x: x.shape, nn.unbox(vae.abstract_params(config)))
  model = vae.VAE(config, remat=True)
  init = lambda key, x: model.init(key, x, 1)
  remat = jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))['params']
  assert jax.tree.map(lambda x: x.shape, nn.unbox(remat)) == plain


def test_inputs_are_checked(tiny):
  config, params, images, latents = tiny
  with pytest.raises(ValueError, match='images must be'):
    vae.encode(params, config, images[..., :2])
  with pytest.raises(ValueError, match='latents must be'):
    vae.decode_frames(params, config, latents[..., :3])
  with pytest.raises(ValueError, match='num_frames 2 does not divide'):
    vae.decode_frames(params, config, latents, 2)
  with pytest.raises(ValueError, match='decode_chunk_size must be a positive int'):
    vae.decode(params, config, latents, 0)
