"""SVD's VAE: 2-D encoder, temporal decoder (diffusers `AutoencoderKLTemporalDecoder`, SPEC §3.4, §4.4).

Channels-last throughout: images `[N, H, W, 3]` in [-1, 1], latents `[N, h, w, 4]` with
`H = h * 2 ** (len(block_out_channels) - 1)` (8 for SVD). Parameters are one tree
`{encoder, quant_conv, decoder}` named as the diffusers state dict (`convert/vae.py`).

Pure functions for use inside `jit`/`grad`/`scan`:
  * `encode(params, config, images) -> DiagonalGaussian` (posterior: mean, logvar, std; `mode()`,
    `sample(key)`). The reference latents of the pipeline are `mode()`, *unscaled* (SPEC §4.1).
  * `decode_frames(params, config, z, num_frames)`: one decoder call on *unscaled* latents
    (diffusers `vae.decode(z, num_frames)`).
  * `decode(params, config, latents, decode_chunk_size)`: the pipeline's `decode_latents` on
    *scaled* latents: `z = 1 / scaling_factor * latents`, then consecutive chunks of
    `decode_chunk_size` frames, each decoded with `num_frames` = its length (the last may be
    shorter). Differentiable end to end (the HJB face correction, SPEC §4.5).

The modules: `VAE` (methods `encode`, `decode`), `Encoder` (`vae_encoder.py`) and
`TemporalDecoder` (`vae_decoder.py`).
"""

import dataclasses
import numbers
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from sa_jax import sharding
from sa_jax.models.vae_decoder import TemporalDecoder
from sa_jax.models.vae_encoder import Encoder
from sa_jax.nn import linear, norms

Dtype = Any

DOWN_BLOCK_TYPES = ('DownEncoderBlock2D',)
LOGVAR_RANGE = (-30.0, 20.0)


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """Architecture and latent scaling; keys as in diffusers `vae/config.json` (SPEC §3.4).

  Attributes:
    in_channels: image channels seen by the encoder.
    out_channels: image channels produced by the decoder.
    block_out_channels: encoder block widths (decoder: reversed); multiples of `norm_num_groups`.
    layers_per_block: resnets per encoder block (decoder blocks have one more).
    latent_channels: latent width.
    scaling_factor: diffusion latents are `scaling_factor * z`.
    force_upcast: the release encodes (and may decode) in float32 even for half-precision runs;
      informational here, the caller picks the compute dtype.
    down_block_types: only `DownEncoderBlock2D` (the only type `AutoencoderKLTemporalDecoder` uses).
    norm_num_groups: GroupNorm groups of every norm. `AutoencoderKLTemporalDecoder` fixes 32 (the
      release: 4 to 16 channels per group); a narrow model keeps channels per group with fewer
      groups (diffusers' `AutoencoderKL` key). A 32-channel block with 32 groups normalises every
      channel of every frame on its own, which erases each frame's colour from flat regions.
  """
  in_channels: int = 3
  out_channels: int = 3
  block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
  layers_per_block: int = 2
  latent_channels: int = 4
  scaling_factor: float = 0.18215
  force_upcast: bool = True
  down_block_types: tuple[str, ...] = DOWN_BLOCK_TYPES * 4
  norm_num_groups: int = norms.NUM_GROUPS

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'VAEConfig':
    """Builds from a diffusers config; unknown keys (`sample_size`, `_class_name`, ...) are ignored."""
    channels = tuple(int(c) for c in d.get('block_out_channels', cls.block_out_channels))
    config = cls(
        in_channels=int(d.get('in_channels', cls.in_channels)),
        out_channels=int(d.get('out_channels', cls.out_channels)),
        block_out_channels=channels,
        layers_per_block=int(d.get('layers_per_block', cls.layers_per_block)),
        latent_channels=int(d.get('latent_channels', cls.latent_channels)),
        scaling_factor=float(d.get('scaling_factor', cls.scaling_factor)),
        force_upcast=bool(d.get('force_upcast', cls.force_upcast)),
        down_block_types=tuple(d.get('down_block_types', DOWN_BLOCK_TYPES * len(channels))),
        norm_num_groups=int(d.get('norm_num_groups', cls.norm_num_groups)))
    config.validate()
    return config

  def validate(self) -> None:
    if not self.block_out_channels:
      raise ValueError('VAE config: block_out_channels is empty')
    bad = [c for c in self.block_out_channels if self.norm_num_groups < 1 or c % self.norm_num_groups]
    if bad:
      raise ValueError(f'VAE config: block_out_channels {self.block_out_channels} must be multiples '
                       f'of norm_num_groups {self.norm_num_groups} (GroupNorm groups); {bad} are not')
    if len(self.down_block_types) != len(self.block_out_channels):
      raise ValueError(f'VAE config: down_block_types has {len(self.down_block_types)} entries, '
                       f'block_out_channels has {len(self.block_out_channels)}')
    unsupported = sorted(set(self.down_block_types) - set(DOWN_BLOCK_TYPES))
    if unsupported:
      raise ValueError(f'VAE config: unsupported down blocks {unsupported}; expected {DOWN_BLOCK_TYPES}')
    if self.layers_per_block < 1:
      raise ValueError(f'VAE config: layers_per_block {self.layers_per_block}, expected >= 1')
    if self.scaling_factor <= 0:
      raise ValueError(f'VAE config: scaling_factor {self.scaling_factor}, expected > 0')

  @property
  def spatial_factor(self) -> int:
    """Image pixels per latent pixel along each axis (8 for SVD)."""
    return 2 ** (len(self.block_out_channels) - 1)


