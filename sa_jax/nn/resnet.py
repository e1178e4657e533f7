"""Residual blocks shared by the UNet and the VAE (SPEC §2.4, §3.4).

Layouts: spatial blocks see `[BF, H, W, C]` (frames flattened into the batch, frame index
fastest); temporal blocks see `[B, F, H, W, C]`.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sa_jax import sharding
from sa_jax.nn import linear
from sa_jax.nn.norms import NUM_GROUPS, GroupNorm
from sa_jax.nn.remat import remat_call

Dtype = Any


class ResnetBlock(nn.Module):
  """`shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))) + proj(silu(temb)))))`.

  The spatial form is diffusers `ResnetBlock2D` (3x3 convolutions, GroupNorm per frame). The
  temporal form is `TemporalResnetBlock`: convolutions over frames only (kernel (3,1,1), zero
  padding at the first and last frame) and GroupNorm statistics pooled over all frames.

  Attributes:
    out_channels: output channels; a 1x1 `conv_shortcut` exists iff they differ from the input's.
    epsilon: GroupNorm eps (SPEC §2.4 lists it per block).
    temporal: temporal form, input `[B, F, H, W, C]` and temb `[B, F, T]`.
    num_groups: GroupNorm groups.
  """
  out_channels: int
  epsilon: float
  temporal: bool = False
  num_groups: int = NUM_GROUPS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _conv(self, name: str, kernel_axes: linear.KernelAxes = sharding.OUT_PROJ) -> nn.Conv:
    kw = dict(kernel_axes=kernel_axes, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    if self.temporal:
      return linear.temporal_conv(self.out_channels, **kw)
    return linear.conv3x3(self.out_channels, **kw)

  def _pin_frames(self, h: jax.Array, features: str | None) -> jax.Array:
    """Temporal: frames stay split as in the input (`SpatioTemporalResBlock` pins it), so the
    convolutions exchange boundary frames only (`sharding` docstring); spatial: unchanged."""
    return sharding.constrain(h, sharding.VIDEO + (None, None, features)) if self.temporal else h

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array | None = None) -> jax.Array:
    """Args:
      x: `[BF, H, W, C]`, or `[B, F, H, W, C]` when temporal.
      temb: `[BF, T]` (`[B, F, T]` when temporal) or None for blocks without time embedding.
    Returns:
      x's shape with `out_channels` channels.
    """
    norm = lambda name: GroupNorm(self.epsilon, self.num_groups, dtype=self.dtype,
                                  param_dtype=self.param_dtype, name=name)
    h = self._conv('conv1', sharding.IN_PROJ)(nn.silu(norm('norm1')(x)))
    if temb is not None:
      t = linear.dense(self.out_channels, kernel_axes=sharding.IN_PROJ, dtype=self.dtype,
                       param_dtype=self.param_dtype, name='time_emb_proj')(nn.silu(temb))
      h = h + t[..., None, None, :]
    h = self._pin_frames(h, sharding.MLP)
    h = self._pin_frames(self._conv('conv2')(nn.silu(norm('norm2')(h))), None)
    if x.shape[-1] != self.out_channels:
      x = linear.conv1x1(self.out_channels, dtype=self.dtype, param_dtype=self.param_dtype,
                         name='conv_shortcut')(x)
    return x + h


class AlphaBlender(nn.Module):
  """Learned mix of a spatial and a temporal branch (diffusers `AlphaBlender`).

  `a = sigmoid(mix_factor)`, or `1 - sigmoid(mix_factor)` with `switch`; returns
  `a * spatial + (1 - a) * temporal`.
  """
  switch: bool = False
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, spatial: jax.Array, temporal: jax.Array) -> jax.Array:
    mix = self.param('mix_factor', nn.initializers.zeros, (1,), self.param_dtype)
    alpha = jax.nn.sigmoid(mix.astype(jnp.float32))
    if self.switch:
      alpha = 1.0 - alpha
    alpha = alpha.astype(spatial.dtype)
    return alpha * spatial + (1.0 - alpha) * temporal


class SpatioTemporalResBlock(nn.Module):
  """Spatial resnet, then a temporal resnet on its output, blended (SPEC §2.4, §3.4).

  Attributes:
    out_channels: output channels.
    epsilon: GroupNorm eps of the spatial block.
    temporal_epsilon: GroupNorm eps of the temporal block (UNet: same as spatial; VAE decoder: 1e-5).
    switch: AlphaBlender `switch_spatial_to_temporal_mix` (VAE decoder: True).
    remat: recompute the spatial and the temporal resnet each on its own in the backward pass,
      once the backward pass reaches it (`sa_jax.nn.remat.remat_call`; the VAE decoder under HJB).
    num_groups: GroupNorm groups of both resnets.
  """
  out_channels: int
  epsilon: float
  temporal_epsilon: float
  switch: bool = False
  remat: bool = False
  num_groups: int = NUM_GROUPS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array | None, num_frames: int) -> jax.Array:
    """Args: x `[BF, H, W, C]`; temb `[BF, T]` or None; num_frames F. Returns `[BF, H, W, C']`."""
    kw = dict(num_groups=self.num_groups, dtype=self.dtype, param_dtype=self.param_dtype)
    spatial = remat_call(ResnetBlock(self.out_channels, self.epsilon, name='spatial_res_block', **kw), x, temb,
                         enabled=self.remat)
    bf, h, w, c = spatial.shape
    b = bf // num_frames
    spatial = spatial.reshape(b, num_frames, h, w, c)                # [BF, H, W, C] -> [B, F, H, W, C]
    # Frames stay where the stream has them: the frame convolutions exchange boundary frames only.
    spatial = sharding.constrain(spatial, sharding.VIDEO + (None, None, None))
    if temb is not None:
      temb = temb.reshape(b, num_frames, temb.shape[-1])             # [BF, T] -> [B, F, T]
    temporal = remat_call(ResnetBlock(self.out_channels, self.temporal_epsilon, temporal=True,
                                      name='temporal_res_block', **kw), spatial, temb, enabled=self.remat)
    out = AlphaBlender(self.switch, self.param_dtype, name='time_mixer')(spatial, temporal)
    return sharding.constrain(out, sharding.VIDEO + (None, None, None)).reshape(bf, h, w, c)
