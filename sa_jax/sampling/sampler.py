"""The denoising loop of a batch of videos as one program (SPEC §4.2-4.5).

`make_denoiser` returns `(params, latents, inputs) -> (latents, trajectory)` that runs every step
(`make_step`) inside one `lax.scan`: per step, all tiles of both guidance branches of all videos
go through the UNet as one batch (constrained to the mesh's batch axes), the tile predictions are
blended, classifier-free guidance is applied per frame, x0 is refined by the HJB face correction
inside the refine window (`lax.cond`, the window is data of the trace) and an Euler step is
taken. A host callback reports progress per step; nothing is dispatched from Python per step.
The function is not jitted: the caller assembles the program (jit, shardings, donation).

Shapes: `B` videos, `F` frames, `h x w` latents, `K` tiles of `T` frames, `L` context tokens.
"""

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sa_jax import diffusion, sharding
from sa_jax.models.stable_animator import Networks
from sa_jax.sampling import hjb, tiling


@dataclasses.dataclass(frozen=True)
class HJBConfig:
  """Face correction settings (`configs/animate.py` `hjb` holds the defaults).

  Attributes:
    start, end: refine steps `start <= i <= end` (0-based, inclusive).
    iterations: Adam iterations per refine step.
    eta: learning rate scale; step i uses `eta * (1 - i / num_steps)`.
  """
  start: int
  end: int
  iterations: int
  eta: float


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Sampler settings (`configs/animate.py` `sampler` holds the defaults; see `from_config`).

  Attributes:
    num_steps: Euler steps.
    min_guidance, max_guidance: per-frame linear guidance ramp over the clip.
    tile_size, tile_overlap: temporal tiling (SPEC §4.3).
    decode_chunk_size: frames per VAE decode call inside the HJB loss.
    scheduler: sigma range of the scheduler.
    hjb: face correction, or None for plain Euler steps.
    unet_batch_size: UNet rows (video x tile x guidance branch) per call; None runs all rows at once.
  """
  num_steps: int
  min_guidance: float
  max_guidance: float
  tile_size: int
  tile_overlap: int
  decode_chunk_size: int
  scheduler: diffusion.ScheduleConfig
  hjb: HJBConfig | None = None
  unet_batch_size: int | None = None

  @classmethod
  def from_config(cls, run: Any, scheduler: diffusion.ScheduleConfig, num_frames: int) -> 'SamplerConfig':
    """From a run config (`configs/animate.py`: its `sampler` and `hjb` sections) for clips of
    `num_frames` frames.

    `sampler.min_guidance` of None means `sampler.guidance` (no ramp); the tile shrinks to a
    shorter clip and the overlap stays below the tile.
    """
    s, h = run.sampler, run.hjb
    tile = min(s.tile_size, num_frames)
    return cls(num_steps=s.num_steps, max_guidance=s.guidance,
               min_guidance=s.guidance if s.min_guidance is None else s.min_guidance,
               tile_size=tile, tile_overlap=min(s.tile_overlap, tile - 1),
               decode_chunk_size=s.decode_chunk_size, scheduler=scheduler,
               hjb=HJBConfig(h.start, h.end, h.iterations, h.eta) if h.enabled else None,
               unet_batch_size=s.unet_batch_size)


class SamplerInputs(NamedTuple):
  """The conditional branch of a batch and the HJB targets (the unconditional branch is built
  here: zero context and reference latents, no pose, the same added time ids; SPEC §4.1).

  context: `[B, L, D]` CLIP token and face tokens.
  image_latents: `[B, h, w, 4]` reference latents (unscaled VAE mode).
  added_time_ids: `[B, 3]` (fps - 1, motion bucket, noise augmentation).
  pose_latents: `[B, F, h, w, C0]` PoseNet features.
  face_boxes: `[B, F, 4]` int32 inclusive face boxes (HJB; ignored without it).
  reference_embedding: `[B, E]` reference face embeddings of the face embedder (HJB).
  """
  context: jax.Array
  image_latents: jax.Array
  added_time_ids: jax.Array
  pose_latents: jax.Array
  face_boxes: jax.Array
  reference_embedding: jax.Array


class Trajectory(NamedTuple):
  """Per-step values, each `[steps, B, F, h, w, 4]`: guided model output, x0 used, latents after."""
  model_output: jax.Array
  x0: jax.Array
  latents: jax.Array


# Programs taking or returning these can be stored (program_cache).
jax.export.register_namedtuple_serialization(SamplerInputs, serialized_name=f'{__name__}.SamplerInputs')
jax.export.register_namedtuple_serialization(Trajectory, serialized_name=f'{__name__}.Trajectory')


def guidance_ramp(config: SamplerConfig, num_frames: int) -> np.ndarray:
  """Per-frame guidance scales `linspace(min, max, N)`, float32."""
  return np.linspace(config.min_guidance, config.max_guidance, num_frames).astype(np.float32)


def _in_row_chunks(fn: Callable[..., jax.Array], rows: tuple, chunk: int | None) -> jax.Array:
  """Applies `fn` to the leading-axis rows of `rows`, `chunk` at a time (sequential `lax.map`)."""
  n = rows[0].shape[0]
  if chunk is None or chunk >= n:
    return fn(*rows)
  padded = -(-n // chunk) * chunk
  order = jnp.arange(padded) % n                       # pad with repeats of the first rows
  chunks = tuple(jnp.take(r, order, axis=0).reshape((padded // chunk, chunk) + r.shape[1:]) for r in rows)
  out = jax.lax.map(lambda c: fn(*c), chunks)
  return out.reshape((padded,) + out.shape[2:])[:n]


def make_step(networks: Networks, config: SamplerConfig
              ) -> Callable[[Any, SamplerInputs, jax.Array, jax.Array], tuple[jax.Array, Trajectory]]:
  """One denoising step, unjitted: the body of `make_denoiser`'s scan.

  Returns:
    `step(params, inputs, x, i) -> (x_next, Trajectory of this step)` for latents x
    `[B, F, h, w, 4]` at step index i (an int32 scalar), where params is a dict with `unet`, and
    for HJB `vae` and `face_embedder`.
  """
  sigma_table = diffusion.sigmas(config.num_steps, config.scheduler)
  sigmas = jnp.asarray(sigma_table)
  timesteps = jnp.asarray(diffusion.timesteps(sigma_table))
  weights = tiling.tile_weights(config.tile_size)
  if config.hjb is not None and not 0 <= config.hjb.start <= config.hjb.end:
    raise ValueError(f'HJB refine window start {config.hjb.start}, end {config.hjb.end}: need 0 <= start <= end')

  def guided_velocity(params, inputs: SamplerInputs, x, i):
    """Tile-blended, guided model output for the latents x `[B, F, h, w, 4]` at step i."""
    b, f = x.shape[:2]
    tiles = tiling.tile_indices(f, config.tile_size, config.tile_overlap)      # [K, T] (static)
    k, t = tiles.shape
    rows = lambda a: a.reshape((2 * b * k,) + a.shape[3:])                    # [2, B, K, ...] -> [2BK, ...]
    scaled = diffusion.scale_model_input(x, sigmas[i])[:, tiles]               # [B, K, T, h, w, 4]
    image = jnp.broadcast_to(inputs.image_latents[:, None, None], scaled.shape)
    sample = jnp.stack([jnp.concatenate([scaled, jnp.zeros_like(image)], -1),
                        jnp.concatenate([scaled, image], -1)])                # [2, B, K, T, h, w, 8]
    context = jnp.broadcast_to(inputs.context[:, None], (b, k) + inputs.context.shape[1:])
    context = jnp.stack([jnp.zeros_like(context), context])                   # [2, B, K, L, D]
    pose = inputs.pose_latents[:, tiles]
    # The unconditional branch has no pose: adding zeros to the features is exact.
    pose = jnp.stack([jnp.zeros_like(pose), pose])                            # [2, B, K, T, h, w, C0]
    ids = jnp.broadcast_to(inputs.added_time_ids[None, :, None], (2, b, k, 3))
    sample = nn.with_logical_constraint(rows(sample), (sharding.BATCH, None, None, None, None))
    unet = lambda s, c, a, p: networks.unet(params['unet'], s, timesteps[i], c, a, p)
    v = _in_row_chunks(unet, (sample, rows(context), rows(ids), rows(pose)), config.unet_batch_size)
    v = v.reshape((2, b, k) + v.shape[1:]).astype(jnp.float32)                # [2, B, K, T, h, w, 4]
    acc = jnp.zeros((2,) + x.shape, jnp.float32).at[:, :, tiles].add(v * weights[:, None, None, None])
    count = jnp.zeros((f,), jnp.float32).at[tiles].add(jnp.broadcast_to(weights, (k, t)))
    v = acc / count[:, None, None, None]                                       # [2, B, F, h, w, 4]
    guidance = guidance_ramp(config, f)[:, None, None, None]
    return v[0] + guidance * (v[1] - v[0])

  def refine(params, inputs: SamplerInputs, x0, i):
    cfg = config.hjb
    lr = cfg.eta * (1.0 - i.astype(jnp.float32) / config.num_steps)
    grad = lambda z: hjb.face_loss_grad(
        z, inputs.face_boxes, inputs.reference_embedding,
        decode=lambda lat: networks.decode(params['vae'], lat, config.decode_chunk_size),
        embed=lambda faces: networks.embed_faces(params['face_embedder'], faces),
        decode_chunk_size=config.decode_chunk_size)[1]
    inside = (i >= cfg.start) & (i <= cfg.end)
    return jax.lax.cond(inside, lambda z: hjb.refine(z, lr, cfg.iterations, grad), lambda z: z, x0)

  def step(params, inputs: SamplerInputs, x, i):
    v = guided_velocity(params, inputs, x, i)
    x0 = diffusion.predict_x0(v, x, sigmas[i])
    if config.hjb is not None:
      x0 = refine(params, inputs, x0, i)
    x_next = diffusion.euler_step(x, x0, sigmas[i], sigmas[i + 1])
    return x_next, Trajectory(v, x0, x_next)

  return step


def make_denoiser(networks: Networks, config: SamplerConfig,
                  progress: Callable[[jax.Array], None] | None = None, trace: bool = False
                  ) -> Callable[[Any, jax.Array, SamplerInputs], tuple[jax.Array, Trajectory | None]]:
  """Builds the denoising loop, unjitted (jit it with shardings and `donate_argnums=1` where the
  program is assembled; `sa_jax.sampling.pipeline.Animator` does).

  Args:
    networks: the per-network functions.
    config: sampler settings (static: a change compiles a new program).
    progress: called on the host with the step index after each step.
    trace: also return the per-step `Trajectory` (for parity checks and debugging).
  Returns:
    `denoise(params, latents, inputs) -> (latents [B, F, h, w, 4], Trajectory or None)`, where
    params is a dict with `unet`, and for HJB `vae` and `face_embedder`, and the initial latents
    `[B, F, h, w, 4]` are noise x init_noise_sigma, periodic over the tile.
  """
  step = make_step(networks, config)

  def denoise(params, latents, inputs: SamplerInputs):
    def body(x, i):
      x_next, record = step(params, inputs, x, i)
      if progress is not None:
        jax.debug.callback(progress, i)
      return x_next, (record if trace else None)

    return jax.lax.scan(body, latents.astype(jnp.float32), jnp.arange(config.num_steps))

  return denoise
