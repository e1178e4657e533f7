"""Dense and convolution layers with logical axis names on their parameters.

Every kernel is created through these helpers so that `sa_jax.sharding` can map parameters to a
mesh by name. Kernel layouts follow Flax: Dense `[in, out]`, Conv `[*window, in, out]`.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from sa_jax import sharding

Dtype = Any


def dense(features: int, *, use_bias: bool = True, dtype: Dtype = jnp.float32,
          param_dtype: Dtype = jnp.float32, name: str | None = None) -> nn.Dense:
  """A Dense layer whose kernel is `[EMBED, MLP]` and bias `[MLP]` in logical axes."""
  return nn.Dense(
      features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
      kernel_init=nn.with_logical_partitioning(
          nn.initializers.lecun_normal(), (sharding.EMBED, sharding.MLP)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (sharding.MLP,)),
      name=name)


def conv(features: int, kernel_size: Sequence[int], *, strides: Sequence[int] | int = 1,
         padding: Sequence[tuple[int, int]] | str, use_bias: bool = True,
         dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
         name: str | None = None) -> nn.Conv:
  """A channels-last convolution; `padding` is explicit per spatial axis (never 'SAME').

  The kernel is `[*kernel_size, in, out]` with logical axes `[None..., EMBED, MLP]`.
  """
  window = (None,) * len(kernel_size)
  return nn.Conv(
      features, tuple(kernel_size), strides=strides, padding=padding, use_bias=use_bias,
      dtype=dtype, param_dtype=param_dtype,
      kernel_init=nn.with_logical_partitioning(
          nn.initializers.lecun_normal(), window + (sharding.EMBED, sharding.MLP)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (sharding.MLP,)),
      name=name)


def conv3x3(features: int, **kwargs) -> nn.Conv:
  """3x3 convolution with symmetric padding 1 (torch `Conv2d(k=3, padding=1)`)."""
  return conv(features, (3, 3), padding=((1, 1), (1, 1)), **kwargs)


def conv1x1(features: int, **kwargs) -> nn.Conv:
  return conv(features, (1, 1), padding=((0, 0), (0, 0)), **kwargs)
