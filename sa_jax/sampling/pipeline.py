"""From reference photo, pose images and face embedding to video frames (SPEC §4).

Pure functions of `(params, arrays)`; file reading, resizing with PIL and validation live in
`sa_jax.animate`. `params` is a dict with one tree per network: `unet`, `vae`, `image_encoder`,
`pose_net`, `face_encoder` and, for the HJB face correction, `face_embedder`.
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sa_jax.models import clip, face_encoder, iresnet, pose_net, unet, vae
from sa_jax.sampling import hjb, sampler, schedule, tiling

Dtype = Any


@dataclasses.dataclass(frozen=True)
class ModelConfigs:
  """The architecture of every network (a checkpoint's `config["models"]`)."""
  unet: unet.UNetConfig
  vae: vae.VAEConfig
  image_encoder: clip.CLIPVisionConfig
  pose_net: pose_net.PoseNetConfig
  face_encoder: face_encoder.FaceEncoderConfig
  face_embedder: iresnet.IResNetConfig | None = None

  @classmethod
  def from_dict(cls, sections: Mapping[str, Mapping[str, Any]]) -> 'ModelConfigs':
    missing = {'unet', 'vae', 'image_encoder', 'pose_net', 'face_encoder'} - set(sections)
    if missing:
      raise ValueError(f'model configs lack {sorted(missing)}')
    embedder = sections.get('face_embedder')
    return cls(unet=unet.UNetConfig.from_dict(sections['unet']),
               vae=vae.VAEConfig.from_dict(sections['vae']),
               image_encoder=clip.CLIPVisionConfig.from_dict(sections['image_encoder']),
               pose_net=pose_net.PoseNetConfig.from_dict(sections['pose_net']),
               face_encoder=face_encoder.FaceEncoderConfig.from_dict(sections['face_encoder']),
               face_embedder=None if embedder is None else iresnet.IResNetConfig.from_dict(embedder))

  def check(self) -> None:
    """Cross-network consistency (a checkpoint assembled from mismatched parts fails here)."""
    u, f = self.unet, self.face_encoder
    problems = []
    if self.pose_net.noise_latent_channels != u.block_out_channels[0]:
      problems.append(f'pose_net.noise_latent_channels {self.pose_net.noise_latent_channels} != '
                      f'unet.block_out_channels[0] {u.block_out_channels[0]}')
    if f.cross_attention_dim != u.cross_attention_dim:
      problems.append(f'face_encoder.cross_attention_dim {f.cross_attention_dim} != '
                      f'unet.cross_attention_dim {u.cross_attention_dim}')
    if f.num_tokens != u.num_face_tokens:
      problems.append(f'face_encoder.num_tokens {f.num_tokens} != unet.num_face_tokens {u.num_face_tokens}')
    projection = self.image_encoder.projection_dim
    if projection != u.cross_attention_dim or projection != f.clip_embeddings_dim:
      problems.append(f'image_encoder.projection_dim {projection} must equal unet.cross_attention_dim '
                      f'{u.cross_attention_dim} and face_encoder.clip_embeddings_dim {f.clip_embeddings_dim}')
    if self.vae.latent_channels * 2 != u.in_channels or self.vae.latent_channels != u.out_channels:
      problems.append(f'vae.latent_channels {self.vae.latent_channels} does not fit unet in/out channels '
                      f'{u.in_channels}/{u.out_channels}')
    if problems:
      raise ValueError('inconsistent model configs:\n  ' + '\n  '.join(problems))


@dataclasses.dataclass(frozen=True)
class ConditioningConfig:
  """Attributes: fps (conditioned as fps - 1), motion bucket, noise augmentation, CLIP normalisation."""
  fps: int = 7
  motion_bucket_id: float = 127.0
  noise_aug_strength: float = 0.02
  image_mean: tuple[float, ...] = clip.CLIP_MEAN
  image_std: tuple[float, ...] = clip.CLIP_STD


class Request(NamedTuple):
  """Host-side inputs of one animation, already at the generation size `H x W`.

  reference: `[H0, W0, 3]` uint8 RGB at its original size (CLIP, reference face crop).
  reference_resized: `[H, W, 3]` uint8 RGB, the reference resized to the generation size (Lanczos).
  poses: `[N, H, W, 3]` uint8 RGB pose images.
  face_embedding: `[512]` raw insightface embedding of the reference face.
  face_boxes: `[N, 4]` int32 inclusive face boxes of the frames (HJB), or zeros.
  reference_face_box: `[4]` int32 face box of `reference` (HJB), or zeros.
  """
  reference: np.ndarray
  reference_resized: np.ndarray
  poses: np.ndarray
  face_embedding: np.ndarray
  face_boxes: np.ndarray
  reference_face_box: np.ndarray


def make_networks(configs: ModelConfigs, dtype: Dtype = jnp.float32, remat: bool = False,
                  query_chunk_size: int | None = None) -> sampler.Networks:
  """The per-network functions the sampler calls. `remat` bounds the HJB backward's memory."""
  denoiser = unet.UNet(configs.unet, remat=remat, query_chunk_size=query_chunk_size, dtype=dtype)
  embedder = None if configs.face_embedder is None else iresnet.IResNet(configs.face_embedder, dtype=dtype)

  def embed_faces(params, faces):
    if embedder is None:
      raise ValueError('the HJB face correction needs a face embedder; the checkpoint has none '
                       '(convert it with --face-embedder)')
    return embedder.apply({'params': params}, faces)

  return sampler.Networks(
      unet=lambda p, *args: denoiser.apply({'params': p}, *args),
      decode=lambda p, z, chunk: vae.decode(p, configs.vae, z, chunk, remat=remat, checkpoint_chunks=remat,
                                            dtype=dtype),
      embed_faces=embed_faces)


class Conditioning(NamedTuple):
  """Conditioning of a request: see `sampler.SamplerInputs` for the fields' meaning."""
  context: jax.Array
  image_latents: jax.Array
  added_time_ids: jax.Array
  pose_latents: jax.Array
  reference_embedding: jax.Array


def condition(params: Mapping[str, Any], configs: ModelConfigs, settings: ConditioningConfig,
              request: Request, key: jax.Array, with_reference_embedding: bool,
              dtype: Dtype = jnp.float32) -> Conditioning:
  """CLIP token, face tokens, reference latents, pose features and (HJB) reference face embedding.

  The unconditional context is all zeros (SPEC §4.1); `key` draws the noise augmentation of the
  reference before it is encoded. Jit with `configs`, `settings`, `with_reference_embedding`,
  `dtype` static.
  """
  clip_embedding = clip.encode_image(params['image_encoder'], configs.image_encoder,
                                     request.reference[None], settings.image_mean, settings.image_std,
                                     dtype=dtype)[:, None]                                 # [1, 1, P]
  face_tokens = face_encoder.FusionFaceId(configs.face_encoder, dtype=dtype).apply(
      {'params': params['face_encoder']}, jnp.asarray(request.face_embedding, dtype)[None],
      clip_embedding)                                                                      # [1, T, D]
  cond = jnp.concatenate([clip_embedding, face_tokens.astype(clip_embedding.dtype)], axis=1)
  context = jnp.concatenate([jnp.zeros_like(cond), cond], axis=0)                         # [2, 1 + T, D]

  pixels = jnp.asarray(request.reference_resized, jnp.float32)[None] / 255.0 * 2.0 - 1.0
  pixels = pixels + settings.noise_aug_strength * jax.random.normal(key, pixels.shape)
  image_latents = vae.encode(params['vae'], configs.vae, pixels, dtype=dtype).mode()[0]    # [h, w, 4]

  poses = jnp.asarray(request.poses, jnp.float32) / 127.5 - 1.0
  pose_latents = pose_net.PoseNet(configs.pose_net, dtype=dtype).apply({'params': params['pose_net']}, poses)

  ids = jnp.asarray([settings.fps - 1, settings.motion_bucket_id, settings.noise_aug_strength], dtype)
  if with_reference_embedding:
    face = jnp.asarray(request.reference, jnp.float32)[None] / 255.0
    face = hjb.crop_faces((face - 0.5) / 0.5, jnp.asarray(request.reference_face_box)[None])
    reference_embedding = iresnet.IResNet(configs.face_embedder, dtype=dtype).apply(
        {'params': params['face_embedder']}, face)[0]
  else:
    reference_embedding = jnp.zeros((1,), dtype)
  return Conditioning(context, image_latents, ids, pose_latents, reference_embedding)


def initial_latents(key: jax.Array, num_frames: int, tile_size: int, latent_shape: tuple[int, int, int],
                    schedule_config: schedule.ScheduleConfig = schedule.ScheduleConfig()) -> jax.Array:
  """`N(0, 1)` noise for one tile times `init_noise_sigma`, repeated periodically to N frames."""
  noise = jax.random.normal(key, (tile_size,) + tuple(latent_shape), jnp.float32)
  return tiling.periodic_noise(noise * schedule.init_noise_sigma(schedule_config), num_frames)


def decode_video(params: Any, vae_config: vae.VAEConfig, latents: jax.Array, decode_chunk_size: int,
                 dtype: Dtype = jnp.float32) -> tuple[jax.Array, jax.Array]:
  """Scaled latents `[N, h, w, 4]` -> (decoded `[N, H, W, 3]` in about [-1, 1], uint8 frames)."""
  decoded = vae.decode(params, vae_config, latents, decode_chunk_size, dtype=dtype).astype(jnp.float32)
  frames = jnp.round(jnp.clip(decoded / 2 + 0.5, 0.0, 1.0) * 255.0).astype(jnp.uint8)
  return decoded, frames


@dataclasses.dataclass(frozen=True)
class Animator:
  """Compiled pieces of the pipeline for one set of networks and settings.

  Build once and call `run` for many requests of the same shapes: nothing recompiles.
  """
  configs: ModelConfigs
  sampler_config: sampler.SamplerConfig
  conditioning: ConditioningConfig = ConditioningConfig()
  dtype: Dtype = jnp.float32
  query_chunk_size: int | None = None
  progress: Callable[[int], None] | None = None

  def __post_init__(self):
    self.configs.check()
    hjb_on = self.sampler_config.hjb is not None
    if hjb_on and self.configs.face_embedder is None:
      raise ValueError('HJB face correction requested but the model has no face embedder')
    networks = make_networks(self.configs, self.dtype, remat=hjb_on, query_chunk_size=self.query_chunk_size)
    object.__setattr__(self, '_condition', jax.jit(
        lambda p, r, k: condition(p, self.configs, self.conditioning, r, k, hjb_on, self.dtype)))
    object.__setattr__(self, '_denoise', sampler.make_denoiser(networks, self.sampler_config, self.progress))
    object.__setattr__(self, '_decode', jax.jit(
        lambda p, z: decode_video(p, self.configs.vae, z, self.sampler_config.decode_chunk_size, self.dtype)))

  def run(self, params: Mapping[str, Any], request: Request, key: jax.Array) -> np.ndarray:
    """Animates one request; returns `[N, H, W, 3]` uint8 frames."""
    noise_key, aug_key = jax.random.split(key)
    cond = self._condition(params, request, aug_key)
    n = request.poses.shape[0]
    h, w = cond.pose_latents.shape[1:3]
    latents = initial_latents(noise_key, n, self.sampler_config.tile_size,
                              (h, w, self.configs.vae.latent_channels), self.sampler_config.scheduler)
    inputs = sampler.SamplerInputs(cond.context, cond.image_latents, cond.added_time_ids,
                                   cond.pose_latents, jnp.asarray(request.face_boxes, jnp.int32),
                                   cond.reference_embedding)
    latents, _ = self._denoise(params, latents, inputs)
    _, frames = self._decode(params['vae'], latents)
    return np.asarray(frames)