class DiagonalGaussian(NamedTuple):
  """The encoder posterior (diffusers `DiagonalGaussianDistribution`); a pytree.

  Attributes:
    mean: `[N, h, w, latent]`.
    logvar: `[N, h, w, latent]`, clamped to [-30, 20].
    std: `exp(logvar / 2)`.
  """
  mean: jax.Array
  logvar: jax.Array
  std: jax.Array

  @classmethod
  def from_moments(cls, moments: jax.Array) -> 'DiagonalGaussian':
    """`[..., 2L]` = mean | logvar along the channels (torch `chunk(2, dim=1)`)."""
    mean, logvar = jnp.split(moments, 2, axis=-1)
    logvar = jnp.clip(logvar, *LOGVAR_RANGE)
    return cls(mean, logvar, jnp.exp(0.5 * logvar))

  def mode(self) -> jax.Array:
    return self.mean

  def sample(self, key: jax.Array) -> jax.Array:
    """`mean + std * eps`, eps ~ N(0, 1) drawn from `key`."""
    return self.mean + self.std * jax.random.normal(key, self.mean.shape, self.mean.dtype)


class VAE(nn.Module):
  """`AutoencoderKLTemporalDecoder`: `encoder`, `quant_conv` (1x1), `decoder`.

  Attributes:
    config: architecture.
    remat: recompute the decoder's resnets, attention and upsamplers in the backward pass, one at
      a time (`TemporalDecoder`).
  """
  config: VAEConfig
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.encoder = Encoder(cfg.block_out_channels, cfg.layers_per_block, cfg.latent_channels,
                           cfg.norm_num_groups, **kw)
    self.quant_conv = linear.conv1x1(2 * cfg.latent_channels, **kw)
    self.decoder = TemporalDecoder(cfg.block_out_channels, cfg.layers_per_block, cfg.out_channels,
                                   remat=self.remat, num_groups=cfg.norm_num_groups, **kw)

  def encode(self, images: jax.Array) -> DiagonalGaussian:
    """Args: images `[N, H, W, in_channels]` in [-1, 1]. Returns the posterior over `[N, h, w, latent]`."""
    cfg = self.config
    if images.ndim != 4 or images.shape[-1] != cfg.in_channels:
      raise ValueError(f'images must be [N, H, W, {cfg.in_channels}], got shape {images.shape}')
    images = sharding.constrain(images.astype(self.dtype), (sharding.ROWS, None, None, None))   # independent rows
    moments = self.quant_conv(self.encoder(images))
    return DiagonalGaussian.from_moments(moments)

  def decode(self, z: jax.Array, num_frames: int) -> jax.Array:
    """Args:
      z: `[BF, h, w, latent]` unscaled latents, frames of a batch element consecutive.
      num_frames: F frames per batch element (the temporal layers' window).
    Returns:
      `[BF, H, W, out_channels]`, about [-1, 1].
    """
    cfg = self.config
    if z.ndim != 4 or z.shape[-1] != cfg.latent_channels:
      raise ValueError(f'latents must be [N, h, w, {cfg.latent_channels}], got shape {z.shape}')
    if num_frames < 1 or z.shape[0] % num_frames:
      raise ValueError(f'num_frames {num_frames} does not divide the {z.shape[0]} latent frames')
    return self.decoder(z, num_frames)

  def __call__(self, images: jax.Array, num_frames: int = 1) -> jax.Array:
    """Reconstruction through the posterior mode (diffusers `forward` with `sample_posterior=False`)."""
    return self.decode(self.encode(images).mode(), num_frames)


