"""Tests of sa_jax/sampling/hjb.py: the chunked face-loss gradient equals the whole-clip one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sa_jax.models import iresnet, random_init, vae
from sa_jax.sampling import hjb

B, F, CHUNK = 2, 7, 3          # two full chunks in the lax.map and a one-frame tail
LATENT = 4                     # 4x4 latents -> 8x8 frames (two decoder levels)
EMBEDDING = 8
EPS32 = float(np.finfo(np.float32).eps)


@pytest.fixture(scope='module')
def setup():
  vae_config = vae.VAEConfig(block_out_channels=(32, 32), layers_per_block=1)
  embedder_config = iresnet.IResNetConfig(layers=(1, 1, 1, 1), num_features=EMBEDDING)
  params = {'vae': random_init.random_params(vae.abstract_params(vae_config), 0),
            'face_embedder': random_init.random_params(iresnet.abstract_params(embedder_config), 1)}
  embedder = iresnet.IResNet(embedder_config)
  # The chunked decode and the face embedder as the sampler calls them, without the decoder's remat
  # (values unchanged, tests/models/test_vae.py; it doubles the compile time here).
  decode = lambda p, lat: vae.decode(p['vae'], vae_config, lat, CHUNK)
  embed = lambda p, faces: embedder.apply({'params': p['face_embedder']}, faces)
  rng = np.random.default_rng(2)
  z0 = jnp.asarray(rng.standard_normal((B, F, LATENT, LATENT, 4)), jnp.float32)
  y0, x0 = rng.integers(0, 4, (2, B, F))
  boxes = jnp.asarray(np.stack([y0, y0 + rng.integers(2, 5, (B, F)), x0, x0 + rng.integers(2, 5, (B, F))], -1),
                      jnp.int32)                                                    # [B, F, 4] inside 8x8
  reference = jnp.asarray(rng.standard_normal((B, EMBEDDING)), jnp.float32)
  whole = lambda p, z: hjb.face_loss(z, boxes, reference, lambda lat: decode(p, lat), lambda f: embed(p, f))[0]
  chunked = lambda p, z: hjb.face_loss_grad(z, boxes, reference, lambda lat: decode(p, lat), lambda f: embed(p, f),
                                            CHUNK)
  return params, z0, jax.jit(jax.value_and_grad(whole, argnums=1)), chunked


def _grad_atol(grad) -> float:
  """Each frame's gradient is the same expression in both paths (cotangent 1/F on its own term): no
  sum over frames enters it. What remains is XLA fusing the two programs differently (the embedder
  sees B c faces per call instead of B F): rounding of order eps relative to the largest element
  (7.6 eps measured; 64 eps allowed)."""
  return 64 * EPS32 * float(np.abs(np.asarray(grad)).max())


@pytest.mark.heavy
def test_chunked_gradient_equals_the_whole_clip_gradient(setup):
  params, z0, whole, chunked = setup
  loss, grad = whole(params, z0)
  chunk_loss, chunk_grad = jax.jit(chunked)(params, z0)
  assert chunk_grad.shape == z0.shape and np.abs(np.asarray(grad)).max() > 0
  # The loss is the same B F nonnegative terms t (each |1 - cos| <= 2), summed in another order:
  # sum_b (sum_f t) / F against sum_k (sum_{b, f in chunk k} t) / F. A float32 sum of n nonnegative
  # terms is off by at most n eps of their sum, so the two differ by <= 2 (B F + K + 1) eps loss;
  # the terms themselves agree to their own rounding (see _grad_atol): one more B F eps of headroom.
  np.testing.assert_allclose(chunk_loss, loss, rtol=3 * (B * F + F // CHUNK + 1) * EPS32)
  np.testing.assert_allclose(chunk_grad, grad, rtol=0, atol=_grad_atol(grad))


@pytest.mark.heavy
def test_refined_x0_equals_the_whole_clip_refinement(setup):
  """`refine` on the chunked gradient lands where Adam on `jax.grad(face_loss)` does.

  One iteration: its update lr g / (|g| + eps) is the same in both unless a gradient element is
  within its rounding of zero (none is, checked), so x0 agrees to float32 rounding plus the
  gradient's rounding scaled by the update's slope. Later iterations are not compared: this random
  tiny model's gradient moves by ~0.5 % of its largest element under any ulp-level change of x0
  (measured), and Adam's second step divides by each element's gradient, so two programs drift
  apart there whatever the loss association (`test_sampler` runs the chunked gradient through two
  Adam iterations inside the sampler).
  """
  params, z0, whole, chunked = setup
  lr = 0.05
  refined = np.asarray(jax.jit(lambda p, z: hjb.refine(z, lr, 1, lambda x: chunked(p, x)[1]))(params, z0))
  z = np.asarray(z0, np.float64)
  grad = np.asarray(whole(params, z0)[1], np.float64)
  assert np.abs(grad).min() > _grad_atol(grad), 'a gradient element within rounding of zero: Adam could flip it'
  expected = z - lr * grad / (np.abs(grad) + hjb.ADAM_EPS)  # torch Adam's first step: m_hat = g, v_hat = g^2
  # float32 rounding of z - lr u, plus the chunked gradient's own error (_grad_atol) carried through
  # u = g / (|g| + eps), whose slope eps / (|g| + eps)^2 matters for the smallest elements.
  atol = 4 * EPS32 * (np.abs(z).max() + lr) + lr * hjb.ADAM_EPS * _grad_atol(grad) / (np.abs(grad) + hjb.ADAM_EPS) ** 2
  assert (np.abs(refined - expected) <= atol).all(), f'refined x0 off by {np.abs(refined - expected).max():.3g}'
  assert np.abs(refined - z).max() > 0.9 * lr                      # Adam moved x0
