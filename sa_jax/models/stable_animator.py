"""StableAnimator assembled from its networks: the one table of them, their configs and the conditioning.

Everything that needs "all the networks" reads `NETWORKS` (the converter, the sampler's model
functions, the checkpoint config, the bench and the tests), so adding or changing a network is
one row here. The conditioning (SPEC §4.1, §5 steps 2-3) is a set of batched pure functions of
`(params, arrays[, key])`; the sampler builds its guidance pair on top of `condition`, a trainer
adds its conditioning dropout on top of the pieces.

Shapes: `B` videos, `F` frames, `H x W` generation size, `H0 x W0` reference size, `h x w`
latent size (`H / 8`), `T` face tokens, `D` cross-attention width.
"""

import dataclasses
import functools
import types
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from sa_jax.models import clip, face_encoder, iresnet, pose_net, unet, vae
from sa_jax.nn.resize import crop_resize_bilinear

Dtype = Any


@dataclasses.dataclass(frozen=True)
class Network:
  """One network of the system.

  Attributes:
    name: its key in a params dict, a checkpoint's `config["models"]` and `ModelConfigs`.
    config_class: its config dataclass (`from_dict` reads a checkpoint section).
    module: the model file (`abstract_params(config, dtype)` gives the boxed parameter shapes).
    required: whether every checkpoint holds it (the face embedder serves only the HJB correction).
    trained: whether StableAnimator fine-tunes it (SPEC §5; the UNet only under `attentions`).
  """
  name: str
  config_class: type
  module: types.ModuleType
  required: bool = True
  trained: bool = False

  def abstract_params(self, config: Any, dtype: Dtype = jnp.float32) -> Any:
    """Boxed parameter shapes (traced once per config and dtype in a process: the UNet's take seconds)."""
    return _abstract_params(self.module, config, dtype)

  def param_shapes(self, config: Any, dtype: Dtype = jnp.float32) -> Any:
    """The parameter tree's shapes and dtypes, unboxed (`ShapeDtypeStruct` leaves)."""
    return nn.unbox(self.abstract_params(config, dtype))


@functools.lru_cache(maxsize=32)
def _abstract_params(module: types.ModuleType, config: Any, dtype: Dtype) -> Any:
  return module.abstract_params(config, dtype)


NETWORKS: tuple[Network, ...] = (
    Network('unet', unet.UNetConfig, unet, trained=True),
    Network('vae', vae.VAEConfig, vae),
    Network('image_encoder', clip.CLIPVisionConfig, clip),
    Network('pose_net', pose_net.PoseNetConfig, pose_net, trained=True),
    Network('face_encoder', face_encoder.FaceEncoderConfig, face_encoder, trained=True),
    Network('face_embedder', iresnet.IResNetConfig, iresnet, required=False),
)
BY_NAME: Mapping[str, Network] = {n.name: n for n in NETWORKS}


@dataclasses.dataclass(frozen=True)
class ModelConfigs:
  """The architecture of every network (a checkpoint's `config["models"]`), one field per `NETWORKS` row."""
  unet: unet.UNetConfig
  vae: vae.VAEConfig
  image_encoder: clip.CLIPVisionConfig
  pose_net: pose_net.PoseNetConfig
  face_encoder: face_encoder.FaceEncoderConfig
  face_embedder: iresnet.IResNetConfig | None = None

  @classmethod
  def from_dict(cls, sections: Mapping[str, Mapping[str, Any]]) -> 'ModelConfigs':
    """Builds every section with its network's `from_dict`; unknown or missing sections are errors."""
    unknown = sorted(set(sections) - set(BY_NAME))
    if unknown:
      raise ValueError(f'model configs: unknown networks {unknown}; expected {sorted(BY_NAME)}')
    missing = sorted(n.name for n in NETWORKS if n.required and n.name not in sections)
    if missing:
      raise ValueError(f'model configs lack {missing}')
    configs = cls(**{name: BY_NAME[name].config_class.from_dict(section) for name, section in sections.items()})
    configs.check()
    return configs

  def to_dict(self) -> dict[str, dict[str, Any]]:
    """JSON-ready sections (tuples as lists) that `from_dict` reads back to the same configs."""
    listed = lambda v: list(v) if isinstance(v, tuple) else v
    return {n.name: {k: listed(v) for k, v in dataclasses.asdict(c).items()}
            for n in NETWORKS if (c := getattr(self, n.name)) is not None}

  @property
  def names(self) -> tuple[str, ...]:
    """The networks present, in table order."""
    return tuple(n.name for n in NETWORKS if getattr(self, n.name) is not None)

  def abstract_params(self, dtype: Dtype = jnp.float32) -> dict[str, Any]:
    """Boxed parameter shapes of every network present."""
    return {name: BY_NAME[name].abstract_params(getattr(self, name), dtype) for name in self.names}

  def check(self) -> None:
    """Cross-network consistency (a checkpoint assembled from mismatched parts fails here)."""
    u, f = self.unet, self.face_encoder
    problems = []
    if self.pose_net.noise_latent_channels != u.block_out_channels[0]:
      problems.append(f'pose_net.noise_latent_channels {self.pose_net.noise_latent_channels} != '
                      f'unet.block_out_channels[0] {u.block_out_channels[0]}')
    if self.pose_net.spatial_factor != self.vae.spatial_factor:
      problems.append(f'pose_net.spatial_factor {self.pose_net.spatial_factor} != vae.spatial_factor '
                      f'{self.vae.spatial_factor} (the pose features are added to the latents)')
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


