"""Feed-forward blocks: GEGLU (SVD transformers) and plain GELU MLPs (CLIP, face perceiver).

All GELUs are exact (erf); Flax's `nn.gelu` defaults to the tanh approximation. CLIP configs may
ask for `quick_gelu` instead (transformers `QuickGELUActivation`), passed as `activation`.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sa_jax import sharding
from sa_jax.nn import linear

Dtype = Any


def gelu(x: jax.Array) -> jax.Array:
  return jax.nn.gelu(x, approximate=False)


def quick_gelu(x: jax.Array) -> jax.Array:
  """`x * sigmoid(1.702 x)` (transformers `quick_gelu`, OpenAI CLIP)."""
  return x * jax.nn.sigmoid(1.702 * x)


class FeedForward(nn.Module):
  """`proj_out(act(proj_in(x)))`.

  With `geglu=True`, `proj_in` is twice as wide and its output splits into `[value | gate]`
  (value first, SPEC §7.6): `value * act(gate)`.

  Attributes:
    hidden: inner width.
    geglu: gated GELU (diffusers `GEGLU`) instead of plain GELU.
    use_bias: biases on both projections.
    out_features: output width (default: input width).
    activation: `act`, exact `gelu` unless told otherwise (CLIP may use `quick_gelu`).
  """
  hidden: int
  geglu: bool = False
  use_bias: bool = True
  out_features: int | None = None
  activation: Callable[[jax.Array], jax.Array] = gelu
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Args: x `[..., C]`. Returns `[..., out_features or C]`."""
    width = 2 * self.hidden if self.geglu else self.hidden
    h = linear.dense(width, use_bias=self.use_bias, kernel_axes=sharding.IN_PROJ, dtype=self.dtype,
                     param_dtype=self.param_dtype, name='proj_in')(x)
    if self.geglu:
      value, gate = jnp.split(h, 2, axis=-1)
      h = value * self.activation(gate)
    else:
      h = self.activation(h)
    return linear.dense(self.out_features or x.shape[-1], use_bias=self.use_bias, dtype=self.dtype,
                        param_dtype=self.param_dtype, name='proj_out')(h)
