"""The StableAnimator training loss (SPEC §5, `train.py`): EDM v-prediction with face-mask weighting.

A step is split where the reference splits it between frozen and trained networks:

  `encode`  frozen VAE and CLIP, outside the gradient (SPEC §5 steps 1-3): target latents
            `z = posterior.sample() * scaling_factor`, the CLIP token `e0`, and the unscaled
            latents of the noise-augmented reference `z_ref`.
  `draw`    the step's randomness (step 4 and 6): sigmas by the interpolated-cosine law, the noise,
            the conditioning-dropout uniforms.
  `loss`    the trained networks (steps 5-8): PoseNet, the face encoder (from the undropped `e0`)
            and the UNet on `[x_sigma / sqrt(sigma^2 + 1) | z_ref]`, then
            `mean_b mean_{f,c,h,w} w(sigma) (x0 - z)^2 (1 + mask)` in float32.

Every draw takes an explicit key, so a step is a pure function of (params, batch, key).
Shapes: `B` videos, `F` frames, `H x W` pixels, `h x w` latents, `D` cross-attention width.
"""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from sa_jax import diffusion, sharding
from sa_jax.models import vae
from sa_jax.models.stable_animator import ModelConfigs, added_time_ids, clip_embedding, face_tokens, \
  pose_features, reference_posterior
from sa_jax.nn.resize import nearest_legacy

Dtype = Any


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """The conditioning of training (SPEC §5; `train.py` arguments).

  Attributes:
    fps: conditioning fps (the UNet sees fps - 1 = 6, as the training script).
    motion_bucket_id: SVD motion conditioning.
    noise_aug_strength: reference noise augmentation (and the third added time id).
    conditioning_dropout_prob: q; the CLIP token is dropped for p < 2q, the reference latents for
      q <= p < 3q (p ~ U[0, 1) per video).
    noise_d_low, noise_d_high: the noise resolutions of the sigma law (`diffusion.training_sigmas`;
      the original's 32 and 64); smaller draws more noise.
  """
  fps: int
  motion_bucket_id: float
  noise_aug_strength: float
  conditioning_dropout_prob: float
  noise_d_low: float
  noise_d_high: float

  @classmethod
  def from_config(cls, config: Any) -> 'LossConfig':
    """From the `loss` section of a training config."""
    return cls(fps=int(config.fps), motion_bucket_id=float(config.motion_bucket_id),
               noise_aug_strength=float(config.noise_aug_strength),
               conditioning_dropout_prob=float(config.conditioning_dropout_prob),
               noise_d_low=float(config.noise_d_low), noise_d_high=float(config.noise_d_high))


class Batch(NamedTuple):
  """A batch as the data pipeline delivers it (uint8 images at the training size).

  frames: `[B, F, H, W, 3]` uint8 target frames.
  poses: `[B, F, H, W, 3]` uint8 pose images.
  face_masks: `[B, F, H, W, 1]` uint8 face masks (0..255).
  reference: `[B, H, W, 3]` uint8 reference frame.
  face_embedding: `[B, E]` float32 raw face embedding of the reference.
  valid: `[B]` bool; False for a clip the pipeline could not read (excluded from the loss).
  """
  frames: jax.Array
  poses: jax.Array
  face_masks: jax.Array
  reference: jax.Array
  face_embedding: jax.Array
  valid: jax.Array


class Encoded(NamedTuple):
  """The loss's inputs after the frozen encoders (SPEC §5 steps 1-3).

  latents: `[B, F, h, w, 4]` target latents, scaled by the VAE scaling factor.
  reference_latents: `[B, h, w, 4]` unscaled latents of the noise-augmented reference.
  clip_tokens: `[B, 1, D]` CLIP embedding of the reference (undropped).
  face_embedding: `[B, E]` raw face embedding.
  poses: `[B, F, H, W, 3]` pose images in [-1, 1].
  face_masks: `[B, F, H, W, 1]` face masks in [0, 1].
  valid: `[B]` float32 1 for a video in the loss, 0 for one left out.
  """
  latents: jax.Array
  reference_latents: jax.Array
  clip_tokens: jax.Array
  face_embedding: jax.Array
  poses: jax.Array
  face_masks: jax.Array
  valid: jax.Array


