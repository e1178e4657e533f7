"""The distribution-aware ID adapter (SPEC §2.9)."""

import jax
import jax.numpy as jnp
import numpy as np

from sa_jax.models import id_adapter, random_init

HEADS, HEAD_DIM, CTX = 2, 8, 12


def _setup(seed=0):
  module = id_adapter.IDAttention(HEADS, HEAD_DIM, num_face_tokens=4)
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((3, 10, HEADS * HEAD_DIM), np.float32)
  context = rng.standard_normal((3, 5, CTX), np.float32)
  abstract = jax.eval_shape(module.init, jax.random.key(0), x, context)['params']
  return module, random_init.random_params(abstract, seed), x, context


def test_renormalise_uses_unbiased_joint_statistics():
  rng = np.random.default_rng(1)
  face, main = rng.standard_normal((2, 4, 7, 6))
  out = np.asarray(id_adapter.renormalise(face, main))
  for n in range(4):
    f, m = face[n], main[n]
    want = (f - f.mean()) * (m.std(ddof=1) / (f.std(ddof=1) + 1e-5)) + m.mean()
    np.testing.assert_allclose(out[n], want, rtol=1e-5, atol=1e-6)


def test_face_tokens_matter_only_with_a_clip_token():
  module, params, x, context = _setup()
  apply = jax.jit(module.apply)
  other_faces = context.copy()
  other_faces[:, 1:] += 1.0
  assert not np.allclose(apply({'params': params}, x, context), apply({'params': params}, x, other_faces))

  no_clip = context.copy()
  no_clip[:, :1] = 0.0
  out = apply({'params': params}, x, no_clip)
  # O = 0 so I' = 0: the output is the bias of to_out, whatever the face tokens.
  np.testing.assert_allclose(out, np.broadcast_to(params['to_out']['bias'], out.shape), atol=1e-6)


def test_zero_clip_token_gives_finite_gradients():
  module, params, x, context = _setup()
  context[:, :1] = 0.0
  grads = jax.grad(lambda p, c: jnp.sum(module.apply({'params': p}, x, c) ** 2), argnums=(0, 1))(
      params, context)
  for leaf in jax.tree.leaves(grads):
    assert np.isfinite(np.asarray(leaf)).all()
  np.testing.assert_array_equal(grads[1][:, 1:], 0.0)