def encode(params: Any, config: VAEConfig, images: jax.Array, *,
           dtype: Dtype = jnp.float32) -> DiagonalGaussian:
  """Posterior of `[N, H, W, in_channels]` images in [-1, 1] (SPEC §4.1: the release encodes in float32)."""
  return VAE(config, dtype=dtype).apply({'params': params}, images, method=VAE.encode)


def decode_frames(params: Any, config: VAEConfig, z: jax.Array, num_frames: int | None = None, *,
                  remat: bool = False, dtype: Dtype = jnp.float32) -> jax.Array:
  """One decoder call on unscaled latents `[BF, h, w, latent]` (default F = all frames).

  Returns `[BF, H, W, out_channels]`.
  """
  num_frames = z.shape[0] if num_frames is None else num_frames
  return VAE(config, remat=remat, dtype=dtype).apply({'params': params}, z, num_frames,
                                                     method=VAE.decode)


def decode(params: Any, config: VAEConfig, latents: jax.Array, decode_chunk_size: int, *,
           remat: bool = False, checkpoint_chunks: bool = False,
           dtype: Dtype = jnp.float32) -> jax.Array:
  """The pipeline's chunked decode of one video's scaled latents (SPEC §4.4).

  `z = (1 / scaling_factor) * latents` (the reference multiplies by the reciprocal); frames
  `[k c, (k + 1) c)` are decoded together with `num_frames = c`, the last chunk with the rest.

  Memory: the `K = N // c` equal chunks run one after another in a `lax.map` (one compiled decoder
  call, one chunk's activations alive at a time in the forward pass), then the shorter tail chunk,
  if any, as a second call. Under `grad` the backward pass needs each chunk's residuals: all of
  them by default; with `remat` only the inputs of the decoder's resnets, attention and
  upsamplers (each recomputed when the backward pass reaches it, like the reference's gradient
  checkpointing); with `checkpoint_chunks` only each chunk's latents are kept and the chunk is
  recomputed during its own backward step, so the activations of one chunk at a time are alive
  (costs one more forward pass of the decoder). The HJB correction differentiates one chunk at a
  time itself (`sa_jax.sampling.hjb.face_loss_grad`) and needs only `remat`.

  Args:
    params: the VAE parameter tree.
    config: the VAE config (its `scaling_factor`).
    latents: `[N, h, w, latent]` scaled latents of one video.
    decode_chunk_size: frames per decoder call c (a static int >= 1).
    remat: recompute the decoder blocks in the backward pass.
    checkpoint_chunks: keep only the chunk inputs for the backward pass.
    dtype: compute dtype.
  Returns:
    `[N, H, W, out_channels]`, about [-1, 1].
  """
  if not isinstance(decode_chunk_size, numbers.Integral) or decode_chunk_size < 1:
    raise ValueError(f'decode_chunk_size must be a positive int, got {decode_chunk_size!r}')
  if latents.ndim != 4:
    raise ValueError(f'latents must be [N, h, w, {config.latent_channels}], got shape {latents.shape}')
  n, h, w, c = latents.shape
  z = (1.0 / config.scaling_factor) * latents

  def run(chunk: jax.Array) -> jax.Array:
    return decode_frames(params, config, chunk, chunk.shape[0], remat=remat, dtype=dtype)

  if checkpoint_chunks:
    run = jax.checkpoint(run)
  size = min(int(decode_chunk_size), n)
  full = n // size
  if full == 1:
    head = run(z[:size])
  else:
    chunks = z[:full * size].reshape(full, size, h, w, c)     # [N', h, w, C] -> [K, c, h, w, C]
    head = jax.lax.map(run, chunks)                            # [K, c, H, W, C']
    head = head.reshape((full * size,) + head.shape[2:])       # [K, c, H, W, C'] -> [N', H, W, C']
  if full * size == n:
    return head
  return jnp.concatenate([head, run(z[full * size:])], axis=0)


def abstract_params(config: VAEConfig, dtype: Dtype = jnp.float32) -> Any:
  """Boxed (logically partitioned) parameter shapes, without allocating memory."""
  model = VAE(config, param_dtype=dtype)
  size = config.spatial_factor                                   # one image of one latent pixel
  images = jax.ShapeDtypeStruct((1, size, size, config.in_channels), jnp.float32)
  init = lambda key, x: model.init(key, x, 1)                    # num_frames must stay static
  return jax.eval_shape(init, jax.random.key(0), images)['params']
