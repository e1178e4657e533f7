"""Dense and convolution layers with logical axis names on their parameters.

Every kernel is created through these helpers so that `sa_jax.sharding` can map parameters to a
mesh by name. Kernel layouts follow Flax: Dense `[in, out]`, Conv `[*window, in, out]`. The logical
axes of `[in, out]` are `sharding.OUT_PROJ` (default) or `sharding.IN_PROJ` for the first kernel
of a pair; the `sa_jax.sharding` docstring says which kernel gets which. The output's feature axis
is pinned to match (`sharding.output_features`); its other axes are left to the compiler.
"""

import functools
import itertools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from sa_jax import sharding

Dtype = Any
KernelAxes = tuple[str | None, str | None]


def _pin_features(y: jax.Array, kernel_axes: KernelAxes) -> jax.Array:
  """Constrains the last axis of `y` to `sharding.output_features(kernel_axes)`, the rest free.

  A no-op outside a mesh with logical-axis rules. Without it XLA's SPMD partitioner (jax 0.10.2)
  may pick feature-sharded activations that it then miscomputes: `(x @ w1) @ w2 + x @ w3` with
  `IN_PROJ`/`OUT_PROJ`/`IN_PROJ` kernels on a data=2, fsdp=2, tensor=2 mesh is wrong by O(|y|).
  """
  unconstrained = (jax.sharding.PartitionSpec.UNCONSTRAINED,) * (y.ndim - 1)
  return nn.with_logical_constraint(y, unconstrained + (sharding.output_features(kernel_axes),))


class Dense(nn.Dense):
  """`nn.Dense` with its output features pinned (see `dense`); the same parameters."""
  kernel_axes: KernelAxes = sharding.OUT_PROJ

  def __call__(self, inputs: jax.Array) -> jax.Array:
    return _pin_features(super().__call__(inputs), self.kernel_axes)


class Conv(nn.Conv):
  """`nn.Conv` with its output features pinned (see `conv`); the same parameters."""
  kernel_axes: KernelAxes = sharding.OUT_PROJ

  def __call__(self, inputs: jax.Array) -> jax.Array:
    return _pin_features(super().__call__(inputs), self.kernel_axes)


def dense(features: int, *, use_bias: bool = True, kernel_axes: KernelAxes = sharding.OUT_PROJ,
          dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
          name: str | None = None) -> Dense:
  """A Dense layer whose kernel `[in, out]` has logical axes `kernel_axes`, its bias `[out]` the last."""
  return Dense(
      features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, kernel_axes=tuple(kernel_axes),
      kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), tuple(kernel_axes)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (kernel_axes[-1],)),
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


def matmul_conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                                padding: Sequence[tuple[int, int]], lhs_dilation: Sequence[int] | None = None,
                                rhs_dilation: Sequence[int] | None = None,
                                dimension_numbers: Any = None, feature_group_count: int = 1,
                                precision: Any = None) -> jax.Array:
  """A stride-1 channels-last convolution as one matmul per window offset, summed (float32 sums).

  `y[n, p] = sum_o pad(x)[n, p + o] @ rhs[o]` over the offsets o of the window: the same values as
  `conv_general_dilated` up to summation order, for `temporal_conv`. Each term reads x shifted by one
  `lax.pad` (negative amounts crop), so on frames split over devices the SPMD partitioner exchanges
  one boundary frame with each neighbour (padding first, then slicing, re-splits the longer padded
  axis: several exchanges of up to three frames). Takes `lax.conv_general_dilated`'s arguments; lhs
  `[N, *spatial, I]`, rhs `[*window, I, O]`, result `[N, *spatial', O]`.
  """
  n = rhs.ndim - 2
  numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  nhwc = (0, n + 1) + tuple(range(1, n + 1))
  channels_last = lax.ConvDimensionNumbers(nhwc, (n + 1, n) + tuple(range(n)), nhwc)
  dilated = any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
  if (any(s != 1 for s in window_strides) or dilated or feature_group_count != 1
      or isinstance(padding, str) or numbers != channels_last):
    raise ValueError('matmul_conv_general_dilated supports stride-1, undilated, ungrouped, channels-last '
                     f'convolutions with explicit padding; got strides {window_strides}, lhs_dilation '
                     f'{lhs_dilation}, rhs_dilation {rhs_dilation}, feature_group_count '
                     f'{feature_group_count}, padding {padding!r}, dimension numbers {numbers}')
  window_size = rhs.shape[:n]
  acc = jnp.promote_types(jnp.result_type(lhs, rhs), jnp.float32)
  zero = jnp.zeros((), lhs.dtype)
  y = None
  for offset in itertools.product(*map(range, window_size)):
    shift = [(lo - o, hi - (k - 1 - o), 0) for o, k, (lo, hi) in zip(offset, window_size, padding)]
    window = lax.pad(lhs, zero, [(0, 0, 0), *shift, (0, 0, 0)])   # pad(x)[n, p + o]: [N, *out, I]
    term = jnp.einsum('...i,io->...o', window, rhs[offset], precision=precision,
                      preferred_element_type=acc)
    y = term if y is None else y + term
  return y.astype(jnp.result_type(lhs, rhs))


# Nearest x2 then a 3x3 convolution with padding 1, per output row parity: which of the three
# window rows land on each of the two input rows read (`[2 taps, 3 window rows]`), and the padding
# of the 2-row window over the input.
SUBPIXEL_TAPS = ((((1, 0, 0), (0, 1, 1)), (1, 0)),      # even rows: x[i-1] <- w0; x[i] <- w1 + w2
                 (((1, 1, 0), (0, 0, 1)), (0, 1)))      # odd rows: x[i] <- w0 + w1; x[i+1] <- w2


