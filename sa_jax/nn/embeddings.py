"""Sinusoidal timestep embeddings and the two-layer MLP that follows them (SPEC §2.3)."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sa_jax import sharding
from sa_jax.nn import linear

Dtype = Any


def timestep_embedding(t: jax.Array, dim: int) -> jax.Array:
  """`[cos(t f_k), sin(t f_k)]` with `f_k = exp(-ln(1e4) k / (dim/2))`, always float32.

  Matches diffusers `Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)`.

  Args:
    t: `[N]` timesteps (continuous values allowed, may be negative).
    dim: embedding width (even).
  Returns:
    `[N, dim]` float32.
  """
  half = dim // 2
  exponent = -jnp.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half
  args = t.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class TimestepEmbedding(nn.Module):
  """`linear_2(silu(linear_1(x)))` (diffusers `TimestepEmbedding`)."""
  hidden: int
  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = linear.dense(self.hidden, kernel_axes=sharding.IN_PROJ, dtype=self.dtype,
                     param_dtype=self.param_dtype, name='linear_1')(x)
    x = nn.silu(x)
    return linear.dense(self.features, dtype=self.dtype, param_dtype=self.param_dtype,
                        name='linear_2')(x)
