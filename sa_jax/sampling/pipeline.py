"""From reference photos, pose images and face embeddings to video frames, B videos at a time (SPEC §4).

`Animator` assembles the three programs of a run: `prepare` (conditioning, HJB reference
embedding, initial latents), `denoise` (the one-`lax.scan` sampler) and `decode` (the chunked VAE
decode), each jitted once with its input and output shardings on the mesh (if any), the initial
latents donated. File reading and validation live in `sa_jax.animate`.

Shapes: `B` videos, `F` frames, `H x W` generation size, `H0 x W0` reference size, `h x w`
latents, `T` frames of initial noise (one tile).
"""

import contextlib
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sa_jax import diffusion, program_cache, sharding
from sa_jax.checkpoint import CheckpointConfig
from sa_jax.models import stable_animator, vae
from sa_jax.models.stable_animator import ModelConfigs
from sa_jax.sampling import sampler, tiling

Dtype = Any


@dataclasses.dataclass(frozen=True)
class ConditioningConfig:
  """SVD micro-conditioning (`configs/animate.py` `conditioning` holds the defaults).

  Attributes:
    fps: frame rate (conditioned as fps - 1).
    motion_bucket_id: SVD motion conditioning.
    noise_aug_strength: noise added to the reference before it is encoded (and conditioned on).
  """
  fps: int
  motion_bucket_id: float
  noise_aug_strength: float

  @classmethod
  def from_config(cls, run: Any) -> 'ConditioningConfig':
    c = run.conditioning
    return cls(fps=c.fps, motion_bucket_id=c.motion_bucket_id, noise_aug_strength=c.noise_aug_strength)


class Request(NamedTuple):
  """Host-side inputs of B videos of the same shapes, at the generation size `H x W`.

  reference: `[B, H0, W0, 3]` uint8 RGB at its original size (CLIP, reference face crop).
  reference_resized: `[B, H, W, 3]` uint8 RGB, the reference at the generation size (Lanczos).
  poses: `[B, F, H, W, 3]` uint8 RGB pose images.
  face_embedding: `[B, 512]` raw insightface embeddings of the reference faces.
  face_boxes: `[B, F, 4]` int32 inclusive face boxes of the frames (HJB), or zeros.
  reference_face_box: `[B, 4]` int32 face box of `reference` (HJB), or zeros.
  """
  reference: np.ndarray
  reference_resized: np.ndarray
  poses: np.ndarray
  face_embedding: np.ndarray
  face_boxes: np.ndarray
  reference_face_box: np.ndarray

  @classmethod
  def stack(cls, videos: Sequence['Request']) -> 'Request':
    """One batch from single-video requests (fields without the batch axis), all of one shape."""
    shapes = {tuple(np.shape(x) for x in v) for v in videos}
    if len(shapes) != 1:
      raise ValueError(f'a batch needs videos of one shape, got {len(shapes)} different shapes')
    return cls(*[np.stack(xs) for xs in zip(*videos)])

  @property
  def batch_size(self) -> int:
    return self.poses.shape[0]


# Programs taking it can be stored (program_cache).
jax.export.register_namedtuple_serialization(Request, serialized_name=f'{__name__}.Request')


class Outputs(NamedTuple):
  """What `Animator.run` returns for a batch (numpy).

  frames: `[B, F, H, W, 3]` uint8.
  decoded: `[B, F, H, W, 3]` float32 decoder output, about [-1, 1].
  latents: `[B, F, h, w, 4]` final latents.
  trajectory: per-step `sampler.Trajectory` (`[steps, B, ...]`) when the animator traces, else None.
  """
  frames: np.ndarray
  decoded: np.ndarray
  latents: np.ndarray
  trajectory: sampler.Trajectory | None


NEEDS = tuple(n.name for n in stable_animator.NETWORKS if n.required)   # + face_embedder for HJB


