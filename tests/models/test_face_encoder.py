"""Tests of sa_jax/models/face_encoder.py: shapes, shortcut path, config, full-size parameter count."""

import jax
import numpy as np
import pytest
from flax import linen as nn

from configs import svd_xt
from sa_jax.models import face_encoder
from sa_jax.models.random_init import random_params

# Measured once from the reference: StableAnimator `animation/modules/id_encoder.py` (commit 020e7f2)
# instantiated with torch 2.13.0 (diffusers' ModelMixin stubbed as nn.Module),
# `sum(p.numel() for p in FusionFaceId(1024, 512, 1024, 4).parameters())` = 57,183,232 over 56
# state-dict entries (perceiver depth 4, heads 16, dim_head 64, ff_mult 4 are fixed there).
FULL_PARAMS = 57_183_232
FULL_ENTRIES = 56

TINY = face_encoder.FaceEncoderConfig(cross_attention_dim=32, id_embeddings_dim=16,
                                      clip_embeddings_dim=24, num_tokens=3, perceiver_depth=2,
                                      dim_head=8, heads=2, ff_mult=2)


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(tree)))


@pytest.fixture(scope='module')
def tiny():
  model = face_encoder.FusionFaceId(TINY)
  rng = np.random.default_rng(0)
  ids = rng.standard_normal((2, 16)).astype(np.float32)
  clip = rng.standard_normal((2, 1, 24)).astype(np.float32)
  params = random_params(face_encoder.abstract_params(TINY))
  return jax.jit(model.apply, static_argnames='shortcut'), params, ids, clip


def test_shapes(tiny):
  apply, params, ids, clip = tiny
  out = apply({'params': params}, ids, clip)
  assert out.shape == (2, 3, 32)
  assert np.isfinite(out).all()


def test_batch_rows_are_independent(tiny):
  apply, params, ids, clip = tiny
  both = apply({'params': params}, ids, clip)
  first = apply({'params': params}, ids[:1], clip[:1])
  np.testing.assert_allclose(both[:1], first, atol=1e-5)


def test_shortcut_adds_scaled_output_to_id_tokens(tiny):
  apply, params, ids, clip = tiny
  plain = apply({'params': params}, ids, clip)
  shortcut = apply({'params': params}, ids, clip, shortcut=True, scale=0.5)
  zero = apply({'params': params}, ids, clip, shortcut=True, scale=0.0)   # the ID tokens
  np.testing.assert_allclose(shortcut, zero + 0.5 * plain, atol=1e-5)


def test_rejects_mismatched_inputs(tiny):
  apply, params, ids, clip = tiny
  with pytest.raises(ValueError, match='clip_embeds'):
    apply({'params': params}, ids, clip[:1])
  with pytest.raises(ValueError, match='id_embeds'):
    apply({'params': params}, ids[:, :8], clip)


def test_from_dict():
  release = face_encoder.FaceEncoderConfig.from_dict(svd_xt.get_config().face_encoder.to_dict())
  assert release == face_encoder.FaceEncoderConfig()
  derived = face_encoder.FaceEncoderConfig.from_dict({'cross_attention_dim': 768})
  assert derived.heads == 12
  with pytest.raises(ValueError, match=r"unknown keys \['dim_heads', 'unknown'\]; allowed keys "
                                       r"are \[.*'dim_head'"):
    face_encoder.FaceEncoderConfig.from_dict({'cross_attention_dim': 768, 'unknown': 1, 'dim_heads': 64})


def test_full_size_parameter_count():
  tree = face_encoder.abstract_params(face_encoder.FaceEncoderConfig())
  assert len(jax.tree.leaves(nn.unbox(tree))) == FULL_ENTRIES
  assert _count(tree) == FULL_PARAMS
