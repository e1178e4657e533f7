"""PoseNet, the pose guider: pose images -> latent-resolution features added to the UNet input (SPEC §3.1).

Mirrors StableAnimator `animation/modules/pose_net.py: PoseNet`. Eight convolutions, each followed by
SiLU, bring `[H, W, 3]` down to `[H/8, W/8, 128]` (three 4x4 stride-2 convolutions with symmetric
padding 1, SPEC §7.2); a 1x1 `final_proj` gives the UNet's first-block width and the result is
multiplied by the learned scalar `scale`. Parameter names match the torch state dict:
`conv_layers_{0,2,...,14}` (torch `conv_layers.N`), `final_proj`, and the top-level `scale`.

A model whose VAE has fewer levels (the demo's: 4 pixels per latent) sets `spatial_factor`: the
stride-2 convolutions beyond it become 3x3 stride-1 ones, under the same names.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sa_jax import sharding
from sa_jax.nn import linear

Dtype = Any

# (torch Sequential index, output channels, kernel, stride); padding is always 1 on every side.
_CONV_LAYERS = (
    (0, 3, 3, 1), (2, 16, 4, 2),
    (4, 16, 3, 1), (6, 32, 4, 2),
    (8, 32, 3, 1), (10, 64, 4, 2),
    (12, 64, 3, 1), (14, 128, 3, 1),
)
SPATIAL_FACTORS = (2, 4, 8)          # pixels per output pixel: one, two or all three strided layers


def conv_layers(spatial_factor: int) -> tuple[tuple[int, int, int, int], ...]:
  """`_CONV_LAYERS` with the strided layers after the first log2(`spatial_factor`) made 3x3 stride 1."""
  keep = spatial_factor.bit_length() - 1
  strided = [index for index, _, _, stride in _CONV_LAYERS if stride == 2]
  return tuple((index, features, 3, 1) if index in strided[keep:] else (index, features, kernel, stride)
               for index, features, kernel, stride in _CONV_LAYERS)


@dataclasses.dataclass(frozen=True)
class PoseNetConfig:
  """Attributes:
    noise_latent_channels: output channels C (320 = UNet block 0 width).
    spatial_factor: pose pixels per output pixel along each axis, the VAE's (8: the release).
  """
  noise_latent_channels: int = 320
  spatial_factor: int = 8

  def __post_init__(self):
    if self.spatial_factor not in SPATIAL_FACTORS:
      raise ValueError(f'PoseNetConfig: spatial_factor {self.spatial_factor}; expected one of {SPATIAL_FACTORS}')

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'PoseNetConfig':
    """From the StableAnimator constructor keys (`noise_latent_channels`) and `spatial_factor`; unknown
    keys are a ValueError."""
    allowed = sorted(f.name for f in dataclasses.fields(cls))
    unknown = sorted(set(d) - set(allowed))
    if unknown:
      raise ValueError(f'{cls.__name__}: unknown keys {unknown}; allowed keys are {allowed}')
    return cls(noise_latent_channels=int(d.get('noise_latent_channels', cls.noise_latent_channels)),
               spatial_factor=int(d.get('spatial_factor', cls.spatial_factor)))


class PoseNet(nn.Module):
  """Pose guider.

  Attributes:
    config: `PoseNetConfig`.
  """
  config: PoseNetConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, poses: jax.Array) -> jax.Array:
    """Args:
      poses: `[F, H, W, 3]` or `[B, F, H, W, 3]` pose images in [-1, 1].
    Returns:
      `[F, H/s, W/s, C]`, or `[BF, H/s, W/s, C]` (batch-major) for 5-D input; s = `spatial_factor`.
    """
    if poses.ndim not in (4, 5) or poses.shape[-1] != 3:
      raise ValueError(f'poses must be [F, H, W, 3] or [B, F, H, W, 3], got shape {poses.shape}')
    x = poses.astype(self.dtype)
    if x.ndim == 5:
      x = x.reshape((-1,) + x.shape[2:])                 # [B, F, H, W, 3] -> [BF, H, W, 3]
    x = sharding.constrain(x, (sharding.ROWS, None, None, None))   # frames are independent rows
    for index, features, kernel, stride in conv_layers(self.config.spatial_factor):
      x = linear.conv(features, (kernel, kernel), strides=stride, padding=((1, 1), (1, 1)),
                      dtype=self.dtype, param_dtype=self.param_dtype,
                      name=f'conv_layers_{index}')(x)
      x = nn.silu(x)
    x = linear.conv1x1(self.config.noise_latent_channels, dtype=self.dtype,
                       param_dtype=self.param_dtype, name='final_proj')(x)
    scale = self.param('scale', nn.with_logical_partitioning(nn.initializers.constant(2.0), (None,)),
                       (1,), self.param_dtype)
    return x * scale.astype(self.dtype)


def abstract_params(config: PoseNetConfig, dtype: Dtype = jnp.float32) -> Any:
  """Boxed `ShapeDtypeStruct` tree of the parameters (no memory is allocated)."""
  model = PoseNet(config, dtype=dtype, param_dtype=dtype)
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3), dtype))['params']

