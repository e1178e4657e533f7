"""Tests of sa_jax/nn/remat.py: `remat_call` changes neither parameters, values nor gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sa_jax.nn.remat import remat_call


class _Block(nn.Module):
  @nn.compact
  def __call__(self, x, bias, scale):
    return nn.Dense(3)(jnp.tanh(nn.Dense(3)(x) + bias)) * scale


class _Stack(nn.Module):
  remat: bool

  @nn.compact
  def __call__(self, x):
    for i in range(2):
      x = remat_call(_Block(name=f'block_{i}'), x, jnp.ones(3), static=(2.0,), enabled=self.remat)
    return x


def test_remat_call_keeps_parameters_values_and_gradients():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3)), jnp.float32)
  variables = _Stack(remat=False).init(jax.random.key(0), x)
  remat_variables = _Stack(remat=True).init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, remat_variables) == jax.tree.map(jnp.shape, variables)
  loss = lambda remat: lambda v, y: jnp.sum(_Stack(remat=remat).apply(v, y) ** 2)
  value, grads = jax.value_and_grad(loss(False), argnums=(0, 1))(variables, x)
  remat_value, remat_grads = jax.jit(jax.value_and_grad(loss(True), argnums=(0, 1)))(variables, x)
  np.testing.assert_allclose(remat_value, value, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), remat_grads, grads)
