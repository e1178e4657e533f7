"""The one attention implementation of sa-jax.

`dot_product_attention` is the core (softmax in float32): on GPUs `jax.nn.dot_product_attention`
with cuDNN's flash attention for the shapes and dtypes it takes, on TPUs splash attention (a Pallas
kernel) for long keys, XLA's attention elsewhere, in query chunks where asked; `backend` says which.
`Attention` adds the q/k/v/out projections
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


# cuDNN's fused attention (jax 0.10.2): half-precision inputs, head dimension a multiple of 8 up to 128.
CUDNN_DTYPES = ('bfloat16', 'float16')
CUDNN_MAX_HEAD_DIM = 128
# Splash attention's blocks are multiples of 128 (its lanes): sequences are padded to them, so it
# serves long keys only (spatial self-attention), not 4 face tokens or 16 frames.
SPLASH_LANES = 128
SPLASH_BLOCKS = (512, 256, 128)


def backend(platform: str, dtype: Any, head_dim: int, kv_length: int) -> str:
  """The attention implementation for `kv_length` keys in `dtype` with heads of `head_dim` on
  `platform` (`jax.default_backend()`): 'cudnn' on GPUs where cuDNN takes it, 'splash' on TPUs
  for at least `SPLASH_LANES` keys (both flash attention: the logits are never stored, so query
  chunks are not needed), else 'xla'."""
  if platform == 'gpu' and jnp.dtype(dtype).name in CUDNN_DTYPES and head_dim % 8 == 0 and (
      head_dim <= CUDNN_MAX_HEAD_DIM):
    return 'cudnn'
  if platform == 'tpu' and kv_length >= SPLASH_LANES:
    return 'splash'
  return 'xla'


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, scale: float, interpret: bool = False) -> jax.Array:
  """`[B, L, N, D]` attention by splash attention, the TPU flash-attention kernel of Pallas
  (`interpret`: run by the Pallas interpreter, on any platform).

  Queries and keys are padded to a multiple of `SPLASH_LANES`; padded keys are told apart by
  segment ids (a query attends only to keys of its own segment). In a mesh each device runs the
  kernel on its own rows and heads (`sharding.map_over_rows`): XLA cannot split a kernel call.
  """
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks
  length, keys = q.shape[1], k.shape[1]
  padded_length, padded_keys = (n + -n % SPLASH_LANES for n in (length, keys))
  block_q, block_kv = (next(b for b in SPLASH_BLOCKS if n % b == 0) for n in (padded_length, padded_keys))
  segments = splash.SegmentIds(q=jnp.zeros((padded_length,), jnp.int32),
                               kv=(jnp.arange(padded_keys) >= keys).astype(jnp.int32))

  def attend(q, k, v):                                               # a device's [B, L, N, D]
    kernel = splash.make_splash_mha(
        masks.MultiHeadMask([masks.FullMask((padded_length, padded_keys))] * q.shape[2]), head_shards=1,
        q_seq_shards=1, interpret=interpret,
        block_sizes=splash.BlockSizes(block_q=block_q, block_kv=block_kv, block_kv_compute=block_kv,
                                      block_q_dkv=block_q, block_kv_dkv=block_kv, block_kv_dkv_compute=block_kv,
                                      block_q_dq=block_q, block_kv_dq=block_kv))
    heads_first = lambda x, n: jnp.pad(jnp.moveaxis(x, 2, 1), ((0, 0), (0, 0), (0, n - x.shape[1]), (0, 0)))
    out = jax.vmap(lambda q, k, v: kernel(q, k, v, segment_ids=segments))(
        heads_first(q * jnp.asarray(scale, q.dtype), padded_length), heads_first(k, padded_keys),
        heads_first(v, padded_keys))                                 # [B, N, L', D]
    return jnp.moveaxis(out[:, :, :length], 1, 2)

  return sharding.map_over_rows(attend, (sharding.ROWS, None, sharding.MLP, None), q, k, v)


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
      the gradient too holds one chunk's logits at a time. Not used by cuDNN's flash attention.
  Returns:
    `[B, L, N, D]` in the dtype of `v`.
  """
  if scale is None:
    scale = q.shape[-1] ** -0.5
  length = q.shape[1]
  implementation = backend(jax.default_backend(), q.dtype, q.shape[-1], k.shape[1])
  if implementation == 'splash':
    return splash_attention(q, k, v, scale)
  if implementation == 'cudnn':
    try:
      return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation='cudnn')
    except (NotImplementedError, ValueError, RuntimeError):
      pass     # raised while tracing for what this cuDNN cannot take (its docs): XLA's below
  if query_chunk_size is None or query_chunk_size >= length:
    return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation='xla')
  chunk = query_chunk(length, query_chunk_size)
  chunks = q.reshape(q.shape[0], length // chunk, chunk, *q.shape[2:])
  attend = jax.checkpoint(lambda qc, k, v: jax.nn.dot_product_attention(qc, k, v, scale=scale, implementation='xla'))
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