def param_shardings(models: ModelConfigs, names: Sequence[str], mesh: Mesh,
                    rules: Sequence[tuple[str, Any]] = sharding.LOGICAL_RULES) -> dict[str, Any]:
  """Network name -> tree of NamedShardings of its parameters on `mesh`, from the logical axes."""
  return {name: sharding.param_shardings(stable_animator.BY_NAME[name].abstract_params(getattr(models, name)),
                                         mesh, rules) for name in names}


def initial_latents(noise: jax.Array, num_frames: int, scheduler: diffusion.ScheduleConfig) -> jax.Array:
  """`[B, T, h, w, 4]` standard normal noise -> `[B, F, h, w, 4]` times `init_noise_sigma`, frame k
  taking noise `k mod T` (one tile of noise repeated periodically, SPEC §4.3)."""
  scaled = noise.astype(jnp.float32) * diffusion.init_noise_sigma(scheduler)
  return jax.vmap(lambda n: tiling.periodic_noise(n, num_frames))(scaled)


def decode_video(params: Any, vae_config: Any, latents: jax.Array, decode_chunk_size: int,
                 dtype: Dtype = jnp.float32) -> tuple[jax.Array, jax.Array]:
  """Scaled latents `[B, F, h, w, 4]` -> (decoded `[B, F, H, W, 3]` in about [-1, 1], uint8 frames)."""
  decode = lambda z: vae.decode(params, vae_config, z, decode_chunk_size, dtype=dtype)
  decoded = jax.vmap(decode)(latents).astype(jnp.float32)
  frames = jnp.round(jnp.clip(decoded / 2 + 0.5, 0.0, 1.0) * 255.0).astype(jnp.uint8)
  return decoded, frames


