import numpy as np

from sa_jax.nn import embeddings, norms


def _apply(module, x):
  scale = np.linspace(0.5, 1.5, x.shape[-1], dtype=np.float32)
  bias = np.linspace(-0.2, 0.2, x.shape[-1], dtype=np.float32)
  return module.apply({'params': {'scale': scale, 'bias': bias}}, x), scale, bias


def test_group_norm_per_frame_and_pooled():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 3, 4, 4, 64)).astype(np.float32) * 3 + 1
  pooled, scale, bias = _apply(norms.GroupNorm(1e-6), x)             # [B, F, H, W, C]: frames pooled
  per_frame, _, _ = _apply(norms.GroupNorm(1e-6), x.reshape(6, 4, 4, 64))
  g = x.reshape(2, 3, 4, 4, 32, 2)
  mean = g.mean((1, 2, 3, 5), keepdims=True)
  var = g.var((1, 2, 3, 5), keepdims=True)
  want = ((g - mean) / np.sqrt(var + 1e-6)).reshape(x.shape) * scale + bias
  np.testing.assert_allclose(pooled, want, atol=1e-5)
  g = g.reshape(6, 4, 4, 32, 2)
  want = ((g - g.mean((1, 2, 4), keepdims=True)) / np.sqrt(g.var((1, 2, 4), keepdims=True) + 1e-6))
  np.testing.assert_allclose(per_frame, want.reshape(6, 4, 4, 64) * scale + bias, atol=1e-5)


def test_layer_norm_uses_given_eps():
  x = np.array([[0.0, 1e-3, 2e-3, 3e-3]], np.float32)               # tiny variance: eps dominates
  out, scale, bias = _apply(norms.LayerNorm(1e-5), x)
  want = (x - x.mean()) / np.sqrt(x.var() + 1e-5) * scale + bias
  np.testing.assert_allclose(out, want, rtol=1e-5)


def test_timestep_embedding_cos_first():
  t = np.array([0.0, 1.5, -0.7], np.float32)
  emb = np.asarray(embeddings.timestep_embedding(t, 8))
  freqs = np.exp(-np.log(10000.0) * np.arange(4) / 4)
  np.testing.assert_allclose(emb, np.concatenate([np.cos(t[:, None] * freqs), np.sin(t[:, None] * freqs)], 1),
                             atol=1e-6)
  assert emb.dtype == np.float32
