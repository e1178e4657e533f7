"""The one attention implementation of sa-jax.

`dot_product_attention` is the core (softmax in float32, `jax.nn.dot_product_attention`, which
picks cuDNN flash attention on GPUs where it can). `Attention` adds the q/k/v/out projections
used by the UNet, VAE and CLIP; modules whose projections differ (the ID adapter, the face
perceiver) call the core directly.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sa_jax import sharding
from sa_jax.nn import linear

Dtype = Any


def split_heads(x: jax.Array, heads: int) -> jax.Array:
  """`[B, L, N*D] -> [B, L, N, D]` (head-major split of the channel axis)."""
  return x.reshape(x.shape[:-1] + (heads, x.shape[-1] // heads))


def merge_heads(x: jax.Array) -> jax.Array:
  """`[B, L, N, D] -> [B, L, N*D]`."""
  return x.reshape(x.shape[:-2] + (x.shape[-2] * x.shape[-1],))


def query_chunk(length: int, limit: int) -> int:
  """The largest divisor of `length` not above `limit`: the query chunk `dot_product_attention` uses."""
  return next(c for c in range(min(limit, length), 0, -1) if length % c == 0)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float | None = None,
                          query_chunk_size: int | None = None) -> jax.Array:
  """Multi-head attention `softmax(q k^T * scale) v` with float32 logits and softmax.

  Args:
    q: `[B, L, N, D]` queries.
    k: `[B, S, N, D]` keys.
    v: `[B, S, N, D]` values.
    scale: logit scale, default `D ** -0.5`.
    query_chunk_size: if set and smaller than L, queries are processed in chunks of the largest
      divisor of L not above it (sequentially, `lax.map`), bounding the `[B, N, L, S]` logits to
      `[B, N, chunk, S]` (one size serves every level and training size: 1024 chunks 72 x 128
      latents by 1024 and 36 x 64 by 768);
      under differentiation each chunk is recomputed in the backward pass (`jax.checkpoint`), so
      the gradient too holds one chunk's logits at a time.
  Returns:
    `[B, L, N, D]` in the dtype of `v`.
  """
  if scale is None:
    scale = q.shape[-1] ** -0.5
  length = q.shape[1]
  if query_chunk_size is None or query_chunk_size >= length:
    return jax.nn.dot_product_attention(q, k, v, scale=scale)
  chunk = query_chunk(length, query_chunk_size)
  chunks = q.reshape(q.shape[0], length // chunk, chunk, *q.shape[2:])
  attend = jax.checkpoint(lambda qc, k, v: jax.nn.dot_product_attention(qc, k, v, scale=scale))
  out = jax.lax.map(lambda qc: attend(qc, k, v), jnp.moveaxis(chunks, 1, 0))   # [L/c, B, c, N, D]
  return jnp.moveaxis(out, 0, 1).reshape(q.shape[:-1] + (v.shape[-1],))


class Attention(nn.Module):
  """Multi-head attention with `to_q`, `to_k`, `to_v`, `to_out` projections.

  Attributes:
    heads: number of heads N.
    head_dim: D; inner width is N * D.
    out_features: width of `to_out` (default: the query width).
    qkv_bias: whether q/k/v projections have biases (VAE, CLIP: yes; UNet: no).
    query_chunk_size: see `dot_product_attention`.
  """
  heads: int
  head_dim: int
  out_features: int | None = None
  qkv_bias: bool = False
  query_chunk_size: int | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
    """Args: x `[B, L, C]`; context `[B, S, Ckv]` (self-attention when None). Returns `[B, L, C']`."""
    context = x if context is None else context
    inner = self.heads * self.head_dim
    proj = lambda name: linear.dense(inner, use_bias=self.qkv_bias, kernel_axes=sharding.IN_PROJ,
                                     dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    q = split_heads(proj('to_q')(x), self.heads)
    k = split_heads(proj('to_k')(context), self.heads)
    v = split_heads(proj('to_v')(context), self.heads)
    out = merge_heads(dot_product_attention(q, k, v, query_chunk_size=self.query_chunk_size))
    return linear.dense(self.out_features or x.shape[-1], dtype=self.dtype,
                        param_dtype=self.param_dtype, name='to_out')(out)