# ------------------------------------------------------------------------------- network functions

@dataclasses.dataclass(frozen=True)
class Networks:
  """The per-network functions the sampler (and a trainer) call, each `(params, ...) -> ...`.

  Attributes:
    unet: `(params, sample [R, F, h, w, 8], timestep, context [R, L, D], added_time_ids [R, 3],
      pose_latents [R, F, h, w, C0]) -> v [R, F, h, w, 4]`.
    decode: `(params, scaled_latents [F, h, w, 4], chunk) -> frames [F, H, W, 3]` (one video).
    embed_faces: `(params, faces [N, 112, 112, 3]) -> [N, E]` (the face embedder).
  """
  unet: Callable[..., jax.Array]
  decode: Callable[..., jax.Array]
  embed_faces: Callable[..., jax.Array]


def make_networks(configs: ModelConfigs, dtype: Dtype = jnp.float32, remat: bool = False,
                  query_chunk_size: int | None = None) -> Networks:
  """The network functions; `remat` recomputes UNet and decoder blocks in the backward pass."""
  denoiser = unet.UNet(configs.unet, remat=remat, query_chunk_size=query_chunk_size, dtype=dtype)
  embedder = None if configs.face_embedder is None else iresnet.IResNet(configs.face_embedder, dtype=dtype)

  def embed_faces(params, faces):
    if embedder is None:
      raise ValueError('the HJB face correction needs a face embedder; the checkpoint has none '
                       '(convert it with --face-embedder)')
    return embedder.apply({'params': params}, faces)

  return Networks(
      unet=lambda p, *args: denoiser.apply({'params': p}, *args),
      decode=lambda p, z, chunk: vae.decode(p, configs.vae, z, chunk, remat=remat, dtype=dtype),
      embed_faces=embed_faces)


# ------------------------------------------------------------------------------------ conditioning

class Conditioning(NamedTuple):
  """The conditional branch of a batch of videos (the unconditional one is all zeros, SPEC §4.1).

  context: `[B, 1 + T, D]` CLIP token followed by the face tokens.
  image_latents: `[B, h, w, 4]` unscaled VAE latents of the noise-augmented reference.
  added_time_ids: `[B, 3]` (fps - 1, motion bucket, noise augmentation).
  pose_latents: `[B, F, h, w, C0]` PoseNet features.
  """
  context: jax.Array
  image_latents: jax.Array
  added_time_ids: jax.Array
  pose_latents: jax.Array


def clip_embedding(params: Any, configs: ModelConfigs, images: jax.Array, mean, std,
                   dtype: Dtype = jnp.float32) -> jax.Array:
  """`[B, H0, W0, 3]` uint8 references -> `[B, 1, D]` CLIP tokens (SVD preprocessing, SPEC §4.1)."""
  return clip.encode_image(params['image_encoder'], configs.image_encoder, images, mean, std,
                           dtype=dtype)[:, None]


def face_tokens(params: Any, configs: ModelConfigs, face_embedding: jax.Array, clip_tokens: jax.Array,
                dtype: Dtype = jnp.float32) -> jax.Array:
  """`[B, 512]` raw face embeddings and `[B, 1, D]` CLIP tokens -> `[B, T, D]` face tokens."""
  model = face_encoder.FusionFaceId(configs.face_encoder, dtype=dtype)
  return model.apply({'params': params['face_encoder']}, jnp.asarray(face_embedding, dtype), clip_tokens)


