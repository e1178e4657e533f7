"""The spatio-temporal transformer of the SVD UNet (SPEC §2.7, §2.8).

Mirrors diffusers `TransformerSpatioTemporalModel` with StableAnimator's changes: the spatial
cross-attention is the ID adapter (`id_adapter.IDAttention`), and the temporal blocks see only the
CLIP token(s) of the context, never the face tokens.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sa_jax import sharding
from sa_jax.models.id_adapter import IDAttention
from sa_jax.nn import linear
from sa_jax.nn.attention import Attention
from sa_jax.nn.embeddings import TimestepEmbedding, timestep_embedding
from sa_jax.nn.feedforward import FeedForward
from sa_jax.nn.norms import GroupNorm, LayerNorm
from sa_jax.nn.remat import remat_call
from sa_jax.nn.resnet import AlphaBlender

Dtype = Any

LN_EPS = 1e-5
GN_EPS = 1e-6
FRAMES_VIEW = sharding.VIDEO + (None, None)   # [B, F, L, C]
SEQUENCES = (sharding.ROWS, None, None)       # [BL, F, C]


class SpatialBlock(nn.Module):
  """Self-attention over the H*W tokens of a frame, ID-adapter cross-attention, GEGLU MLP."""
  heads: int
  head_dim: int
  num_face_tokens: int
  query_chunk_size: int | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    """Args: x `[BF, L, C]`; context `[BF, S, Ckv]`. Returns `[BF, L, C]`."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    c = x.shape[-1]
    x = x + Attention(self.heads, self.head_dim, query_chunk_size=self.query_chunk_size,
                      name='attn1', **kw)(LayerNorm(LN_EPS, name='norm1', **kw)(x))
    x = x + IDAttention(self.heads, self.head_dim, self.num_face_tokens,
                        query_chunk_size=self.query_chunk_size, name='attn2',
                        **kw)(LayerNorm(LN_EPS, name='norm2', **kw)(x), context)
    return x + FeedForward(4 * c, geglu=True, name='ff', **kw)(LayerNorm(LN_EPS, name='norm3', **kw)(x))


class TemporalBlock(nn.Module):
  """Attention across the F frames at each spatial position (diffusers `TemporalBasicTransformerBlock`)."""
  heads: int
  head_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, time_context: jax.Array, num_frames: int) -> jax.Array:
    """Args: x `[BF, L, C]`; time_context `[B, S', Ckv]`; num_frames F. Returns `[BF, L, C]`."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    bf, length, c = x.shape
    b = bf // num_frames
    x = sharding.constrain(x.reshape(b, num_frames, length, c), FRAMES_VIEW)   # [BF, L, C] -> [B, F, L, C]
    # Attention needs all F frames of a sequence: the sequences are re-split by rows instead of
    # frames (one all-to-all in, one out: each device sends 2 (c - 1) / c^2 of x, where attending
    # with F split would gather K and V, 2 (c - 1) / c; `sharding` docstring). Pinned on both sides.
    x = x.transpose(0, 2, 1, 3).reshape(b * length, num_frames, c)   # -> [B, L, F, C] -> [BL, F, C]
    x = sharding.constrain(x, SEQUENCES)
    ctx = jnp.broadcast_to(time_context[:, None], (b, length) + time_context.shape[1:])
    ctx = ctx.reshape((b * length,) + time_context.shape[1:])         # [B, S', Ckv] -> [BL, S', Ckv]
    norm = lambda name: LayerNorm(LN_EPS, name=name, **kw)
    x = x + FeedForward(4 * c, geglu=True, name='ff_in', **kw)(norm('norm_in')(x))
    x = x + Attention(self.heads, self.head_dim, name='attn1', **kw)(norm('norm1')(x))
    x = x + Attention(self.heads, self.head_dim, name='attn2', **kw)(norm('norm2')(x), ctx)
    x = x + FeedForward(4 * c, geglu=True, name='ff', **kw)(norm('norm3')(x))
    x = sharding.constrain(x, SEQUENCES)
    x = x.reshape(b, length, num_frames, c).transpose(0, 2, 1, 3)   # [BL, F, C] -> [B, F, L, C]
    return sharding.constrain(x, FRAMES_VIEW).reshape(bf, length, c)


class TransformerSpatioTemporal(nn.Module):
  """GroupNorm, spatial block, temporal block with frame-position embedding, learned mix.

  Attributes:
    heads: N (head dim is C / N).
    depth: spatial/temporal block pairs (`transformer_layers_per_block`, 1 in SVD).
    num_face_tokens: trailing face tokens of the context (see `IDAttention`).
    query_chunk_size: chunking of the spatial attention queries (memory), None for none.
    remat: recompute each spatial and temporal block on its own in the backward pass, once the
      backward pass reaches it (`sa_jax.nn.remat.remat_call`; inside a recomputed transformer, one
      block's activations are alive at a time instead of the whole transformer's).
  """
  heads: int
  depth: int
  num_face_tokens: int
  query_chunk_size: int | None = None
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array, num_frames: int) -> jax.Array:
    """Args:
      x: `[BF, H, W, C]`.
      context: `[B, S, Ckv]` CLIP tokens then face tokens (shared by the frames of a video).
      num_frames: F.
    Returns:
      `[BF, H, W, C]`.
    """
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    bf, h, w, c = x.shape
    head_dim = c // self.heads
    residual = x
    x = GroupNorm(GN_EPS, name='norm', **kw)(x).reshape(bf, h * w, c)   # [BF, H, W, C] -> [BF, L, C]
    x = linear.dense(c, name='proj_in', **kw)(x)

    frame_context = jnp.repeat(context, num_frames, axis=0)            # [B, S, Ckv] -> [BF, S, Ckv]
    # Temporal layers see only the CLIP token(s): StableAnimator drops the face tokens there.
    time_context = context[:, :-self.num_face_tokens]                  # [B, S - T, Ckv]
    frames = jnp.arange(num_frames)                                    # tile-local positions
    position = TimestepEmbedding(4 * c, c, name='time_pos_embed', **kw)(
        timestep_embedding(frames, c).astype(self.dtype))              # [F, C]
    position = jnp.tile(position, (bf // num_frames, 1))[:, None, :]   # [BF, 1, C]

    mixer = AlphaBlender(param_dtype=self.param_dtype, name='time_mixer')
    for i in range(self.depth):
      spatial = SpatialBlock(self.heads, head_dim, self.num_face_tokens, self.query_chunk_size,
                             name=f'transformer_blocks_{i}', **kw)
      x = remat_call(spatial, x, frame_context, enabled=self.remat)
      temporal = TemporalBlock(self.heads, head_dim, name=f'temporal_transformer_blocks_{i}', **kw)
      mixed = remat_call(temporal, x + position, time_context, static=(num_frames,), enabled=self.remat)
      x = mixer(x, mixed)
    x = linear.dense(c, name='proj_out', **kw)(x)
    return x.reshape(bf, h, w, c) + residual
