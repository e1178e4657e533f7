"""FusionFaceId: fuses the face-ID embedding with the CLIP image embedding into face tokens (SPEC §3.2).

Mirrors StableAnimator `animation/modules/id_encoder.py`: `FusionFaceId`, `FacePerceiver`,
`PerceiverAttention` and its `FeedForward` Sequential.

  x = norm(proj_2(gelu(proj_0(id))).reshape(B, T, D))             # T face tokens
  ctx = proj_in(clip)
  for each of `perceiver_depth` layers:
    x = PerceiverAttention(ctx, x) + x;  x = FF(LN(x)) + x
  out = norm_out(proj_out(x))                                     # optionally x0 + scale * out

PerceiverAttention queries with the (normalised) latents and attends over the concatenation
`[norm1(ctx) | norm2(latents)]`; `to_kv` splits into `[k | v]`. The reference scales q and k by
`dim_head^-1/4` each, which equals the logit scale `dim_head^-1/2` used here (SPEC §7.7). Every
LayerNorm has eps 1e-5; projections inside the perceiver layers have no bias.

Flax names follow the torch keys through the generic converter rule (`proj.0` -> `proj_0`,
`fusion_model.layers.2.0.to_q` -> `fusion_model/layers_2_0/to_q`, the feed-forward LayerNorm
`layers.2.1.0` -> `layers_2_1_0`); the feed-forward linears `layers.L.1.{1,3}` are the `proj_in`
/ `proj_out` of the shared `FeedForward` named `layers_L_1` (renamed in `convert/face_encoder.py`).
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sa_jax import sharding
from sa_jax.nn import attention, linear
from sa_jax.nn.feedforward import FeedForward, gelu
from sa_jax.nn.norms import LayerNorm

Dtype = Any

LN_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class FaceEncoderConfig:
  """FusionFaceId hyper-parameters (release values by default).

  Attributes:
    cross_attention_dim: token width D (the UNet cross-attention width).
    id_embeddings_dim: width of the face-ID embedding (insightface: 512).
    clip_embeddings_dim: width of the CLIP image embedding.
    num_tokens: face tokens T.
    perceiver_depth: perceiver layers.
    dim_head: attention head width.
    heads: attention heads (the reference uses `cross_attention_dim // 64`).
    ff_mult: feed-forward expansion.
  """
  cross_attention_dim: int = 1024
  id_embeddings_dim: int = 512
  clip_embeddings_dim: int = 1024
  num_tokens: int = 4
  perceiver_depth: int = 4
  dim_head: int = 64
  heads: int = 16
  ff_mult: int = 4

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'FaceEncoderConfig':
    """From the keys of `configs/svd_xt.py` `face_encoder` (constructor names).

    A missing `heads` follows the reference: `cross_attention_dim // dim_head`. Unknown keys are a
    ValueError.
    """
    allowed = sorted(f.name for f in dataclasses.fields(cls))
    unknown = sorted(set(d) - set(allowed))
    if unknown:
      raise ValueError(f'{cls.__name__}: unknown keys {unknown}; allowed keys are {allowed}')
    kw = {f.name: int(d[f.name]) for f in dataclasses.fields(cls) if f.name in d}
    if 'heads' not in kw:
      kw['heads'] = (kw.get('cross_attention_dim', cls.cross_attention_dim)
                     // kw.get('dim_head', cls.dim_head))
    return cls(**kw)


class PerceiverAttention(nn.Module):
  """Latents attend over `[context | latents]` (torch `PerceiverAttention`).

  Attributes:
    heads: N.
    dim_head: D.
  """
  heads: int
  dim_head: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, context: jax.Array, latents: jax.Array) -> jax.Array:
    """Args: context `[B, S, C]`; latents `[B, L, C]`. Returns `[B, L, C]` (no residual)."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    inner = self.heads * self.dim_head
    context = LayerNorm(LN_EPS, name='norm1', **kw)(context)
    latents = LayerNorm(LN_EPS, name='norm2', **kw)(latents)
    q = linear.dense(inner, use_bias=False, kernel_axes=sharding.IN_PROJ, name='to_q', **kw)(latents)
    kv_input = jnp.concatenate([context, latents], axis=1)          # [B, S + L, C]
    kv = linear.dense(2 * inner, use_bias=False, kernel_axes=sharding.IN_PROJ, name='to_kv', **kw)(kv_input)
    k, v = jnp.split(kv, 2, axis=-1)                                # [B, S + L, 2ND] -> 2 x [B, S + L, ND]
    q = attention.split_heads(q, self.heads)                        # [B, L, N*D] -> [B, L, N, D]
    k = attention.split_heads(k, self.heads)
    v = attention.split_heads(v, self.heads)
    out = attention.dot_product_attention(q, k, v, scale=self.dim_head ** -0.5)
    out = attention.merge_heads(out)                                # [B, L, N, D] -> [B, L, N*D]
    return linear.dense(latents.shape[-1], use_bias=False, name='to_out', **kw)(out)


