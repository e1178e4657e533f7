"""The shared convolution: lax's values and gradients, with the input gradient's kernel laid out canonically."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from sa_jax.nn import linear

CASES = [  # (input shape, kernel shape, strides, padding, dimension numbers)
    ((2, 9, 10, 5), (3, 3, 5, 7), (1, 1), ((1, 1), (1, 1)), ('NHWC', 'HWIO', 'NHWC')),
    ((2, 9, 10, 5), (3, 3, 5, 7), (2, 1), ((1, 1), (1, 1)), ('NHWC', 'HWIO', 'NHWC')),
    ((2, 9, 10, 5), (1, 1, 5, 7), (2, 2), ((0, 0), (0, 0)), ('NHWC', 'HWIO', 'NHWC')),
    ((2, 9, 10, 5), (3, 3, 5, 7), (2, 2), ((0, 1), (0, 1)), ('NHWC', 'HWIO', 'NHWC')),
    ((1, 6, 4, 4, 3), (3, 1, 1, 3, 2), (1, 1, 1), ((1, 1), (0, 0), (0, 0)), ('NDHWC', 'DHWIO', 'NDHWC')),
]


@pytest.mark.parametrize('x_shape, k_shape, strides, padding, numbers', CASES)
def test_conv_matches_lax_in_value_and_gradients(x_shape, k_shape, strides, padding, numbers):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
  k = jnp.asarray(rng.standard_normal(k_shape), jnp.float32)
  dn = lax.conv_dimension_numbers(x_shape, k_shape, numbers)
  loss = lambda conv: lambda x, k: jnp.sum(jnp.sin(conv(x, k, strides, padding, dimension_numbers=dn)))
  ours, theirs = loss(linear.conv_general_dilated), loss(lax.conv_general_dilated)
  np.testing.assert_allclose(ours(x, k), theirs(x, k), rtol=1e-6)
  for got, want in zip(jax.grad(ours, (0, 1))(x, k), jax.grad(theirs, (0, 1))(x, k)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(jax.grad(ours)(x, k), jax.grad(theirs)(x, k), rtol=1e-5, atol=1e-5)


def test_input_gradient_uses_a_canonical_kernel_layout_inside_loops():
  """The reason the custom rule exists: no `01oi` kernel in the loop body's backward convolution."""
  x = jnp.ones((1, 8, 8, 4))
  k = jnp.ones((3, 3, 4, 6))
  grad = jax.grad(lambda x: jnp.sum(linear.conv_general_dilated(
      x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))))
  hlo = jax.jit(lambda x: lax.fori_loop(0, 2, lambda _, y: grad(y), x)).lower(x).compile().as_text()
  labels = [line.split('dim_labels=')[1].split(',')[0] for line in hlo.splitlines()
            if ' convolution(' in line]
  assert labels and all('_01io->' in label for label in labels), labels


def test_conv_refuses_what_it_does_not_implement():
  x, k = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2))
  with pytest.raises(ValueError, match='feature_group_count 2'):
    linear.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), feature_group_count=2,
                                dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  with pytest.raises(ValueError, match='rhs_dilation'):
    linear.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), rhs_dilation=(2, 2),
                                dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@pytest.mark.parametrize('x_shape, k_shape, padding, numbers', [
    ((2, 6, 4, 4, 3), (3, 1, 1, 3, 5), ((1, 1), (0, 0), (0, 0)), ('NDHWC', 'DHWIO', 'NDHWC')),
    ((2, 9, 10, 5), (3, 3, 5, 7), ((1, 1), (0, 2)), ('NHWC', 'HWIO', 'NHWC')),
])
def test_matmul_conv_matches_lax_in_value_and_gradients(x_shape, k_shape, padding, numbers):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
  k = jnp.asarray(rng.standard_normal(k_shape), jnp.float32)
  dn = lax.conv_dimension_numbers(x_shape, k_shape, numbers)
  strides = (1,) * (len(x_shape) - 2)
  loss = lambda conv: lambda x, k: jnp.sum(jnp.sin(conv(x, k, strides, padding, dimension_numbers=dn)))
  ours, theirs = loss(linear.matmul_conv_general_dilated), loss(lax.conv_general_dilated)
  np.testing.assert_allclose(ours(x, k), theirs(x, k), rtol=1e-5)
  for got, want in zip(jax.grad(ours, (0, 1))(x, k), jax.grad(theirs, (0, 1))(x, k)):
    # Other summation order: float32 rounding of sums whose terms reach max|want|.
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(jnp.abs(want).max()))


def test_matmul_conv_keeps_low_precision_dtype_and_refuses_strides():
  x, k = jnp.ones((1, 4, 4, 2), jnp.bfloat16), jnp.ones((3, 3, 2, 2), jnp.bfloat16)
  dn = ('NHWC', 'HWIO', 'NHWC')
  y = linear.matmul_conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn)
  assert y.dtype == jnp.bfloat16 and float(y[0, 1, 1, 0]) == 18.0
  with pytest.raises(ValueError, match=r'strides \(2, 1\)'):
    linear.matmul_conv_general_dilated(x, k, (2, 1), ((1, 1), (1, 1)), dimension_numbers=dn)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_upsampling_conv_is_a_conv_of_the_input_repeated_2x2(dtype):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 5, 7, 4)), dtype)
  k = jnp.asarray(rng.standard_normal((3, 3, 4, 6)), dtype)
  dn = ('NHWC', 'HWIO', 'NHWC')
  pad = ((1, 1), (1, 1))
  ours = lambda x, k: linear.upsampling_conv_general_dilated(x, k, (1, 1), pad, dimension_numbers=dn)
  theirs = lambda x, k: lax.conv_general_dilated(jnp.repeat(jnp.repeat(x, 2, 1), 2, 2), k, (1, 1), pad,
                                                 dimension_numbers=dn)
  y = ours(x, k)
  assert y.shape == (2, 10, 14, 6) and y.dtype == dtype
  # The same products summed in another order (kernel taps first): rounding of sums of 36 terms of
  # up to max|x| max|k| each, in the dtype's precision.
  atol = 36 * float(jnp.finfo(dtype).eps) * float(jnp.abs(x).max() * jnp.abs(k).max()) * 4
  np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(theirs(x, k), np.float32), rtol=0, atol=atol)
  if dtype == jnp.float32:
    loss = lambda conv: lambda x, k: jnp.sum(jnp.sin(conv(x, k)))
    for got, want in zip(jax.grad(loss(ours), (0, 1))(x, k), jax.grad(loss(theirs), (0, 1))(x, k)):
      np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(jnp.abs(want).max()))
  with pytest.raises(ValueError, match='padding'):
    linear.upsampling_conv_general_dilated(x, k, (1, 1), ((0, 0), (0, 0)), dimension_numbers=dn)