class Draws(NamedTuple):
  """The randomness of one step's loss: `sigma [B]`, `noise [B, F, h, w, 4]`, `dropout [B]` in [0, 1)."""
  sigma: jax.Array
  noise: jax.Array
  dropout: jax.Array


def encode_frames(params: Any, config: vae.VAEConfig, pixels: jax.Array, chunk_size: int | None = None, *,
                  dtype: Dtype = jnp.float32) -> vae.DiagonalGaussian:
  """The VAE posterior of every frame of `pixels [B, F, H, W, 3]` (in [-1, 1]), as `[BF, h, w, L]`.

  With `chunk_size` c < F the encoder runs k = F / c passes one after another (a `lax.map`: one
  pass's activations alive at a time, the full-resolution feature maps of c frames per video
  instead of F); pass j encodes frames j, j + k, j + 2k, ..., so that with F split over `context`
  in consecutive blocks (c a multiple of it) every device encodes c / context of its own frames per
  pass. The encoder sees each frame alone: the posterior is the one of a single pass.
  """
  b, f = pixels.shape[:2]
  if not chunk_size or chunk_size >= f:
    return vae.encode(params, config, pixels.reshape((b * f,) + pixels.shape[2:]), dtype=dtype)
  if f % chunk_size:
    raise ValueError(f'encode chunk size {chunk_size} does not divide the {f} frames')
  passes = f // chunk_size

  def one_pass(chunk: jax.Array) -> jax.Array:                                        # [B, c, H, W, 3]
    chunk = sharding.constrain(chunk, sharding.VIDEO + (None, None, None))
    posterior = vae.encode(params, config, chunk.reshape((b * chunk_size,) + chunk.shape[2:]), dtype=dtype)
    moments = jnp.concatenate([posterior.mean, posterior.logvar], axis=-1)                # [Bc, h, w, 2L]
    return moments.reshape((b, chunk_size) + moments.shape[1:])

  # Frame m k + j sits at [j, :, m]: [B, F, ...] -> [B, c, k, ...] -> [k, B, c, ...].
  chunks = jnp.moveaxis(pixels.reshape((b, chunk_size, passes) + pixels.shape[2:]), 2, 0)
  chunks = sharding.constrain(chunks, (None,) + sharding.VIDEO + (None, None, None))
  moments = jnp.moveaxis(jax.lax.map(one_pass, chunks), 0, 2)                          # [B, c, k, h, w, 2L]
  return vae.DiagonalGaussian.from_moments(moments.reshape((b * f,) + moments.shape[3:]))


def encode(params: Any, configs: ModelConfigs, batch: Batch, key: jax.Array, config: LossConfig, *,
           image_mean, image_std, dtype: Dtype = jnp.float32, encode_chunk_size: int | None = None) -> Encoded:
  """Runs the frozen VAE and CLIP on a batch; no gradient flows through it.

  Args:
    params: holds at least `vae` and `image_encoder`.
    batch: the data pipeline's batch.
    key: one key; split into the frame posterior draw, the reference noise and its posterior draw.
    encode_chunk_size: frames of each video per VAE encoder pass (`encode_frames`); None: all.
  Returns:
    `Encoded`: target latents `z = posterior.sample() * scaling_factor`, the undropped CLIP token,
    the unscaled posterior sample of the noise-augmented reference, and the pixels mapped to [-1, 1]
    (poses) and [0, 1] (masks).
  """
  params = jax.lax.stop_gradient({k: params[k] for k in ('vae', 'image_encoder')})
  b, f, height, width, _ = batch.frames.shape
  frames_key, reference_key, posterior_key = jax.random.split(key, 3)
  pixels = batch.frames.astype(jnp.float32) / 127.5 - 1.0
  posterior = encode_frames(params['vae'], configs.vae, pixels, encode_chunk_size, dtype=dtype)
  latents = posterior.sample(frames_key) * configs.vae.scaling_factor                   # [BF, h, w, 4]
  latents = latents.reshape((b, f) + latents.shape[1:])                                 # -> [B, F, h, w, 4]
  latents = sharding.constrain(latents, sharding.VIDEO + (None, None, None))            # a device's frames
  tokens = clip_embedding(params, configs, batch.reference, image_mean, image_std, dtype)   # [B, 1, D]
  reference = reference_posterior(params, configs, batch.reference, config.noise_aug_strength,
                                  jax.random.split(reference_key, b), dtype).sample(posterior_key)
  return Encoded(
      latents=latents.astype(jnp.float32), reference_latents=reference.astype(jnp.float32),
      clip_tokens=tokens.astype(jnp.float32), face_embedding=batch.face_embedding.astype(jnp.float32),
      poses=batch.poses.astype(jnp.float32) / 127.5 - 1.0,
      face_masks=batch.face_masks.astype(jnp.float32) / 255.0, valid=batch.valid.astype(jnp.float32))