class FacePerceiver(nn.Module):
  """`proj_in` on the context, `depth` x (attention + feed-forward, residual), `proj_out`, `norm_out`.

  Attributes:
    config: `FaceEncoderConfig`.
  """
  config: FaceEncoderConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, latents: jax.Array, context: jax.Array) -> jax.Array:
    """Args: latents `[B, T, D]`; context `[B, S, Cclip]`. Returns `[B, T, D]`."""
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    dim = cfg.cross_attention_dim
    context = linear.dense(dim, name='proj_in', **kw)(context)      # [B, S, Cclip] -> [B, S, D]
    for layer in range(cfg.perceiver_depth):
      latents = latents + PerceiverAttention(cfg.heads, cfg.dim_head, name=f'layers_{layer}_0',
                                             **kw)(context, latents)
      h = LayerNorm(LN_EPS, name=f'layers_{layer}_1_0', **kw)(latents)
      latents = latents + FeedForward(dim * cfg.ff_mult, use_bias=False, name=f'layers_{layer}_1',
                                      **kw)(h)
    latents = linear.dense(dim, name='proj_out', **kw)(latents)
    return LayerNorm(LN_EPS, name='norm_out', **kw)(latents)


class FusionFaceId(nn.Module):
  """Face-ID + CLIP embedding -> face tokens for the UNet's ID adapter.

  Attributes:
    config: `FaceEncoderConfig`.
  """
  config: FaceEncoderConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, id_embeds: jax.Array, clip_embeds: jax.Array, shortcut: bool = False,
               scale: float = 1.0) -> jax.Array:
    """Args:
      id_embeds: `[B, id_embeddings_dim]` face-ID embeddings.
      clip_embeds: `[B, S, clip_embeddings_dim]` CLIP image embeddings (S = 1 in the pipeline).
      shortcut: return `x0 + scale * perceiver(x0, clip)` where x0 are the projected ID tokens
        (reference `forward(shortcut=True)`; the pipeline uses False).
      scale: weight of the perceiver output when `shortcut`.
    Returns:
      `[B, T, D]` face tokens.
    """
    cfg = self.config
    if id_embeds.ndim != 2 or id_embeds.shape[-1] != cfg.id_embeddings_dim:
      raise ValueError(f'id_embeds must be [B, {cfg.id_embeddings_dim}], got shape {id_embeds.shape}')
    if (clip_embeds.ndim != 3 or clip_embeds.shape[0] != id_embeds.shape[0]
        or clip_embeds.shape[-1] != cfg.clip_embeddings_dim):
      raise ValueError(f'clip_embeds must be [{id_embeds.shape[0]}, S, {cfg.clip_embeddings_dim}], '
                       f'got shape {clip_embeds.shape}')
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b = id_embeds.shape[0]
    x = linear.dense(2 * cfg.id_embeddings_dim, kernel_axes=sharding.IN_PROJ, name='proj_0',
                     **kw)(id_embeds.astype(self.dtype))
    x = linear.dense(cfg.num_tokens * cfg.cross_attention_dim, name='proj_2', **kw)(gelu(x))
    x = x.reshape(b, cfg.num_tokens, cfg.cross_attention_dim)       # [B, T*D] -> [B, T, D]
    x = LayerNorm(LN_EPS, name='norm', **kw)(x)
    out = FacePerceiver(cfg, name='fusion_model', **kw)(x, clip_embeds.astype(self.dtype))
    if shortcut:
      out = x + scale * out
    return out


def abstract_params(config: FaceEncoderConfig, dtype: Dtype = jnp.float32) -> Any:
  """Boxed `ShapeDtypeStruct` tree of the parameters (no memory is allocated)."""
  model = FusionFaceId(config, dtype=dtype, param_dtype=dtype)
  return jax.eval_shape(model.init, jax.random.key(0),
                        jnp.zeros((1, config.id_embeddings_dim), dtype),
                        jnp.zeros((1, 1, config.clip_embeddings_dim), dtype))['params']
