"""Dense and convolution layers with logical axis names on their parameters.

Every kernel is created through these helpers so that `sa_jax.sharding` can map parameters to a
mesh by name. Kernel layouts follow Flax: Dense `[in, out]`, Conv `[*window, in, out]`.
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

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


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: Sequence[tuple[int, int]], lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         precision: Any = None) -> jax.Array:
  """`lax.conv_general_dilated` (undilated, ungrouped, explicit padding) with a faster input gradient.

  The input gradient convolves with the kernel read as `[*window, out, in]`. The built-in rule
  says so with the convolution's dimension labels, and XLA:CPU re-lays the kernel out for its fast
  convolution only in the entry computation: inside loop bodies (the HJB Adam loop within the
  sampler's scan) that gradient ran ~4x slower. Here the kernel axes are swapped by a real
  transpose instead: the same values, in the canonical layout everywhere.
  """
  dilated = any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
  if dilated or feature_group_count != 1 or isinstance(padding, str):
    raise ValueError('conv_general_dilated supports undilated, ungrouped convolutions with explicit '
                     f'padding; got lhs_dilation {lhs_dilation}, rhs_dilation {rhs_dilation}, '
                     f'feature_group_count {feature_group_count}, padding {padding!r}')
  numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  return _conv(lhs, rhs, tuple(window_strides), tuple(map(tuple, padding)), numbers, precision, lhs.shape)


def _plain_conv(x, kernel, strides, padding, numbers, precision):
  return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=numbers, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _conv(x, kernel, strides, padding, numbers, precision, x_shape):
  del x_shape
  return _plain_conv(x, kernel, strides, padding, numbers, precision)


def _conv_fwd(x, kernel, strides, padding, numbers, precision, x_shape):
  y = _conv(x.value, kernel.value, strides, padding, numbers, precision, x_shape)
  return y, (x.value if kernel.perturbed else None, kernel.value)   # x only for the kernel gradient


def _conv_bwd(strides, padding, numbers, precision, x_shape, residuals, dy):
  x, kernel = residuals
  lhs, rhs, out = numbers
  swapped = jnp.swapaxes(kernel, rhs[0], rhs[1])                   # [*window, out, in] physically
  swapped_numbers = lax.ConvDimensionNumbers(lhs, (rhs[1], rhs[0]) + tuple(rhs[2:]), out)
  conv_x = lambda t: _plain_conv(t, swapped, strides, padding, swapped_numbers, precision)
  dx, = jax.linear_transpose(conv_x, jax.ShapeDtypeStruct(x_shape, dy.dtype))(dy)
  if x is None:
    return dx, None
  conv_k = lambda k: _plain_conv(x, k, strides, padding, numbers, precision)
  dk, = jax.linear_transpose(conv_k, jax.ShapeDtypeStruct(kernel.shape, kernel.dtype))(dy)
  return dx, dk


_conv.defvjp(_conv_fwd, _conv_bwd, symbolic_zeros=True)


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
      dtype=dtype, param_dtype=param_dtype, conv_general_dilated=conv_general_dilated,
      kernel_init=nn.with_logical_partitioning(
          nn.initializers.lecun_normal(), window + (sharding.EMBED, sharding.MLP)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (sharding.MLP,)),
      name=name)


def conv3x3(features: int, **kwargs) -> nn.Conv:
  """3x3 convolution with symmetric padding 1 (torch `Conv2d(k=3, padding=1)`)."""
  return conv(features, (3, 3), padding=((1, 1), (1, 1)), **kwargs)


def conv1x1(features: int, **kwargs) -> nn.Conv:
  return conv(features, (1, 1), padding=((0, 0), (0, 0)), **kwargs)
