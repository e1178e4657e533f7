"""The StableAnimator denoiser: SVD's spatio-temporal UNet with pose latents and the ID adapter.

Mirrors StableAnimator's copy of diffusers `UNetSpatioTemporalConditionModel` (SPEC §2): pose
latents are added after `conv_in`; every spatial cross-attention is the ID adapter; temporal layers
see only the CLIP token. Layout is channels-last: `sample [B, F, h, w, C_in]`.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sa_jax import sharding
from sa_jax.models.unet_transformer import TransformerSpatioTemporal
from sa_jax.nn import linear
from sa_jax.nn.embeddings import TimestepEmbedding, timestep_embedding
from sa_jax.nn.norms import GroupNorm
from sa_jax.nn.remat import remat_call
from sa_jax.nn.resample import Downsample, Upsample
from sa_jax.nn.resnet import SpatioTemporalResBlock

Dtype = Any

DOWN_BLOCK_TYPES = ('CrossAttnDownBlockSpatioTemporal', 'DownBlockSpatioTemporal')
UP_BLOCK_TYPES = ('CrossAttnUpBlockSpatioTemporal', 'UpBlockSpatioTemporal')
# Resnet GroupNorm eps per block type (SPEC §2.4): diffusers builds the plain down block and the
# mid block with 1e-5, the cross-attention down blocks and every up block with 1e-6.
RESNET_EPS = {
    'CrossAttnDownBlockSpatioTemporal': 1e-6,
    'DownBlockSpatioTemporal': 1e-5,
    'mid': 1e-5,
    'CrossAttnUpBlockSpatioTemporal': 1e-6,
    'UpBlockSpatioTemporal': 1e-6,
}
OUT_NORM_EPS = 1e-5


def _per_block(value: Any, n: int, name: str) -> tuple[int, ...]:
  values = tuple(value) if isinstance(value, (list, tuple)) else (value,) * n
  if len(values) != n:
    raise ValueError(f'{name} has {len(values)} entries, expected one per block ({n})')
  return tuple(int(v) for v in values)


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """Architecture of the UNet; keys as in diffusers `unet/config.json` (SPEC §2.1)."""
  in_channels: int = 8
  out_channels: int = 4
  block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
  num_attention_heads: tuple[int, ...] = (5, 10, 20, 20)
  down_block_types: tuple[str, ...] = ('CrossAttnDownBlockSpatioTemporal',) * 3 + ('DownBlockSpatioTemporal',)
  up_block_types: tuple[str, ...] = ('UpBlockSpatioTemporal',) + ('CrossAttnUpBlockSpatioTemporal',) * 3
  layers_per_block: tuple[int, ...] = (2, 2, 2, 2)
  transformer_layers_per_block: tuple[int, ...] = (1, 1, 1, 1)
  cross_attention_dim: int = 1024
  addition_time_embed_dim: int = 256
  projection_class_embeddings_input_dim: int = 768
  num_face_tokens: int = 4

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'UNetConfig':
    """Builds from a diffusers config (unknown keys such as `num_frames` are ignored)."""
    n = len(d.get('block_out_channels', cls.block_out_channels))
    fields = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in d.items() if k in fields}
    for key in ('block_out_channels', 'down_block_types', 'up_block_types'):
      if key in kw:
        kw[key] = tuple(kw[key])
    scalar_defaults = dict(num_attention_heads=cls.num_attention_heads, layers_per_block=2,
                           transformer_layers_per_block=1)
    for key, default in scalar_defaults.items():
      kw[key] = _per_block(kw.get(key, default), n, key)
    config = cls(**kw)
    config.validate()
    return config

  def validate(self) -> None:
    n = len(self.block_out_channels)
    for name in ('down_block_types', 'up_block_types', 'num_attention_heads', 'layers_per_block',
                 'transformer_layers_per_block'):
      if len(getattr(self, name)) != n:
        raise ValueError(f'UNet config: {name} has {len(getattr(self, name))} entries, '
                         f'block_out_channels has {n}')
    for t in self.down_block_types:
      if t not in DOWN_BLOCK_TYPES:
        raise ValueError(f'UNet config: unsupported down block {t!r}; expected one of {DOWN_BLOCK_TYPES}')
    for t in self.up_block_types:
      if t not in UP_BLOCK_TYPES:
        raise ValueError(f'UNet config: unsupported up block {t!r}; expected one of {UP_BLOCK_TYPES}')
    if self.projection_class_embeddings_input_dim != 3 * self.addition_time_embed_dim:
      raise ValueError('UNet config: projection_class_embeddings_input_dim '
                       f'{self.projection_class_embeddings_input_dim} != 3 x addition_time_embed_dim '
                       f'{self.addition_time_embed_dim} (three added time ids)')


class _Blocks(nn.Module):
  """Shared options of the down, mid and up blocks."""
  config: UNetConfig
  remat: bool = False
  query_chunk_size: int | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  # With `remat`, each resnet and transformer keeps only its inputs and is recomputed once the
  # backward pass reaches it (`remat_call`: under `nn.remat` XLA:CPU ran many blocks'
  # recomputations ahead of their backward passes, keeping their activations alive together).

  def resnet(self, channels: int, eps: float, name: str, x, temb, num_frames):
    block = SpatioTemporalResBlock(channels, eps, eps, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    return remat_call(block, x, temb, static=(num_frames,), enabled=self.remat)

  def transformer(self, heads: int, depth: int, name: str, x, context, num_frames):
    block = TransformerSpatioTemporal(heads, depth, self.config.num_face_tokens, self.query_chunk_size,
                                      remat=self.remat, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    return remat_call(block, x, context, static=(num_frames,), enabled=self.remat)


class DownBlock(_Blocks):
  """`layers` x [resnet (-> transformer)] then an optional stride-2 downsample."""
  index: int = 0

  @nn.compact
  def __call__(self, x, temb, context, num_frames):
    """Args: x `[BF, h, w, C]`, temb `[BF, T]`, context `[B, S, D]`. Returns (x, skips)."""
    cfg, i = self.config, self.index
    kind = cfg.down_block_types[i]
    channels = cfg.block_out_channels[i]
    skips = []
    for j in range(cfg.layers_per_block[i]):
      x = self.resnet(channels, RESNET_EPS[kind], f'resnets_{j}', x, temb, num_frames)
      if kind.startswith('CrossAttn'):
        x = self.transformer(cfg.num_attention_heads[i], cfg.transformer_layers_per_block[i],
                             f'attentions_{j}', x, context, num_frames)
      skips.append(x)
    if i < len(cfg.block_out_channels) - 1:
      x = Downsample(channels, (1, 1), dtype=self.dtype, param_dtype=self.param_dtype,
                     name='downsamplers_0')(x)
      skips.append(x)
    return x, skips


class MidBlock(_Blocks):
  """resnet -> transformer -> resnet at the lowest resolution."""

  @nn.compact
  def __call__(self, x, temb, context, num_frames):
    cfg = self.config
    channels = cfg.block_out_channels[-1]
    x = self.resnet(channels, RESNET_EPS['mid'], 'resnets_0', x, temb, num_frames)
    x = self.transformer(cfg.num_attention_heads[-1], cfg.transformer_layers_per_block[-1],
                         'attentions_0', x, context, num_frames)
    return self.resnet(channels, RESNET_EPS['mid'], 'resnets_1', x, temb, num_frames)


class UpBlock(_Blocks):
  """`layers + 1` x [concat skip -> resnet (-> transformer)] then an optional x2 upsample."""
  index: int = 0

  @nn.compact
  def __call__(self, x, skips, temb, context, num_frames):
    """Args: skips: the skip tensors this block consumes, last one first. Returns x."""
    cfg, i = self.config, self.index
    kind = cfg.up_block_types[i]
    level = len(cfg.block_out_channels) - 1 - i          # up blocks walk the levels in reverse
    channels = cfg.block_out_channels[level]
    for j, skip in enumerate(skips):
      x = jnp.concatenate([x, skip], axis=-1)           # current features first, skip second
      x = self.resnet(channels, RESNET_EPS[kind], f'resnets_{j}', x, temb, num_frames)
      if kind.startswith('CrossAttn'):
        x = self.transformer(cfg.num_attention_heads[level], cfg.transformer_layers_per_block[level],
                             f'attentions_{j}', x, context, num_frames)
    if i < len(cfg.block_out_channels) - 1:
      x = Upsample(channels, dtype=self.dtype, param_dtype=self.param_dtype, name='upsamplers_0')(x)
    return x


class UNet(nn.Module):
  """The denoiser. Predicts v for EDM-preconditioned inputs (SPEC §2.2).

  Attributes:
    config: architecture.
    remat: recompute resnets and transformers in the backward pass (training, HJB memory).
    query_chunk_size: chunk the spatial attention queries to bound memory (None: no chunking).
  """
  config: UNetConfig
  remat: bool = False
  query_chunk_size: int | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, sample: jax.Array, timestep: jax.Array, context: jax.Array,
               added_time_ids: jax.Array, pose_latents: jax.Array | None = None) -> jax.Array:
    """Args:
      sample: `[B, F, h, w, in_channels]` scaled noisy latents concatenated with image latents.
      timestep: `[]` or `[B]` continuous timestep `0.25 ln(sigma)`.
      context: `[B, S, cross_attention_dim]` CLIP token(s) followed by `num_face_tokens` face tokens.
      added_time_ids: `[B, 3]` (fps - 1, motion bucket, noise augmentation).
      pose_latents: `[B, F, h, w, block_out_channels[0]]` PoseNet features, or None.
    Returns:
      `[B, F, h, w, out_channels]`.
    """
    cfg = self.config
    if sample.ndim != 5 or sample.shape[-1] != cfg.in_channels:
      raise ValueError(f'sample must be [B, F, h, w, {cfg.in_channels}], got {sample.shape}')
    b, f, h, w, _ = sample.shape
    if context.ndim != 3 or context.shape[0] != b or context.shape[-1] != cfg.cross_attention_dim:
      raise ValueError(f'context must be [{b}, S, {cfg.cross_attention_dim}], got {context.shape}')
    if added_time_ids.shape != (b, 3):
      raise ValueError(f'added_time_ids must be [{b}, 3], got {added_time_ids.shape}')
    c0 = cfg.block_out_channels[0]
    if pose_latents is not None and pose_latents.shape != (b, f, h, w, c0):
      raise ValueError(f'pose_latents must be {(b, f, h, w, c0)}, got {pose_latents.shape}')
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    blocks = dict(config=cfg, remat=self.remat, query_chunk_size=self.query_chunk_size, **kw)
    time_dim = 4 * c0

    t = jnp.broadcast_to(jnp.reshape(timestep, (-1,)), (b,))
    temb = TimestepEmbedding(time_dim, time_dim, name='time_embedding', **kw)(
        timestep_embedding(t, c0).astype(self.dtype))
    ids = timestep_embedding(added_time_ids.reshape(-1), cfg.addition_time_embed_dim)
    ids = ids.reshape(b, 3 * cfg.addition_time_embed_dim).astype(self.dtype)   # [fps | motion | noise]
    temb = temb + TimestepEmbedding(time_dim, time_dim, name='add_embedding', **kw)(ids)
    temb = sharding.constrain(jnp.repeat(temb, f, axis=0), (sharding.ROWS, None))   # [B, T] -> [BF, T]

    x = sample.astype(self.dtype).reshape(b * f, h, w, cfg.in_channels)       # [B, F, h, w, C] -> [BF, h, w, C]
    x = nn.with_logical_constraint(x, (sharding.ROWS, None, None, None))   # local frames per device
    context = context.astype(self.dtype)
    x = linear.conv3x3(c0, name='conv_in', **kw)(x)
    if pose_latents is not None:
      x = x + pose_latents.astype(self.dtype).reshape(b * f, h, w, c0)

    skips = [x]
    for i in range(len(cfg.block_out_channels)):
      x, block_skips = DownBlock(index=i, name=f'down_blocks_{i}', **blocks)(x, temb, context, f)
      skips.extend(block_skips)
    x = MidBlock(name='mid_block', **blocks)(x, temb, context, f)
    for i in range(len(cfg.block_out_channels)):
      level = len(cfg.block_out_channels) - 1 - i
      n = cfg.layers_per_block[level] + 1
      consumed, skips = skips[-n:][::-1], skips[:-n]
      x = UpBlock(index=i, name=f'up_blocks_{i}', **blocks)(x, consumed, temb, context, f)

    x = nn.silu(GroupNorm(OUT_NORM_EPS, name='conv_norm_out', **kw)(x))
    x = linear.conv3x3(cfg.out_channels, name='conv_out', **kw)(x)
    return x.reshape(b, f, h, w, cfg.out_channels)                             # [BF, ...] -> [B, F, ...]


def dummy_inputs(config: UNetConfig, batch: int = 1, frames: int = 2, size: int = 8) -> tuple:
  """Smallest valid inputs (for shape inference): `size` must be divisible by 2**(levels-1)."""
  return (jnp.zeros((batch, frames, size, size, config.in_channels)), jnp.zeros(()),
          jnp.zeros((batch, config.num_face_tokens + 1, config.cross_attention_dim)),
          jnp.zeros((batch, 3)), jnp.zeros((batch, frames, size, size, config.block_out_channels[0])))


def abstract_params(config: UNetConfig, dtype: Dtype = jnp.float32) -> Any:
  """Boxed (logically partitioned) parameter shapes, without allocating memory."""
  model = UNet(config, param_dtype=dtype)
  return jax.eval_shape(model.init, jax.random.key(0), *dummy_inputs(config))['params']