class Animator:
  """The compiled pipeline for one model, one set of run settings and one mesh.

  Build once and call `run` for many batches: the programs compile on the first batch of a shape
  and are reused for every later batch of that shape (and, with JAX's persistent compilation
  cache on, by later processes).

  Args:
    config: the checkpoint config (model configs, scheduler, CLIP normalisation).
    sampler_config: the sampler settings (static).
    conditioning: the micro-conditioning.
    dtype: compute dtype.
    query_chunk_size: spatial attention query chunk (bounds memory), or None.
    mesh: devices to run on; None runs on the default device.
    rules: logical-axis rules mapping parameter and activation names onto `mesh`.
    trace: also return the per-step trajectory (parity checks, debugging).
    step_progress: report each step from inside the sampler program (`run(progress=)`). A program
      that calls back into Python can be neither stored nor found in JAX's persistent compilation
      cache: leave it off where a second process should start without compiling the sampler.
    program_folder: where the traced programs are kept (`program_cache`), so a later process
      with the same settings and shapes loads them instead of tracing; None: traced in each
      process. Needs `step_progress` off.
  """

  def __init__(self, config: CheckpointConfig, sampler_config: sampler.SamplerConfig,
               conditioning: ConditioningConfig, dtype: Dtype = jnp.float32,
               query_chunk_size: int | None = None, mesh: Mesh | None = None,
               rules: Sequence[tuple[str, Any]] = sharding.LOGICAL_RULES, trace: bool = False,
               step_progress: bool = True, program_folder: Path | None = None):
    hjb = sampler_config.hjb is not None
    if hjb and config.models.face_embedder is None:
      raise ValueError('the HJB face correction needs the face embedder: convert the release with '
                       'sa-convert --face-embedder glintr100_torch.pth')
    if step_progress and program_folder is not None:
      raise ValueError('a sampler reporting each step calls back into Python and cannot be stored: give '
                       'step_progress=False with program_folder')
    self.config = config
    self.sampler_config = sampler_config
    self.mesh = mesh
    self.rules = tuple(rules)
    self.trace = trace
    self.networks = ('unet', 'vae', 'face_embedder') if hjb else ('unet', 'vae')
    self._progress: Callable[[int], None] | None = None
    models = config.models
    networks = stable_animator.make_networks(models, dtype, remat=hjb, query_chunk_size=query_chunk_size)
    self.step_progress = step_progress
    self._denoise_fn = sampler.make_denoiser(networks, sampler_config, trace=trace,
                                             progress=self._report if step_progress else None)
    self._prepare_fn = lambda p, r, s, n: _prepare(p, models, config, conditioning, sampler_config, r, s, n,
                                                   hjb, dtype)
    self._decode_fn = lambda p, z: decode_video(p, models.vae, z, sampler_config.decode_chunk_size, dtype)
    self._programs: dict[tuple[int, ...], tuple[Callable, Callable, Callable]] = {}
    self.program_folder = program_folder
    # Everything the three programs' tracing depends on besides their arguments (program_cache).
    self._description = (dataclasses.replace(config, source=None), sampler_config, conditioning, dtype,
                         query_chunk_size, None if mesh is None else (mesh.axis_names, mesh.device_ids.tolist()),
                         self.rules, trace)

  @property
  def needs(self) -> tuple[str, ...]:
    """The networks `run` reads (the image encoder, PoseNet and face encoder condition the batch)."""
    return NEEDS + self.networks[2:]

  def param_shardings(self) -> dict[str, Any] | None:
    """Network name -> tree of NamedShardings of the parameters `run` reads (None without a mesh)."""
    return None if self.mesh is None else param_shardings(self.config.models, self.needs, self.mesh, self.rules)

  def _batch_sharding(self, batch: int, ndim: int) -> NamedSharding:
    """An array `[B, ...]` of rank `ndim`: B on the mesh's batch axes where they divide it, the
    rest replicated."""
    spec = PartitionSpec(sharding.BATCH, *([None] * (ndim - 1)))
    return sharding.logical_to_sharding(spec, (batch,) + (1,) * (ndim - 1), self.mesh, self.rules)

  def programs(self, latent_shape: tuple[int, ...], request: Request) -> tuple[Callable, Callable, Callable]:
    """The jitted (prepare, denoise, decode) for latents of `latent_shape` `[B, F, h, w, 4]` and
    batches shaped as `request` (arrays or `ShapeDtypeStruct`s): what `run` calls, with `.lower`
    for compiling from shapes (`python -m tools.bench production`)."""
    if latent_shape in self._programs:
      return self._programs[latent_shape]
    jit = lambda name, fn, **kwargs: program_cache.jit(fn, self._description, self.program_folder, name=name,
                                                       **kwargs)
    if self.mesh is None:
      programs = (jit('prepare', self._prepare_fn), jit('denoise', self._denoise_fn, donate_argnums=1),
                  jit('decode', self._decode_fn))
    else:
      shard = lambda ndim: self._batch_sharding(latent_shape[0], ndim)
      params = self.param_shardings()
      inputs = sampler.SamplerInputs(*(shard(ndim) for ndim in (3, 4, 2, 5, 3, 2)))
      latents = pixels = shard(5)
      programs = (
          jit('prepare', self._prepare_fn, in_shardings=(params, jax.tree.map(lambda x: shard(x.ndim), request),
                                                         shard(1), None),
              out_shardings=(inputs, latents)),
          jit('denoise', self._denoise_fn, donate_argnums=1, out_shardings=(latents, None),
              in_shardings=({n: params[n] for n in self.networks}, latents, inputs)),
          jit('decode', self._decode_fn, in_shardings=(params['vae'], latents), out_shardings=(pixels, pixels)))
    self._programs[latent_shape] = programs
    return programs

  def _report(self, step: jax.Array) -> None:
    if self._progress is not None:
      self._progress(int(step))

  def context(self) -> contextlib.AbstractContextManager:
    """The mesh and logical-axis rules the programs are traced and run under (nothing without a mesh)."""
    stack = contextlib.ExitStack()
    if self.mesh is not None:
      stack.enter_context(jax.set_mesh(self.mesh))
      stack.enter_context(nn.logical_axis_rules(self.rules))
    return stack

  def latent_shape(self, request: Request) -> tuple[int, int, int, int, int]:
    """`[B, F, h, w, 4]` of a batch."""
    b, f, height, width = request.poses.shape[:4]
    vae = self.config.models.vae
    return (b, f, height // vae.spatial_factor, width // vae.spatial_factor, vae.latent_channels)

  def run(self, params: Mapping[str, Any], request: Request, seeds: Sequence[int],
          noise: np.ndarray | None = None, progress: Callable[[int], None] | None = None) -> Outputs:
    """Animates a batch.

    Args:
      params: network name -> parameter tree (at least `needs`; on `param_shardings()` when there
        is a mesh, or they are moved there).
      request: the batch's inputs.
      seeds: `[B]` seeds; video b's initial noise and noise augmentation come from `seeds[b]`
        alone, so a video gives the same frames in any batch.
      noise: optional `[B, T, h, w, 4]` standard normal initial noise (T <= F frames, repeated
        periodically) instead of the seeds' draw; the reference draws one tile's worth.
      progress: called with each step index as the sampler finishes it (with `step_progress`;
        without it, with the last step index once the batch is done).
    Returns:
      the batch's `Outputs`.
    """
    b = request.batch_size
    if len(seeds) != b:
      raise ValueError(f'{len(seeds)} seeds for a batch of {b} videos')
    missing = [n for n in self.needs if n not in params]
    if missing:
      raise ValueError(f'the animator needs parameters of {missing}')
    prepare, denoise, decode = self.programs(self.latent_shape(request), request)
    self._progress = progress
    used = {n: params[n] for n in self.needs}
    with self.context():
      inputs, latents = prepare(used, request, np.asarray(seeds, np.uint32), noise)
      latents, trajectory = denoise({n: used[n] for n in self.networks}, latents, inputs)
      decoded, frames = decode(used['vae'], latents)
    outputs = Outputs(*jax.device_get((frames, decoded, latents, trajectory)))
    if progress is not None and not self.step_progress:
      progress(self.sampler_config.num_steps - 1)
    return outputs


def _prepare(params: Any, models: ModelConfigs, config: CheckpointConfig, conditioning: ConditioningConfig,
             sampler_config: sampler.SamplerConfig, request: Request, seeds: jax.Array,
             noise: jax.Array | None, hjb: bool, dtype: Dtype) -> tuple[sampler.SamplerInputs, jax.Array]:
  """Sampler inputs and initial latents `[B, F, h, w, 4]` of a batch."""
  keys = jax.vmap(jax.random.key)(seeds)
  noise_keys, aug_keys = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)   # [B, 2] -> 2 x [B]
  cond = stable_animator.condition(
      params, models, request.reference, request.reference_resized, request.poses, request.face_embedding,
      aug_keys, fps=conditioning.fps, motion_bucket_id=conditioning.motion_bucket_id,
      noise_aug_strength=conditioning.noise_aug_strength, image_mean=config.image_mean,
      image_std=config.image_std, dtype=dtype)
  if hjb:
    reference_embedding = stable_animator.reference_face_embedding(
        params, models, request.reference, request.reference_face_box, dtype)
  else:
    reference_embedding = jnp.zeros((request.poses.shape[0], 1), dtype)
  b, f = request.poses.shape[:2]
  h, w = cond.pose_latents.shape[2:4]
  if noise is None:
    shape = (sampler_config.tile_size, h, w, models.vae.latent_channels)
    noise = jax.vmap(lambda k: jax.random.normal(k, shape, jnp.float32))(noise_keys)
  inputs = sampler.SamplerInputs(cond.context, cond.image_latents, cond.added_time_ids, cond.pose_latents,
                                 jnp.asarray(request.face_boxes, jnp.int32), reference_embedding)
  return inputs, initial_latents(noise, f, sampler_config.scheduler)
