"""Stride-2 down-sampling and nearest-neighbour x2 up-sampling convolutions (SPEC §2.5, §7.2)."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sa_jax.nn import linear

Dtype = Any


class Downsample(nn.Module):
  """3x3 stride-2 convolution named `conv`.

  Attributes:
    features: output channels.
    padding: per spatial axis, `(1, 1)` for the UNet (torch `padding=1`), `(0, 1)` for the VAE
      encoder (pad right/bottom, then no padding).
  """
  features: int
  padding: tuple[int, int] = (1, 1)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Args: x `[B, H, W, C]`. Returns `[B, H', W', features]`."""
    return linear.conv(self.features, (3, 3), strides=2, padding=(self.padding, self.padding),
                       dtype=self.dtype, param_dtype=self.param_dtype, name='conv')(x)


class Upsample(nn.Module):
  """Nearest x2 then a 3x3 convolution named `conv` (computed as one: `linear.upsampling_conv_general_dilated`)."""
  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Args: x `[B, H, W, C]`. Returns `[B, 2H, 2W, features]`."""
    return linear.conv3x3(self.features, upsampling=True, dtype=self.dtype, param_dtype=self.param_dtype,
                          name='conv')(x)