def draw(key: jax.Array, latents_shape: tuple[int, ...], config: LossConfig) -> Draws:
  """Sigmas (stratified, interpolated cosine), noise like the latents, and dropout uniforms."""
  sigma_key, noise_key, dropout_key = jax.random.split(key, 3)
  b = latents_shape[0]
  return Draws(sigma=diffusion.sample_training_sigmas(sigma_key, b, config.noise_d_low, config.noise_d_high),
               noise=jax.random.normal(noise_key, latents_shape, jnp.float32),
               dropout=jax.random.uniform(dropout_key, (b,), jnp.float32))


class Aux(NamedTuple):
  """Per-video terms of the loss: `per_video [B]`, `denoised [B, F, h, w, 4]`."""
  per_video: jax.Array
  denoised: jax.Array


def loss(params: Any, configs: ModelConfigs, unet_apply, inputs: Encoded, draws: Draws, config: LossConfig,
         dtype: Dtype = jnp.float32) -> tuple[jax.Array, Aux]:
  """The training loss of a batch (SPEC §5 steps 5-8), float32.

  Args:
    params: holds `unet`, `pose_net` and `face_encoder`.
    unet_apply: `(params, sample, timestep, context, added_time_ids, pose_latents) -> v`
      (`Networks.unet`, which carries the remat switch).
    inputs: `encode`'s output (or recorded arrays).
    draws: `draw`'s output (or recorded arrays).
  Returns:
    `(loss, aux)`: the mean over valid videos of their per-video loss (0 when none is valid).
  """
  z, sigma = inputs.latents, draws.sigma.astype(jnp.float32)
  b, f, h, w, _ = z.shape
  q = config.conditioning_dropout_prob
  keep_clip = (draws.dropout >= 2 * q).astype(jnp.float32)[:, None, None]                 # [B, 1, 1]
  keep_image = 1.0 - ((draws.dropout >= q) & (draws.dropout < 3 * q)).astype(jnp.float32)
  faces = face_tokens(params, configs, inputs.face_embedding, inputs.clip_tokens, dtype)   # from e0
  context = jnp.concatenate([inputs.clip_tokens * keep_clip, faces.astype(jnp.float32)], axis=1)
  image_latents = inputs.reference_latents * keep_image[:, None, None, None]              # [B, h, w, 4]

  noisy = diffusion.add_noise(z, sigma, draws.noise)                                      # [B, F, h, w, 4]
  scaled = diffusion.scale_model_input(noisy, sigma[:, None, None, None, None])
  sample = jnp.concatenate([scaled, jnp.broadcast_to(image_latents[:, None], z.shape)], axis=-1)
  ids = added_time_ids(config.fps, config.motion_bucket_id, config.noise_aug_strength, b)
  v = unet_apply(params['unet'], sample.astype(dtype), 0.25 * jnp.log(sigma), context.astype(dtype),
                 ids.astype(dtype), pose_features(params, configs, inputs.poses, dtype))
  s = sigma[:, None, None, None, None]
  denoised = diffusion.predict_x0(v.astype(jnp.float32), noisy, s)
  mask = nearest_legacy(inputs.face_masks, (h, w))                                        # [B, F, h, w, 1]
  weighted = diffusion.loss_weight(s) * (denoised - z) ** 2 * (1.0 + mask)
  per_video = jnp.mean(weighted.reshape(b, -1), axis=1)                                   # [B]
  total = jnp.sum(per_video * inputs.valid) / jnp.maximum(jnp.sum(inputs.valid), 1.0)
  return total, Aux(per_video, denoised)
