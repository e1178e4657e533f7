"""CLIP vision tower with projection: the SVD image encoder (SPEC §3.3) and its preprocessing (§4.1).

Mirrors transformers `CLIPVisionModelWithProjection` (laion ViT-H/14 in SVD-xt):

  x = patch_embedding(pixels)                       # conv p x p, stride p, no bias -> [B, L-1, C]
  x = [class_embedding | x] + position_embedding    # [B, L, C]
  x = pre_layrnorm(x)
  for each layer: x += self_attn(layer_norm1(x));  x += mlp(layer_norm2(x))
  image_embeds = visual_projection(post_layernorm(x[:, 0]))   # no bias -> [B, projection_dim]

Attention has q/k/v/out biases and scale `head_dim^-0.5`; the MLP is `fc2(act(fc1(x)))` with the
config's activation (exact `gelu` for SVD, `quick_gelu` for OpenAI CLIP).

Flax names follow the torch keys (`vision_model/encoder/layers_3/layer_norm1`, ...) except the shared
blocks' projections: `self_attn/{to_q,to_k,to_v,to_out}` (torch `{q,k,v,out}_proj`), `mlp/{proj_in,
proj_out}` (torch `fc1/fc2`) and the position table `embeddings/position_embedding` (torch
`position_embedding.weight`, an `nn.Embedding`: not transposed); `convert/clip.py` lists them.

`preprocess` is SVD `_encode_image`'s image path: `[0, 1] -> [-1, 1] -> clip_resize -> [0, 1] ->
(x - mean) / std`, with no centre crop and no further rescale.
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sa_jax import sharding
from sa_jax.nn import linear
from sa_jax.nn.attention import Attention
from sa_jax.nn.feedforward import FeedForward, gelu, quick_gelu
from sa_jax.nn.norms import LayerNorm
from sa_jax.nn.resize import clip_resize

Dtype = Any

# OpenAI CLIP normalisation (SVD `feature_extractor/preprocessor_config.json`).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

ACTIVATIONS: Mapping[str, Callable[[jax.Array], jax.Array]] = {'gelu': gelu, 'quick_gelu': quick_gelu}


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
  """CLIP vision hyper-parameters (transformers `CLIPVisionConfig` names).

  The defaults are transformers' own (ViT-B/32), because a transformers `config.json` leaves out
  values equal to them; the SVD-xt encoder (ViT-H/14) is `configs/svd_xt.py` `image_encoder`.

  Attributes:
    hidden_size: token width C.
    intermediate_size: MLP width.
    num_hidden_layers: encoder layers.
    num_attention_heads: heads N (head dim C / N).
    patch_size: patch side p (the patch conv's kernel and stride).
    image_size: input side S (S / p patches per side; the position table has (S/p)^2 + 1 rows).
    num_channels: input channels.
    projection_dim: width of `image_embeds`.
    layer_norm_eps: eps of every LayerNorm.
    hidden_act: MLP activation, a key of `ACTIVATIONS` ('gelu' is exact).
  """
  hidden_size: int = 768
  intermediate_size: int = 3072
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  patch_size: int = 32
  image_size: int = 224
  num_channels: int = 3
  projection_dim: int = 512
  layer_norm_eps: float = 1e-5
  hidden_act: str = 'quick_gelu'

  def __post_init__(self):
    if self.hidden_act not in ACTIVATIONS:
      raise ValueError(f'hidden_act {self.hidden_act!r} is not supported; expected one of '
                       f'{sorted(ACTIVATIONS)}')
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f'hidden_size {self.hidden_size} does not split into '
                       f'{self.num_attention_heads} attention heads')
    if self.image_size % self.patch_size:
      raise ValueError(f'image_size {self.image_size} is not a multiple of patch_size {self.patch_size}')

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'CLIPVisionConfig':
    """From a transformers `config.json` (or `configs/svd_xt.py` `image_encoder`); unknown keys ignored."""
    kw = {}
    for f in dataclasses.fields(cls):
      if f.name in d:
        kw[f.name] = f.type(d[f.name]) if f.type in (int, float, str) else d[f.name]
    return cls(**kw)

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @property
  def num_positions(self) -> int:
    """Tokens L: patches plus the class token."""
    return (self.image_size // self.patch_size) ** 2 + 1


class Embeddings(nn.Module):
  """Patch embedding, class token and learned positions (transformers `CLIPVisionEmbeddings`).

  Attributes:
    config: `CLIPVisionConfig`.
  """
  config: CLIPVisionConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pixels: jax.Array) -> jax.Array:
    """Args: pixels `[B, S, S, Cin]`. Returns `[B, L, C]` tokens, the class token first."""
    cfg = self.config
    p, c = cfg.patch_size, cfg.hidden_size
    x = linear.conv(c, (p, p), strides=(p, p), padding=((0, 0), (0, 0)), use_bias=False,
                    dtype=self.dtype, param_dtype=self.param_dtype, name='patch_embedding')(pixels)
    b, gh, gw, _ = x.shape
    x = x.reshape(b, gh * gw, c)              # [B, S/p, S/p, C] -> [B, L-1, C] (row-major, torch order)
    cls = self.param('class_embedding', nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (sharding.EMBED,)), (c,), self.param_dtype)
    pos = self.param('position_embedding', nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (sharding.LENGTH, sharding.EMBED)),
        (cfg.num_positions, c), self.param_dtype)
    cls = jnp.broadcast_to(cls.astype(self.dtype), (b, 1, c))
    x = jnp.concatenate([cls, x], axis=1)                                # [B, L, C]
    return x + pos.astype(self.dtype)[None]


class EncoderLayer(nn.Module):
  """Pre-norm transformer layer (transformers `CLIPEncoderLayer`).

  Attributes:
    config: `CLIPVisionConfig`.
  """
  config: CLIPVisionConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Args: x `[B, L, C]`. Returns `[B, L, C]`."""
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = LayerNorm(cfg.layer_norm_eps, name='layer_norm1', **kw)(x)
    x = x + Attention(cfg.num_attention_heads, cfg.head_dim, qkv_bias=True, name='self_attn', **kw)(h)
    h = LayerNorm(cfg.layer_norm_eps, name='layer_norm2', **kw)(x)
    return x + FeedForward(cfg.intermediate_size, activation=ACTIVATIONS[cfg.hidden_act], name='mlp',
                           **kw)(h)


class Encoder(nn.Module):
  """`num_hidden_layers` x `EncoderLayer` (transformers `CLIPEncoder`), params `layers_i`.

  Attributes:
    config: `CLIPVisionConfig`.
  """
  config: CLIPVisionConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Args: x `[B, L, C]`. Returns `[B, L, C]`."""
    for i in range(self.config.num_hidden_layers):
      x = EncoderLayer(self.config, dtype=self.dtype, param_dtype=self.param_dtype,
                       name=f'layers_{i}')(x)
    return x


class VisionTransformer(nn.Module):
  """Embeddings, pre-norm, encoder, post-norm of the class token (transformers `CLIPVisionTransformer`).

  Attributes:
    config: `CLIPVisionConfig`.
  """
  config: CLIPVisionConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pixels: jax.Array) -> jax.Array:
    """Args: pixels `[B, S, S, Cin]`. Returns the pooled output `[B, C]`."""
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = Embeddings(cfg, name='embeddings', **kw)(pixels)
    x = LayerNorm(cfg.layer_norm_eps, name='pre_layrnorm', **kw)(x)
    x = Encoder(cfg, name='encoder', **kw)(x)
    return LayerNorm(cfg.layer_norm_eps, name='post_layernorm', **kw)(x[:, 0])   # [B, L, C] -> [B, C]


class CLIPVisionModelWithProjection(nn.Module):
  """CLIP image encoder with projection (SPEC §3.3).

  Attributes:
    config: `CLIPVisionConfig`.
  """
  config: CLIPVisionConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pixel_values: jax.Array) -> jax.Array:
    """Args:
      pixel_values: `[B, S, S, Cin]` normalised images (`preprocess`), S = `image_size`.
    Returns:
      `[B, projection_dim]` image embeddings (SVD uses them as one token `[B, 1, projection_dim]`).
    """
    cfg = self.config
    want = (cfg.image_size, cfg.image_size, cfg.num_channels)
    if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != want:
      raise ValueError(f'pixel_values must be [B, {want[0]}, {want[1]}, {want[2]}], got shape '
                       f'{pixel_values.shape}')
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    pooled = VisionTransformer(cfg, name='vision_model', **kw)(pixel_values.astype(self.dtype))
    return linear.dense(cfg.projection_dim, use_bias=False, name='visual_projection', **kw)(pooled)


def preprocess(images: jax.Array, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
               image_size: int = 224) -> jax.Array:
  """SVD `_encode_image` preprocessing of RGB images of any size (SPEC §4.1).

  `x/255` (uint8) -> `2x - 1` -> `clip_resize` to `image_size`^2 -> `(x + 1)/2` -> `(x - mean)/std`,
  all in float32.

  Args:
    images: `[N, H0, W0, 3]` (or `[H0, W0, 3]`) RGB, uint8 in 0..255 or floating in [0, 1].
    mean, std: per-channel normalisation (`feature_extractor/preprocessor_config.json`
      `image_mean`/`image_std`; OpenAI CLIP values by default).
    image_size: output side S.
  Returns:
    `[N, S, S, 3]` float32 pixel values.
  """
  if images.ndim == 3:
    images = images[None]                                                # [H0, W0, 3] -> [1, H0, W0, 3]
  if images.ndim != 4 or images.shape[-1] != len(mean) or len(mean) != len(std):
    raise ValueError(f'images must be [N, H, W, {len(mean)}] with {len(mean)} means and stds, got '
                     f'shape {images.shape}, {len(mean)} means, {len(std)} stds')
  if jnp.issubdtype(images.dtype, jnp.integer):
    x = images.astype(jnp.float32) / jnp.float32(255.0)
  elif jnp.issubdtype(images.dtype, jnp.floating):
    x = images.astype(jnp.float32)
  else:
    raise ValueError(f'images must be uint8 or floating, got dtype {images.dtype}')
  x = clip_resize(x * 2.0 - 1.0, (image_size, image_size))
  x = (x + 1.0) / 2.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def encode_image(params: Any, config: CLIPVisionConfig, images: jax.Array,
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                 dtype: Dtype = jnp.float32) -> jax.Array:
  """`CLIP(preprocess(images))`: RGB images of any size -> `[N, projection_dim]` embeddings.

  Pure; jit it at the call site with `config` (hashable), `mean`, `std`, `dtype` static.
  """
  pixels = preprocess(images, mean, std, config.image_size).astype(dtype)
  model = CLIPVisionModelWithProjection(config, dtype=dtype, param_dtype=dtype)
  return model.apply({'params': params}, pixels)


def abstract_params(config: CLIPVisionConfig, dtype: Dtype = jnp.float32) -> Any:
  """Boxed `ShapeDtypeStruct` tree of the parameters (no memory is allocated)."""
  model = CLIPVisionModelWithProjection(config, dtype=dtype, param_dtype=dtype)
  s = config.image_size
  return jax.eval_shape(model.init, jax.random.key(0),
                        jnp.zeros((1, s, s, config.num_channels), dtype))['params']
