"""IResNet face-embedding backbone (ArcFace), used by the HJB face optimisation (SPEC §3.5).

Mirrors StableAnimator `animation/helper/backbones/iresnet.py: IResNet` with `IBasicBlock`, in
inference mode (BatchNorm with running statistics, eps 1e-5, dropout off, `fp16=False`):

  stem:  conv1 3x3 (no bias) -> bn1 -> prelu                                  [N, 112, 112, 64]
  layer1..4 (widths 64/128/256/512), each block:
         bn1 -> conv1 3x3 -> bn2 -> prelu -> conv2 3x3 stride s -> bn3, + shortcut (no activation)
         the first block of each layer has stride 2 and `downsample` = 1x1 stride-2 conv + BN
  head:  bn2 -> flatten in torch (C, H, W) order -> fc -> features (BatchNorm1d)   [N, num_features]

Depths: r18 [2,2,2,2], r34 [3,4,6,3], r50 [3,4,14,3], r100 [3,13,30,3] (release), r200 [6,26,60,6].
The forward pass is differentiable w.r.t. the input faces (HJB takes that gradient).
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sa_jax import sharding
from sa_jax.nn import linear
from sa_jax.nn.norms import BatchNorm

Dtype = Any

BN_EPS = 1e-5
WIDTHS = (64, 128, 256, 512)
INPUT_SIZE = 112          # the fc input width 512 * 7 * 7 fixes the face crop size
LAYERS = {'r18': (2, 2, 2, 2), 'r34': (3, 4, 6, 3), 'r50': (3, 4, 14, 3),
          'r100': (3, 13, 30, 3), 'r200': (6, 26, 60, 6)}


@dataclasses.dataclass(frozen=True)
class IResNetConfig:
  """Attributes:
    layers: IBasicBlocks per stage (4 entries; see `LAYERS`).
    num_features: embedding width.
    widths: channels of the four stages (the release's `WIDTHS`; narrower for the demo model).
  """
  layers: tuple[int, ...] = LAYERS['r100']
  num_features: int = 512
  widths: tuple[int, ...] = WIDTHS

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'IResNetConfig':
    """From `configs/svd_xt.py` `face_embedder` / a case config (`layers`, `num_features`, `widths`).

    `layers` may also be an architecture name ('r100'); unknown keys are a ValueError.
    """
    allowed = sorted(f.name for f in dataclasses.fields(cls))
    unknown = sorted(set(d) - set(allowed))
    if unknown:
      raise ValueError(f'{cls.__name__}: unknown keys {unknown}; allowed keys are {allowed}')
    layers = d.get('layers', cls.layers)
    if isinstance(layers, str):
      if layers not in LAYERS:
        raise ValueError(f'unknown IResNet architecture {layers!r}; expected one of {sorted(LAYERS)}')
      layers = LAYERS[layers]
    layers = tuple(int(n) for n in layers)
    if len(layers) != 4 or min(layers) < 1:
      raise ValueError(f'IResNet layers must be 4 positive block counts, got {layers}')
    widths = tuple(int(n) for n in d.get('widths', cls.widths))
    if len(widths) != 4 or min(widths) < 1:
      raise ValueError(f'IResNet widths must be 4 positive channel counts, got {widths}')
    return cls(layers=layers, num_features=int(d.get('num_features', cls.num_features)), widths=widths)


def _conv(features: int, kernel: int, stride: int, name: str, **kw) -> nn.Conv:
  pad = kernel // 2
  return linear.conv(features, (kernel, kernel), strides=stride, padding=((pad, pad), (pad, pad)),
                     use_bias=False, name=name, **kw)


class PReLU(nn.Module):
  """`max(0, x) + a * min(0, x)` with one learned slope `a` per channel (param `negative_slope`)."""
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    slope = self.param('negative_slope', nn.with_logical_partitioning(
        nn.initializers.constant(0.25), (sharding.NORM,)), (x.shape[-1],), self.param_dtype)
    return jnp.where(x > 0, x, slope.astype(x.dtype) * x)   # torch's gradient at 0: the slope


class IBasicBlock(nn.Module):
  """Pre-activation residual block (see the module docstring).

  Attributes:
    features: output channels.
    stride: stride of `conv2`; a `downsample` shortcut exists iff stride != 1 or channels change.
  """
  features: int
  stride: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Args: x `[N, H, W, Cin]`. Returns `[N, H/stride, W/stride, features]`."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = BatchNorm(BN_EPS, name='bn1', **kw)(x)
    h = _conv(self.features, 3, 1, 'conv1', kernel_axes=sharding.IN_PROJ, **kw)(h)
    h = BatchNorm(BN_EPS, name='bn2', **kw)(h)
    h = PReLU(self.param_dtype, name='prelu')(h)
    h = _conv(self.features, 3, self.stride, 'conv2', **kw)(h)
    h = BatchNorm(BN_EPS, name='bn3', **kw)(h)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = _conv(self.features, 1, self.stride, 'downsample_0', **kw)(x)
      x = BatchNorm(BN_EPS, name='downsample_1', **kw)(x)
    return h + x


class IResNet(nn.Module):
  """ArcFace IResNet embedding network.

  Attributes:
    config: `IResNetConfig`.
  """
  config: IResNetConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, faces: jax.Array) -> jax.Array:
    """Args:
      faces: `[N, 112, 112, 3]` RGB face crops in [-1, 1].
    Returns:
      `[N, num_features]` embeddings (not L2-normalised).
    """
    if faces.ndim != 4 or faces.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
      raise ValueError(f'faces must be [N, {INPUT_SIZE}, {INPUT_SIZE}, 3], got shape {faces.shape}')
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = _conv(self.config.widths[0], 3, 1, 'conv1', **kw)(faces.astype(self.dtype))
    x = BatchNorm(BN_EPS, name='bn1', **kw)(x)
    x = PReLU(self.param_dtype, name='prelu')(x)
    for stage, (width, blocks) in enumerate(zip(self.config.widths, self.config.layers), start=1):
      for block in range(blocks):
        x = IBasicBlock(width, stride=2 if block == 0 else 1, name=f'layer{stage}_{block}', **kw)(x)
    x = BatchNorm(BN_EPS, name='bn2', **kw)(x)                     # [N, 7, 7, widths[-1]]
    # SPEC §7.1: torch flattens (C, H, W); the fc weights expect that order, so go NCHW first.
    x = jnp.transpose(x, (0, 3, 1, 2))                              # [N, H, W, C] -> [N, C, H, W]
    x = x.reshape(x.shape[0], -1)                                   # [N, C, H, W] -> [N, C*H*W]
    x = linear.dense(self.config.num_features, name='fc', **kw)(x)
    return BatchNorm(BN_EPS, name='features', **kw)(x)


def abstract_params(config: IResNetConfig, dtype: Dtype = jnp.float32) -> Any:
  """Boxed `ShapeDtypeStruct` tree of the parameters (no memory is allocated)."""
  model = IResNet(config, dtype=dtype, param_dtype=dtype)
  return jax.eval_shape(model.init, jax.random.key(0),
                        jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), dtype))['params']

