"""The VAE's 2-D encoder and the mid-block attention it shares with the temporal decoder (SPEC §3.4).

Mirrors diffusers `Encoder` (`double_z=True`, built by `AutoencoderKLTemporalDecoder`) and the
`Attention(residual_connection=True, norm_num_groups=32, heads=1, bias=True)` of its
`UNetMidBlock2D` / `MidBlockTemporalDecoder`. Every image is encoded on its own (no frame axis).

  x = conv_in(images)                                   # 3x3, -> C0
  for block i: L x ResnetBlock (no temb, eps 1e-6) [-> Downsample (pad right/bottom, stride 2)]
  x = resnet -> attention -> resnet                     # mid block, eps 1e-6
  moments = conv_out(silu(conv_norm_out(x)))            # 3x3, -> 2 * latent channels

Flax names are the torch names (`down_blocks_0/resnets_1/conv1`, `mid_block/attentions_0/to_q`);
`convert/vae.py` only renames `to_out.0` -> `to_out`.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sa_jax.nn import linear
from sa_jax.nn.attention import Attention
from sa_jax.nn.norms import NUM_GROUPS, GroupNorm
from sa_jax.nn.resample import Downsample
from sa_jax.nn.resnet import ResnetBlock

Dtype = Any

# GroupNorm eps of every encoder norm, the mid-block attention and the decoder's spatial resnets.
EPS = 1e-6


class VAEAttention(nn.Module):
  """`x + to_out(attention(group_norm(x)))`: one head as wide as the channels, scale `C^-0.5`.

  The shared `Attention` (q/k/v/out with biases, `heads=1`, `head_dim=C`) shares this module's
  scope, so the parameters are `group_norm`, `to_q`, `to_k`, `to_v`, `to_out` side by side as in
  the torch state dict. Tokens are the h*w pixels of one image (row-major, as torch's flatten).

  Attributes:
    epsilon: GroupNorm eps.
    num_groups: GroupNorm groups.
  """
  epsilon: float = EPS
  num_groups: int = NUM_GROUPS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Args: x `[N, h, w, C]`. Returns `[N, h, w, C]`."""
    n, h, w, c = x.shape
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    tokens = GroupNorm(self.epsilon, self.num_groups, name='group_norm', **kw)(x)
    tokens = tokens.reshape(n, h * w, c)                                      # [N, h, w, C] -> [N, L, C]
    attention = Attention(heads=1, head_dim=c, qkv_bias=True, **kw)
    nn.share_scope(self, attention)
    out = attention(tokens).reshape(n, h, w, c)                               # [N, L, C] -> [N, h, w, C]
    return out + x


class _DownBlock(nn.Module):
  """diffusers `DownEncoderBlock2D`: `layers` resnets, then an optional stride-2 downsample."""
  channels: int
  layers: int
  add_downsample: bool
  num_groups: int = NUM_GROUPS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for j in range(self.layers):
      x = ResnetBlock(self.channels, EPS, num_groups=self.num_groups, name=f'resnets_{j}', **kw)(x)
    if self.add_downsample:
      # torch pads (0, 1, 0, 1) then convolves with no padding (SPEC §7.2).
      x = Downsample(self.channels, padding=(0, 1), name='downsamplers_0', **kw)(x)
    return x


class _MidBlock(nn.Module):
  """diffusers `UNetMidBlock2D` without temb: resnet -> attention -> resnet."""
  channels: int
  num_groups: int = NUM_GROUPS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = ResnetBlock(self.channels, EPS, num_groups=self.num_groups, name='resnets_0', **kw)(x)
    x = VAEAttention(EPS, self.num_groups, name='attentions_0', **kw)(x)
    return ResnetBlock(self.channels, EPS, num_groups=self.num_groups, name='resnets_1', **kw)(x)


class Encoder(nn.Module):
  """Images -> posterior moments (before `quant_conv`).

  Attributes:
    block_out_channels: widths C_i of the down blocks (a stride-2 downsample follows every block
      but the last, so the spatial factor is `2 ** (len - 1)`).
    layers_per_block: resnets per down block.
    latent_channels: latent width; the output has twice as many (mean | logvar).
    num_groups: GroupNorm groups of every norm.
  """
  block_out_channels: tuple[int, ...]
  layers_per_block: int
  latent_channels: int
  num_groups: int = NUM_GROUPS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    """Args: images `[N, H, W, C_in]`. Returns `[N, H/f, W/f, 2 * latent_channels]`."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    channels = self.block_out_channels
    x = linear.conv3x3(channels[0], name='conv_in', **kw)(images)
    for i, c in enumerate(channels):
      x = _DownBlock(c, self.layers_per_block, add_downsample=i < len(channels) - 1,
                     num_groups=self.num_groups, name=f'down_blocks_{i}', **kw)(x)
    x = _MidBlock(channels[-1], self.num_groups, name='mid_block', **kw)(x)
    x = nn.silu(GroupNorm(EPS, self.num_groups, name='conv_norm_out', **kw)(x))
    return linear.conv3x3(2 * self.latent_channels, name='conv_out', **kw)(x)
