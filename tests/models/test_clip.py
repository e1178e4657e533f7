"""Tests of sa_jax/models/clip.py (and convert/clip.py names): shapes, activations, preprocessing,
config, full-size parameter count."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from configs import svd_xt
from convert import clip as convert_clip
from convert import state_dict as sd_lib
from sa_jax.models import clip
from sa_jax.models.random_init import random_params
from sa_jax.nn.feedforward import FeedForward, quick_gelu

# Measured once from the reference: transformers 4.35.2 with torch 2.13.0 (scratch venv
# `python3 -m venv /tmp/refvenv_clip && /tmp/refvenv_clip/bin/pip install torch==2.13.0
# transformers==4.35.2`), on the meta device:
#   cfg = CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
#       num_attention_heads=16, patch_size=14, image_size=224, num_channels=3, projection_dim=1024,
#       layer_norm_eps=1e-5, hidden_act='gelu')
#   m = CLIPVisionModelWithProjection(cfg); sum(p.numel() for p in m.parameters())  -> 632,076,800
#   len(m.state_dict())  -> 520 (position_ids is a non-persistent buffer there)
FULL_PARAMS = 632_076_800
FULL_ENTRIES = 520

TINY = clip.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, patch_size=8, image_size=32, projection_dim=16,
                             hidden_act='gelu')


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(tree)))


@pytest.fixture(scope='module')
def tiny():
  model = clip.CLIPVisionModelWithProjection(TINY)
  pixels = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
  params = random_params(clip.abstract_params(TINY))
  return jax.jit(model.apply), params, pixels


def test_shapes(tiny):
  apply, params, pixels = tiny
  out = apply({'params': params}, pixels)
  assert out.shape == (2, 16)
  assert np.isfinite(out).all()


def test_batch_rows_are_independent(tiny):
  apply, params, pixels = tiny
  np.testing.assert_allclose(apply({'params': params}, pixels)[:1], apply({'params': params}, pixels[:1]),
                             atol=1e-5)


def test_quick_gelu_option(tiny):
  _, params, pixels = tiny
  quick = clip.CLIPVisionConfig.from_dict({**dataclasses.asdict(TINY), 'hidden_act': 'quick_gelu'})
  out_gelu = tiny[0]({'params': params}, pixels)
  out_quick = clip.CLIPVisionModelWithProjection(quick).apply({'params': params}, pixels)
  assert out_quick.shape == out_gelu.shape
  assert np.abs(np.asarray(out_quick) - np.asarray(out_gelu)).max() > 1e-3

  x = jnp.linspace(-4.0, 4.0, 17)
  np.testing.assert_allclose(quick_gelu(x), x / (1 + np.exp(-1.702 * np.asarray(x))), rtol=1e-6, atol=1e-7)
  ff = FeedForward(8, activation=quick_gelu)
  ff_params = random_params(jax.eval_shape(ff.init, jax.random.key(0), jnp.zeros((1, 4)))['params'])
  h = x[:4][None]
  expected = quick_gelu(h @ ff_params['proj_in']['kernel'] + ff_params['proj_in']['bias'])
  expected = expected @ ff_params['proj_out']['kernel'] + ff_params['proj_out']['bias']
  np.testing.assert_allclose(ff.apply({'params': ff_params}, h), expected, rtol=1e-5, atol=1e-6)


def test_from_dict():
  release = clip.CLIPVisionConfig.from_dict(svd_xt.get_config().image_encoder.to_dict())
  assert (release.hidden_size, release.num_hidden_layers, release.head_dim, release.patch_size,
          release.num_positions, release.projection_dim, release.hidden_act) == (
              1280, 32, 80, 14, 257, 1024, 'gelu')
  tiny = clip.CLIPVisionConfig.from_dict({**dataclasses.asdict(TINY), 'model_type': 'clip_vision_model'})
  assert tiny == TINY
  assert clip.CLIPVisionConfig.from_dict({}).hidden_act == 'quick_gelu'   # transformers' default
  with pytest.raises(ValueError, match='gelu_new'):
    clip.CLIPVisionConfig.from_dict({'hidden_act': 'gelu_new'})


def test_rejects_wrong_image_size(tiny):
  apply, params, _ = tiny
  with pytest.raises(ValueError, match='pixel_values'):
    apply({'params': params}, np.zeros((1, 64, 64, 3), np.float32))


def test_preprocess_uint8_float_and_constant():
  rng = np.random.default_rng(3)
  img = rng.integers(0, 256, (2, 70, 50, 3), dtype=np.uint8)
  from_uint8 = clip.preprocess(img, image_size=32)
  from_float = clip.preprocess(img.astype(np.float32) / 255.0, image_size=32)
  assert from_uint8.shape == (2, 32, 32, 3) and from_uint8.dtype == jnp.float32
  np.testing.assert_allclose(from_uint8, from_float, atol=1e-6)
  np.testing.assert_allclose(clip.preprocess(img[0], image_size=32), from_uint8[:1], atol=0)
  grey = np.full((40, 90, 3), 128, np.uint8)          # blur and bicubic keep a constant image
  expected = (128 / 255 - np.asarray(clip.CLIP_MEAN)) / np.asarray(clip.CLIP_STD)
  np.testing.assert_allclose(clip.preprocess(grey), np.broadcast_to(expected, (1, 224, 224, 3)), atol=2e-6)
  with pytest.raises(ValueError, match='images must be'):
    clip.preprocess(np.zeros((1, 8, 8, 4), np.uint8))


def test_encode_image_is_model_of_preprocess(tiny):
  apply, params, _ = tiny
  img = np.random.default_rng(4).integers(0, 256, (1, 45, 60, 3), dtype=np.uint8)
  encode = jax.jit(clip.encode_image, static_argnums=1)
  expected = apply({'params': params}, clip.preprocess(img, image_size=32))
  np.testing.assert_allclose(encode(params, TINY, img), expected, atol=1e-6)


def test_converter_names_and_round_trip(tiny):
  _, params, _ = tiny
  exported = convert_clip.export_image_encoder(params)
  assert exported['vision_model.embeddings.position_embedding.weight'].shape == (17, 32)   # not transposed
  assert exported['vision_model.embeddings.patch_embedding.weight'].shape == (32, 3, 8, 8)
  assert exported['vision_model.encoder.layers.1.self_attn.q_proj.bias'].shape == (32,)
  assert exported['vision_model.encoder.layers.0.mlp.fc1.weight'].shape == (64, 32)
  assert exported['visual_projection.weight'].shape == (16, 32)
  with_buffer = {**exported, 'vision_model.embeddings.position_ids': np.arange(17)[None]}
  back = sd_lib.convert(with_buffer, nn.unbox(clip.abstract_params(TINY)), convert_clip.KEYMAP)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)


def test_full_size_parameter_count():
  config = clip.CLIPVisionConfig.from_dict(svd_xt.get_config().image_encoder.to_dict())
  tree = clip.abstract_params(config)
  assert len(jax.tree.leaves(nn.unbox(tree))) == FULL_ENTRIES
  assert _count(tree) == FULL_PARAMS
