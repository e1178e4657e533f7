import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sa_jax.nn import attention


def _numpy_attention(q, k, v, scale):
  logits = np.einsum('blnd,bsnd->bnls', q, k) * scale
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum('bnls,bsnd->blnd', p, v)


def test_matches_softmax_formula_and_chunks_agree():
  rng = np.random.default_rng(0)
  q, k, v = (rng.standard_normal(s, np.float32) for s in ((2, 12, 3, 8), (2, 5, 3, 8), (2, 5, 3, 8)))
  want = _numpy_attention(q, k, v, 8 ** -0.5)
  np.testing.assert_allclose(attention.dot_product_attention(q, k, v), want, atol=1e-5)
  np.testing.assert_allclose(attention.dot_product_attention(q, k, v, query_chunk_size=4), want, atol=1e-5)
  np.testing.assert_allclose(attention.dot_product_attention(q, k, v, scale=0.3),
                             _numpy_attention(q, k, v, 0.3), atol=1e-5)
  # 5 does not divide 12 tokens: chunks of 4, the largest divisor below it.
  np.testing.assert_allclose(attention.dot_product_attention(q, k, v, query_chunk_size=5), want, atol=1e-5)
  assert [attention.query_chunk(*a) for a in ((12, 5), (2304, 1024), (9216, 1024), (7, 4), (64, 1024))] == [
      4, 768, 1024, 1, 64]


def test_flash_attention_is_chosen_where_it_runs():
  assert attention.backend('gpu', jnp.bfloat16, 64, 5) == attention.backend('gpu', jnp.float16, 128, 9216) == 'cudnn'
  assert attention.backend('tpu', jnp.bfloat16, 64, 9216) == attention.backend('tpu', jnp.float32, 40, 128) == 'splash'
  for platform, dtype, head_dim, keys in (('gpu', jnp.float32, 64, 9216), ('gpu', jnp.bfloat16, 60, 9216),
                                          ('gpu', jnp.bfloat16, 256, 9216), ('cpu', jnp.bfloat16, 64, 9216),
                                          ('tpu', jnp.bfloat16, 64, 16), ('tpu', jnp.bfloat16, 64, 4)):
    assert attention.backend(platform, dtype, head_dim, keys) == 'xla', (platform, dtype, head_dim, keys)


def test_chunked_gradient_holds_one_chunk_of_logits():
  """The gradient through chunked attention equals the unchunked one, and XLA's temporaries shrink
  with the chunk: each chunk's logits are recomputed in the backward pass, not kept for all."""
  rng = np.random.default_rng(1)
  q, k, v = (rng.standard_normal((1, 512, 2, 8), np.float32) for _ in range(3))
  grads, temps = {}, {}
  for chunk in (None, 64):
    loss = lambda q, k, v: jnp.sum(attention.dot_product_attention(q, k, v, query_chunk_size=chunk) ** 2)
    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    grads[chunk] = grad(q, k, v)
    temps[chunk] = grad.lower(q, k, v).compile().memory_analysis().temp_size_in_bytes
  for a, b in zip(grads[None], grads[64]):
    # float32 sums over S = 512 keys in another order: a few hundred eps of the largest term.
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(a).max())
  logits = 512 * 512 * 2 * 4   # one float32 [N, L, S] tensor
  assert temps[None] >= logits and temps[64] < temps[None] / 4, temps


def test_heads_split_channels_head_major():
  x = np.arange(2 * 3 * 8).reshape(2, 3, 8)
  heads = attention.split_heads(x, 2)
  np.testing.assert_array_equal(heads[:, :, 1], x[:, :, 4:])
  np.testing.assert_array_equal(attention.merge_heads(heads), x)


def test_attention_module_params():
  module = attention.Attention(heads=2, head_dim=4, qkv_bias=True, out_features=6)
  shapes = jax.eval_shape(module.init, jax.random.key(0), np.zeros((1, 3, 5)), np.zeros((1, 2, 7)))
  params = jax.tree.map(lambda s: s.shape, __import__('flax').linen.unbox(shapes['params']))
  assert params == {'to_q': {'kernel': (5, 8), 'bias': (8,)}, 'to_k': {'kernel': (7, 8), 'bias': (8,)},
                    'to_v': {'kernel': (7, 8), 'bias': (8,)}, 'to_out': {'kernel': (8, 6), 'bias': (6,)}}


@pytest.mark.parametrize('length, keys', [(200, 130), (128, 5)])
def test_splash_attention_matches_softmax_attention(length, keys):
  """The TPU kernel's code path, run by the Pallas interpreter: padded queries and keys (segment
  ids keep the padding out), values and gradients as XLA's attention."""
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in
             ((2, length, 3, 16), (2, keys, 3, 16), (2, keys, 3, 16)))
  splash = lambda q, k, v: attention.splash_attention(q, k, v, 0.3, interpret=True)
  xla = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, scale=0.3)
  # float32 softmax attention both; online (blockwise) softmax sums in another order: rounding of
  # sums of `keys` terms of the values' magnitude.
  atol = 8 * keys * float(jnp.finfo(jnp.float32).eps) * float(jnp.abs(v).max())
  np.testing.assert_allclose(splash(q, k, v), xla(q, k, v), rtol=0, atol=atol)
  loss = lambda f: lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v)))
  for got, want in zip(jax.grad(loss(splash), (0, 1, 2))(q, k, v), jax.grad(loss(xla), (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(got, want, rtol=0, atol=atol * float(jnp.abs(want).max() + 1))


def test_splash_attention_runs_per_device_in_a_mesh():
  from flax import linen as nn
  from sa_jax import sharding
  rng = np.random.default_rng(1)
  q, k, v = (jnp.asarray(rng.standard_normal((8, 130, 4, 8)), jnp.float32) for _ in range(3))
  want = jax.nn.dot_product_attention(q, k, v)
  mesh = sharding.make_mesh({'fsdp': 4, 'tensor': 2})
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    got = jax.jit(lambda q, k, v: attention.splash_attention(q, k, v, 8 ** -0.5, interpret=True))(q, k, v)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
