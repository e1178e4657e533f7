"""The denoising loop as one compiled program (SPEC §4.2-4.5).

`make_denoiser` returns a jitted `(params, latents, inputs) -> (latents, trajectory)` that runs
every step (`make_step`) inside one `lax.scan`: per step, all tiles of both guidance branches go
through the UNet as one batch (spread over the mesh's batch axes when there is a mesh), the tile
predictions are blended, classifier-free guidance is applied per frame, x0 is refined by the HJB
face correction inside the refine window (`lax.cond`, the window is data of the trace) and an
Euler step is taken. A host callback reports progress per step; nothing is dispatched from Python
per step.
"""

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sa_jax import sharding
from sa_jax.sampling import hjb, schedule, tiling


@dataclasses.dataclass(frozen=True)
class HJBConfig:
  """Face correction settings (release defaults of `inference_op.py`).

  Attributes:
    start, end: refine steps `start <= i <= end` (0-based, inclusive).
    iterations: Adam iterations per refine step.
    eta: learning rate scale; step i uses `eta * (1 - i / num_steps)`.
  """
  start: int = 0
  end: int = 20
  iterations: int = 3
  eta: float = 0.1


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Attributes:
    num_steps: Euler steps.
    min_guidance, max_guidance: per-frame linear guidance ramp over the clip.
    tile_size, tile_overlap: temporal tiling (SPEC §4.3).
    decode_chunk_size: frames per VAE decode call inside the HJB loss.
    hjb: face correction, or None for plain Euler steps.
    unet_batch_size: UNet rows (tile x guidance branch) per call; None runs all rows at once.
    scheduler: sigma range of the scheduler.
  """
  num_steps: int = 25
  min_guidance: float = 3.0
  max_guidance: float = 3.0
  tile_size: int = 16
  tile_overlap: int = 4
  decode_chunk_size: int = 4
  hjb: HJBConfig | None = None
  unet_batch_size: int | None = None
  scheduler: schedule.ScheduleConfig = schedule.ScheduleConfig()


class SamplerInputs(NamedTuple):
  """Everything a run depends on besides the parameters and the initial latents (all arrays;
  shapes fix the program).

  context: `[2, S, D]` UNet context of the unconditional and conditional branch.
  image_latents: `[h, w, 4]` reference latents of the conditional branch (unscaled VAE mean).
  added_time_ids: `[3]` (fps - 1, motion bucket, noise augmentation).
  pose_latents: `[N, h, w, C0]` PoseNet features of the conditional branch.
  face_boxes: `[N, 4]` int32 inclusive face boxes (HJB; ignored without it).
  reference_embedding: `[E]` reference face embedding of the face embedder (HJB).
  """
  context: jax.Array
  image_latents: jax.Array
  added_time_ids: jax.Array
  pose_latents: jax.Array
  face_boxes: jax.Array
  reference_embedding: jax.Array


class Trajectory(NamedTuple):
  """Per-step values, each `[steps, N, h, w, 4]`: guided model output, x0 used, latents after."""
  model_output: jax.Array
  x0: jax.Array
  latents: jax.Array


@dataclasses.dataclass(frozen=True)
class Networks:
  """The functions the loop calls, each `(params, ...) -> ...` of one network.

  Attributes:
    unet: `(params, sample, timestep, context, added_time_ids, pose_latents) -> v`.
    decode: `(params, scaled_latents [N, h, w, 4], chunk) -> frames [N, H, W, 3]` (VAE).
    embed_faces: `(params, faces [N, 112, 112, 3]) -> [N, E]` (face embedder).
  """
  unet: Callable[..., jax.Array]
  decode: Callable[..., jax.Array]
  embed_faces: Callable[..., jax.Array]


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
    `step(params, inputs, x, i) -> (x_next, Trajectory of this step)` for latents x `[N, h, w, 4]`
    at step index i (an int32 scalar), where params is a dict with `unet`, and for HJB `vae` and
    `face_embedder`.
  """
  sigma_table = schedule.sigmas(config.num_steps, config.scheduler)
  sigmas = jnp.asarray(sigma_table)
  timesteps = jnp.asarray(schedule.timesteps(sigma_table))
  weights = tiling.tile_weights(config.tile_size)
  if config.hjb is not None and not 0 <= config.hjb.start <= config.hjb.end:
    raise ValueError(f'HJB refine window start {config.hjb.start}, end {config.hjb.end}: need 0 <= start <= end')

  def guided_velocity(params, inputs: SamplerInputs, x, i):
    """Tile-blended, guided model output for the latents x `[N, h, w, 4]` at step i."""
    n = x.shape[0]
    tiles = tiling.tile_indices(n, config.tile_size, config.tile_overlap)      # [K, T] (static)
    k = tiles.shape[0]
    scaled = schedule.scale_model_input(x, sigmas[i])[tiles]                   # [K, T, h, w, 4]
    image = jnp.broadcast_to(inputs.image_latents, scaled.shape)
    sample = jnp.concatenate([jnp.concatenate([scaled, jnp.zeros_like(image)], -1),
                              jnp.concatenate([scaled, image], -1)], 0)       # [2K, T, h, w, 8]
    context = jnp.repeat(inputs.context, k, axis=0)                            # [2K, S, D]
    pose = inputs.pose_latents[tiles]
    # The unconditional branch has no pose: adding zeros to the features is exact.
    pose = jnp.concatenate([jnp.zeros_like(pose), pose], 0)                   # [2K, T, h, w, C0]
    ids = jnp.broadcast_to(inputs.added_time_ids, (2 * k, 3))
    sample = nn.with_logical_constraint(sample, (sharding.BATCH, None, None, None, None))
    unet = lambda s, c, a, p: networks.unet(params['unet'], s, timesteps[i], c, a, p)
    v = _in_row_chunks(unet, (sample, context, ids, pose), config.unet_batch_size)
    v = v.reshape((2, k) + v.shape[1:]).astype(jnp.float32)                   # [2, K, T, h, w, 4]
    acc = jnp.zeros((2,) + x.shape, jnp.float32).at[:, tiles].add(v * weights[:, None, None, None])
    count = jnp.zeros((n,), jnp.float32).at[tiles].add(jnp.broadcast_to(weights, tiles.shape))
    v = acc / count[:, None, None, None]                                       # [2, N, h, w, 4]
    guidance = guidance_ramp(config, n)[:, None, None, None]
    return v[0] + guidance * (v[1] - v[0])

  def refine(params, inputs: SamplerInputs, x0, i):
    cfg = config.hjb
    lr = cfg.eta * (1.0 - i.astype(jnp.float32) / config.num_steps)
    loss = lambda z: hjb.face_loss(
        z, inputs.face_boxes, inputs.reference_embedding,
        decode=lambda lat: networks.decode(params['vae'], lat, config.decode_chunk_size),
        embed=lambda faces: networks.embed_faces(params['face_embedder'], faces))
    inside = (i >= cfg.start) & (i <= cfg.end)
    return jax.lax.cond(inside, lambda z: hjb.refine(z, lr, cfg.iterations, loss), lambda z: z, x0)

  def step(params, inputs: SamplerInputs, x, i):
    v = guided_velocity(params, inputs, x, i)
    x0 = schedule.predict_x0(v, x, sigmas[i])
    if config.hjb is not None:
      x0 = refine(params, inputs, x0, i)
    x_next = schedule.euler_step(x, x0, sigmas[i], sigmas[i + 1])
    return x_next, Trajectory(v, x0, x_next)

  return step


def make_denoiser(networks: Networks, config: SamplerConfig,
                  progress: Callable[[int], None] | None = None, trace: bool = False
                  ) -> Callable[[Any, jax.Array, SamplerInputs], tuple[jax.Array, Trajectory | None]]:
  """Builds the jitted denoising loop.

  Args:
    networks: the per-network functions.
    config: sampler settings (static: a change compiles a new program).
    progress: called on the host with the step index after each step.
    trace: also return the per-step `Trajectory` (for parity checks and debugging).
  Returns:
    `denoise(params, latents, inputs) -> (latents [N, h, w, 4], Trajectory or None)`, where params
    is a dict with `unet`, and for HJB `vae` and `face_embedder`. The initial latents `[N, h, w, 4]`
    (noise x init_noise_sigma, periodic over the tile) are donated: their buffer holds the result.
  """
  step = make_step(networks, config)

  def denoise(params, latents, inputs: SamplerInputs):
    def body(x, i):
      x_next, record = step(params, inputs, x, i)
      if progress is not None:
        jax.debug.callback(progress, i)
      return x_next, (record if trace else None)

    return jax.lax.scan(body, latents.astype(jnp.float32), jnp.arange(config.num_steps))

  return jax.jit(denoise, donate_argnums=1)