def upsampling_conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                                    padding: Sequence[tuple[int, int]], lhs_dilation: Sequence[int] | None = None,
                                    rhs_dilation: Sequence[int] | None = None,
                                    dimension_numbers: Any = None, feature_group_count: int = 1,
                                    precision: Any = None) -> jax.Array:
  """A 3x3 convolution (stride 1, padding 1) of `lhs` repeated 2x2 (nearest x2), `[N, H, W, I]` ->
  `[N, 2H, 2W, O]`, without making the large input: each of the four output parities is a 2x2
  convolution of `lhs` whose kernel sums the 3x3 taps that read the same input pixel (sub-pixel
  convolution). The same values up to summation order, with 16 taps per input pixel instead of 36.
  Takes `lax.conv_general_dilated`'s arguments, as `nn.Conv` passes them.
  """
  numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  nhwc = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
  dilated = any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
  if (rhs.shape[:2] != (3, 3) or tuple(window_strides) != (1, 1) or dilated or feature_group_count != 1
      or isinstance(padding, str) or tuple(map(tuple, padding)) != ((1, 1), (1, 1)) or numbers != nhwc):
    raise ValueError('upsampling_conv_general_dilated supports 3x3, stride-1, padding-1, undilated, ungrouped, '
                     f'channels-last 2-D convolutions; got kernel {rhs.shape}, strides {window_strides}, padding '
                     f'{padding!r}, lhs_dilation {lhs_dilation}, rhs_dilation {rhs_dilation}, feature_group_count '
                     f'{feature_group_count}, dimension numbers {numbers}')
  rows = []
  for taps_y, pad_y in SUBPIXEL_TAPS:
    columns = []
    for taps_x, pad_x in SUBPIXEL_TAPS:
      kernel = jnp.einsum('yk,xl,klio->yxio', jnp.asarray(taps_y, jnp.float32), jnp.asarray(taps_x, jnp.float32),
                          rhs.astype(jnp.float32), precision=precision).astype(rhs.dtype)   # [2, 2, I, O]
      columns.append(conv_general_dilated(lhs, kernel, (1, 1), (pad_y, pad_x), dimension_numbers=dimension_numbers,
                                          precision=precision))                           # [N, H, W, O]
    rows.append(jnp.stack(columns, axis=3))                                               # [N, H, W, 2, O]
  y = jnp.stack(rows, axis=2)                                                             # [N, H, 2, W, 2, O]
  n, h, _, w, _, o = y.shape
  return y.reshape(n, 2 * h, 2 * w, o)


def conv(features: int, kernel_size: Sequence[int], *, strides: Sequence[int] | int = 1,
         padding: Sequence[tuple[int, int]] | str, use_bias: bool = True,
         kernel_axes: KernelAxes = sharding.OUT_PROJ, by_matmuls: bool = False, upsampling: bool = False,
         dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
         name: str | None = None) -> Conv:
  """A channels-last convolution; `padding` is explicit per spatial axis (never 'SAME').

  The kernel is `[*kernel_size, in, out]` with logical axes `[None..., *kernel_axes]` (the window
  is never sharded); the bias `[out]` has the last of `kernel_axes`. `by_matmuls` computes it with
  `matmul_conv_general_dilated` (stride 1 only); `upsampling` convolves the input repeated 2x2
  (`upsampling_conv_general_dilated`: 3x3, padding 1 only).
  """
  if by_matmuls and upsampling:
    raise ValueError('conv: by_matmuls and upsampling exclude each other')
  window = (None,) * len(kernel_size)
  implementation = (matmul_conv_general_dilated if by_matmuls else
                    upsampling_conv_general_dilated if upsampling else conv_general_dilated)
  return Conv(
      features, tuple(kernel_size), strides=strides, padding=padding, use_bias=use_bias,
      dtype=dtype, param_dtype=param_dtype, kernel_axes=tuple(kernel_axes),
      conv_general_dilated=implementation,
      kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), window + tuple(kernel_axes)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (kernel_axes[-1],)),
      name=name)


def conv3x3(features: int, **kwargs) -> Conv:
  """3x3 convolution with symmetric padding 1 (torch `Conv2d(k=3, padding=1)`)."""
  return conv(features, (3, 3), padding=((1, 1), (1, 1)), **kwargs)


def conv1x1(features: int, **kwargs) -> Conv:
  return conv(features, (1, 1), padding=((0, 0), (0, 0)), **kwargs)


def temporal_conv(features: int, **kwargs) -> Conv:
  """Convolution over the frames of `[B, F, H, W, C]`: kernel (3, 1, 1), zero padding 1 at both ends.

  Computed by three matmuls over shifted frames (`by_matmuls`), not by a convolution. Frames are
  sharded when B is smaller than the batch shards, and XLA's SPMD partitioner (jax 0.10.2, Shardy
  and GSPMD alike) miscomputes a convolution whose input is sharded along a windowed axis on a
  mesh with a further axis (data=2, fsdp=2, tensor=2: the value and input gradient with a sharded
  kernel, the kernel gradient even with a replicated one; `tests/test_sharding.py`).
  """
  return conv(features, (3, 1, 1), padding=((1, 1), (0, 0), (0, 0)), by_matmuls=True, **kwargs)
