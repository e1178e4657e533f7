"""The VAE's temporal decoder (SPEC §3.4): diffusers `TemporalDecoder` of `AutoencoderKLTemporalDecoder`.

Input is `[BF, h, w, latent]` (frames of a batch element consecutive) plus the number of frames
F of the call. Frames interact only inside one call: the temporal convolutions are zero-padded at
the call's first and last frame and the temporal GroupNorms pool over the call's frames, so
decoding a video in chunks changes the result (SPEC §7.12).

  x = conv_in(z)                                          # 3x3, -> C_last
  x = mid_block(x)                                        # STRes -> attention -> STRes
  for block i (channels reversed): (L + 1) x STRes [-> Upsample]
  x = conv_out(silu(conv_norm_out(x)))                    # 3x3, -> out_channels
  x = time_conv_out(x)                                    # kernel (3, 1, 1) over the F frames

STRes is `SpatioTemporalResBlock` with no time embedding, spatial eps 1e-6, temporal eps 1e-5 and
the switched learned blend `(1 - sigmoid(m)) * spatial + sigmoid(m) * temporal`.

With `remat` (the gradient checkpointing of StableAnimator's `RefinedAutoencoderKLTemporalDecoder`,
used by the HJB face correction, SPEC §4.5), only the inputs of every spatial and temporal resnet,
of the attention and of the upsamplers are kept for the backward pass, and each is recomputed
once the backward pass reaches it (`sa_jax.nn.remat.remat_call`). XLA:CPU's estimate for the
gradient of one 4-frame decode at 576x1024, bfloat16: 79.2 GB with `nn.remat` per block (the
recomputations of many blocks ran before their backward passes), 20.1 GB with `remat_call` per
spatio-temporal resnet, 17.4 GB per spatial and temporal resnet (the peak: the backward pass of
the first full-resolution spatial resnet, 256 -> 128 channels; docs/performance.md).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sa_jax.models.vae_encoder import EPS, VAEAttention
from sa_jax.nn import linear
from sa_jax.nn.norms import NUM_GROUPS, GroupNorm
from sa_jax.nn.remat import remat_call
from sa_jax.nn.resample import Upsample
from sa_jax.nn.resnet import SpatioTemporalResBlock

Dtype = Any

TEMPORAL_EPS = 1e-5


def _resnet(channels: int, name: str, remat: bool, num_groups: int, dtype: Dtype, param_dtype: Dtype
            ) -> SpatioTemporalResBlock:
  return SpatioTemporalResBlock(channels, EPS, TEMPORAL_EPS, switch=True, remat=remat, num_groups=num_groups,
                                dtype=dtype, param_dtype=param_dtype, name=name)


class _MidBlock(nn.Module):
  """diffusers `MidBlockTemporalDecoder`: `resnets_0`, then `attentions_0` -> `resnets_1`.

  diffusers builds `layers` resnets and one attention but its forward pairs `resnets[1:]` with
  the single attention, so only resnets 0 and 1 (and the attention, when `layers >= 2`) ever
  run; the unused ones are not created here (the release has `layers = 2`: nothing is unused).
  """
  channels: int
  layers: int
  remat: bool = False                 # see TemporalDecoder
  num_groups: int = NUM_GROUPS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, num_frames: int) -> jax.Array:
    """Args: x `[BF, h, w, C]`; num_frames F. Returns `[BF, h, w, C]`."""
    resnet = lambda name: _resnet(self.channels, name, self.remat, self.num_groups, self.dtype,
                                  self.param_dtype)
    x = resnet('resnets_0')(x, None, num_frames)
    if self.layers >= 2:
      attention = VAEAttention(EPS, self.num_groups, dtype=self.dtype, param_dtype=self.param_dtype,
                               name='attentions_0')
      x = remat_call(attention, x, enabled=self.remat)
      x = resnet('resnets_1')(x, None, num_frames)
    return x


class _UpBlock(nn.Module):
  """diffusers `UpBlockTemporalDecoder`: `layers` resnets, then an optional x2 upsample."""
  channels: int
  layers: int
  add_upsample: bool
  remat: bool = False                 # see TemporalDecoder
  num_groups: int = NUM_GROUPS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, num_frames: int) -> jax.Array:
    """Args: x `[BF, h, w, C_prev]`; num_frames F. Returns `[BF, h', w', channels]` (2x with upsample)."""
    for j in range(self.layers):
      x = _resnet(self.channels, f'resnets_{j}', self.remat, self.num_groups, self.dtype,
                  self.param_dtype)(x, None, num_frames)
    if self.add_upsample:
      upsample = Upsample(self.channels, dtype=self.dtype, param_dtype=self.param_dtype, name='upsamplers_0')
      x = remat_call(upsample, x, enabled=self.remat)
    return x


class TemporalDecoder(nn.Module):
  """Latents -> frames, mixing information across the frames of one call.

  Attributes:
    block_out_channels: the encoder's block widths; the up blocks use them in reverse.
    layers_per_block: the encoder's resnets per block; each up block has one more.
    out_channels: image channels.
    remat: keep only the inputs of each resnet, the attention and the upsamplers for the backward
      pass, and recompute them one at a time.
    num_groups: GroupNorm groups of every norm.
  """
  block_out_channels: tuple[int, ...]
  layers_per_block: int
  out_channels: int
  remat: bool = False
  num_groups: int = NUM_GROUPS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array, num_frames: int) -> jax.Array:
    """Args:
      z: `[BF, h, w, latent]` unscaled latents, frames of a batch element consecutive.
      num_frames: F, frames per batch element (a Python int dividing BF).
    Returns:
      `[BF, H, W, out_channels]` with `H = h * 2 ** (len(block_out_channels) - 1)`.
    """
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    channels = self.block_out_channels[::-1]
    x = linear.conv3x3(channels[0], name='conv_in', **kw)(z.astype(self.dtype))
    groups = self.num_groups
    x = _MidBlock(channels[0], self.layers_per_block, remat=self.remat, num_groups=groups, name='mid_block',
                  **kw)(x, num_frames)
    for i, c in enumerate(channels):
      x = _UpBlock(c, self.layers_per_block + 1, add_upsample=i < len(channels) - 1, remat=self.remat,
                   num_groups=groups, name=f'up_blocks_{i}', **kw)(x, num_frames)
    x = nn.silu(GroupNorm(EPS, groups, name='conv_norm_out', **kw)(x))
    x = linear.conv3x3(self.out_channels, name='conv_out', **kw)(x)
    bf, h, w, c = x.shape
    x = x.reshape(bf // num_frames, num_frames, h, w, c)      # [BF, H, W, C] -> [B, F, H, W, C]
    x = linear.temporal_conv(self.out_channels, name='time_conv_out', **kw)(x)
    return x.reshape(bf, h, w, c)                             # [B, F, H, W, C] -> [BF, H, W, C]
