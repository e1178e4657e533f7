"""Normalisation layers with explicit eps and float32 statistics.

torch semantics: biased variance, `(x - mean) / sqrt(var + eps) * scale + bias`. Flax's own
defaults differ (LayerNorm eps 1e-6), so every caller passes `epsilon` explicitly.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sa_jax import sharding

Dtype = Any

NUM_GROUPS = 32      # GroupNorm groups throughout SVD (UNet, VAE)


def _affine_params(module: nn.Module, features: int, param_dtype: Dtype):
  scale = module.param('scale', nn.with_logical_partitioning(nn.initializers.ones, (sharding.NORM,)),
                       (features,), param_dtype)
  bias = module.param('bias', nn.with_logical_partitioning(nn.initializers.zeros, (sharding.NORM,)),
                      (features,), param_dtype)
  return scale, bias


class GroupNorm(nn.Module):
  """GroupNorm over every axis but the first, per group of channels.

  On `[BF, H, W, C]` the statistics are per frame (torch `GroupNorm` on 4-D input); on
  `[B, F, H, W, C]` they pool over the frames too (torch `GroupNorm` on a 5-D `(B, C, F, H, W)`
  tensor, used by the temporal resnets).

  Attributes:
    epsilon: added to the variance (no default: SPEC §7.3 lists per-block values).
    num_groups: channel groups (`NUM_GROUPS` throughout SVD).
  """
  epsilon: float
  num_groups: int = NUM_GROUPS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    if channels % self.num_groups:
      raise ValueError(f'GroupNorm: {channels} channels do not split into {self.num_groups} groups')
    scale, bias = _affine_params(self, channels, self.param_dtype)
    rows = x.astype(jnp.float32).reshape(x.shape[0], -1, channels)           # [N, ..., C] -> [N, P, C]
    count = rows.shape[1] * (channels // self.num_groups)

    def group_mean(values: jax.Array) -> jax.Array:
      """`[N, P, C]` -> each channel's group mean `[N, 1, C]`: per-channel sums first, then groups
      (twice as fast on a CPU as one reduction over the grouped axes, and closer to float64)."""
      sums = values.sum(1).reshape(x.shape[0], self.num_groups, -1).sum(-1) / count    # [N, G]
      return jnp.repeat(sums, channels // self.num_groups, axis=-1)[:, None]

    centered = rows - group_mean(rows)
    y = centered * jax.lax.rsqrt(group_mean(jnp.square(centered)) + self.epsilon)
    return (y.reshape(x.shape) * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


class LayerNorm(nn.Module):
  """LayerNorm over the last axis with affine parameters (torch `nn.LayerNorm`)."""
  epsilon: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale, bias = _affine_params(self, x.shape[-1], self.param_dtype)
    xf = x.astype(jnp.float32)
    mean = xf.mean(-1, keepdims=True)
    var = jnp.square(xf - mean).mean(-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon)
    return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


class BatchNorm(nn.Module):
  """Inference-mode BatchNorm over the last axis with stored statistics (torch `BatchNorm1d/2d` in eval).

  `y = (x - mean) / sqrt(var + eps) * scale + bias`, computed in float32. The running statistics
  are ordinary parameters (`mean`, `var`) next to `scale` and `bias`: the network that uses this
  (the IResNet face embedder) is frozen, and keeping them in `params` lets one strict conversion fill
  the whole tree. Differentiable w.r.t. `x`.

  Attributes:
    epsilon: added to the variance (torch default 1e-5).
  """
  epsilon: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Args: x `[..., C]` (`[N, H, W, C]` or `[N, C]`). Returns x's shape in `dtype`."""
    features = x.shape[-1]
    scale, bias = _affine_params(self, features, self.param_dtype)
    stat = lambda name, init: self.param(
        name, nn.with_logical_partitioning(init, (sharding.NORM,)), (features,), self.param_dtype)
    mean = stat('mean', nn.initializers.zeros).astype(jnp.float32)
    var = stat('var', nn.initializers.ones).astype(jnp.float32)
    y = (x.astype(jnp.float32) - mean) * jax.lax.rsqrt(var + self.epsilon)
    return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)
