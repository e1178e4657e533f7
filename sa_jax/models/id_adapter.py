"""The distribution-aware ID adapter: StableAnimator's face-token cross-attention (SPEC §2.9).

Mirrors `AnimationIDAttnNormalizedProcessor`, which replaces every spatial cross-attention of the
UNet. The context holds the CLIP token(s) followed by `num_face_tokens` face tokens. Queries attend
to the CLIP token(s) with the usual projections (`to_k`, `to_v`) and, separately, to the face tokens
with their own projections (`id_to_k`, `id_to_v`). The face result is re-normalised to the mean and
unbiased standard deviation of the main result, per sample over all tokens and channels jointly,
and added before the output projection:

  I' = (I - mean(I)) * (std(O) / (std(I) + 1e-5)) + mean(O);   y = to_out(O + scale * I')

With a zero CLIP token (the unconditional branch, or CLIP dropout in training) `O` is 0, so `I'` is
0 too and the face tokens have no effect (SPEC §8).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sa_jax import sharding
from sa_jax.nn import attention, linear

Dtype = Any


def _mean_std(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean and unbiased std over all but the first axis, float32, `[N, ...] -> [N, 1, ...]`.

  The std has a zero gradient where the variance is zero (torch's behaviour; a plain sqrt would
  give NaN gradients for an all-zero CLIP token, SPEC §7.16).
  """
  x = x.astype(jnp.float32)
  axes = tuple(range(1, x.ndim))
  count = 1
  for a in axes:
    count *= x.shape[a]
  mean = x.mean(axes, keepdims=True)
  var = jnp.square(x - mean).sum(axes, keepdims=True) / (count - 1)
  positive = var > 0
  std = jnp.where(positive, jnp.sqrt(jnp.where(positive, var, 1.0)), 0.0)
  return mean, std


def renormalise(face: jax.Array, main: jax.Array, eps: float = 1e-5) -> jax.Array:
  """Shifts and scales `face` to the per-sample mean/std of `main` (both `[N, L, C]`), float32."""
  face_mean, face_std = _mean_std(face)
  main_mean, main_std = _mean_std(main)
  return (face.astype(jnp.float32) - face_mean) * (main_std / (face_std + eps)) + main_mean


class IDAttention(nn.Module):
  """Cross-attention to `[CLIP tokens | face tokens]` with the distribution-aware ID adapter.

  Attributes:
    heads: N.
    head_dim: D (inner width N * D equals the query width).
    num_face_tokens: how many trailing context tokens are face tokens (4 in the release).
    scale: weight of the face branch (1.0 in the release).
  """
  heads: int
  head_dim: int
  num_face_tokens: int = 4
  scale: float = 1.0
  query_chunk_size: int | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    """Args: x `[B, L, C]` queries; context `[B, S, Ckv]`, last `num_face_tokens` are face tokens.

    Returns: `[B, L, C]`.
    """
    if context.shape[1] <= self.num_face_tokens:
      raise ValueError(f'context has {context.shape[1]} tokens; needs CLIP tokens followed by '
                       f'{self.num_face_tokens} face tokens')
    inner = self.heads * self.head_dim
    proj = lambda name: linear.dense(inner, use_bias=False, kernel_axes=sharding.IN_PROJ,
                                     dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    attend = lambda q, k, v: attention.merge_heads(attention.dot_product_attention(
        q, k, v, query_chunk_size=self.query_chunk_size))
    split = lambda t: attention.split_heads(t, self.heads)

    clip_tokens = context[:, :-self.num_face_tokens]                # [B, S - T, Ckv]
    face_tokens = context[:, -self.num_face_tokens:]                # [B, T, Ckv]
    q = split(proj('to_q')(x))
    main = attend(q, split(proj('to_k')(clip_tokens)), split(proj('to_v')(clip_tokens)))
    face = attend(q, split(proj('id_to_k')(face_tokens)), split(proj('id_to_v')(face_tokens)))
    out = main.astype(jnp.float32) + self.scale * renormalise(face, main)
    return linear.dense(x.shape[-1], dtype=self.dtype, param_dtype=self.param_dtype,
                        name='to_out')(out.astype(self.dtype))