def reference_posterior(params: Any, configs: ModelConfigs, images: jax.Array, noise_aug_strength: float,
                        key: jax.Array, dtype: Dtype = jnp.float32) -> vae.DiagonalGaussian:
  """VAE posterior of the noise-augmented references `[B, H, W, 3]` uint8 at the generation size.

  `x = image / 127.5 - 1 + noise_aug_strength * N(0, 1)`, one normal draw per video from `key` `[B]`
  (a batch of keys), so a video's draw does not depend on the batch it is in.
  """
  pixels = jnp.asarray(images, jnp.float32) / 255.0 * 2.0 - 1.0
  noise = jax.vmap(lambda k: jax.random.normal(k, pixels.shape[1:]))(key)
  return vae.encode(params['vae'], configs.vae, pixels + noise_aug_strength * noise, dtype=dtype)


def pose_features(params: Any, configs: ModelConfigs, poses: jax.Array, dtype: Dtype = jnp.float32
                  ) -> jax.Array:
  """`[B, F, H, W, 3]` pose images, uint8 (mapped by `/127.5 - 1`) or floating in [-1, 1], ->
  `[B, F, h, w, C0]` PoseNet features."""
  b, f = poses.shape[:2]
  poses = jnp.asarray(poses)
  x = poses.astype(jnp.float32) / 127.5 - 1.0 if jnp.issubdtype(poses.dtype, jnp.integer) else poses
  features = pose_net.PoseNet(configs.pose_net, dtype=dtype).apply({'params': params['pose_net']}, x)
  return features.reshape((b, f) + features.shape[1:])       # [BF, h, w, C0] -> [B, F, h, w, C0]


def added_time_ids(fps: int, motion_bucket_id: float, noise_aug_strength: float, batch: int,
                   dtype: Dtype = jnp.float32) -> jax.Array:
  """`[B, 3]` SVD micro-conditioning (fps is conditioned as fps - 1)."""
  ids = jnp.asarray([fps - 1, motion_bucket_id, noise_aug_strength], dtype)
  return jnp.broadcast_to(ids, (batch, 3))


def condition(params: Any, configs: ModelConfigs, reference: jax.Array, reference_resized: jax.Array,
              poses: jax.Array, face_embedding: jax.Array, key: jax.Array, *, fps: int,
              motion_bucket_id: float, noise_aug_strength: float, image_mean, image_std,
              dtype: Dtype = jnp.float32) -> Conditioning:
  """The inference conditioning of a batch (SPEC §4.1): reference latents are the posterior mode.

  Args:
    reference: `[B, H0, W0, 3]` uint8 references at their own size (CLIP).
    reference_resized: `[B, H, W, 3]` uint8 references at the generation size (VAE).
    poses: `[B, F, H, W, 3]` uint8 pose images.
    face_embedding: `[B, 512]` raw reference face embeddings.
    key: `[B]` keys of the noise augmentation.
  """
  tokens = clip_embedding(params, configs, reference, image_mean, image_std, dtype)       # [B, 1, D]
  faces = face_tokens(params, configs, face_embedding, tokens, dtype)                     # [B, T, D]
  context = jnp.concatenate([tokens, faces.astype(tokens.dtype)], axis=1)                 # [B, 1 + T, D]
  latents = reference_posterior(params, configs, reference_resized, noise_aug_strength, key, dtype).mode()
  ids = added_time_ids(fps, motion_bucket_id, noise_aug_strength, reference.shape[0], dtype)
  return Conditioning(context, latents, ids, pose_features(params, configs, poses, dtype))


def crop_faces(frames: jax.Array, boxes: jax.Array) -> jax.Array:
  """`[N, H, W, 3]` frames in [-1, 1] and `[N, 4]` inclusive boxes -> `[N, 112, 112, 3]` face crops
  (bilinear, no antialias), the face embedder's input."""
  return crop_resize_bilinear(frames, boxes, iresnet.INPUT_SIZE)


def reference_face_embedding(params: Any, configs: ModelConfigs, reference: jax.Array, boxes: jax.Array,
                             dtype: Dtype = jnp.float32) -> jax.Array:
  """`[B, H0, W0, 3]` uint8 references and `[B, 4]` face boxes -> `[B, E]` face-embedder embeddings (HJB)."""
  faces = crop_faces((jnp.asarray(reference, jnp.float32) / 255.0 - 0.5) / 0.5, boxes)
  return iresnet.IResNet(configs.face_embedder, dtype=dtype).apply({'params': params['face_embedder']}, faces)
