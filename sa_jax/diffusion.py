"""Diffusion maths shared by sampling and training: the SVD EDM v-prediction parametrisation.

Inference (SPEC §4.2, §7.11) mirrors diffusers `EulerDiscreteScheduler` as configured by SVD-xt
(`use_karras_sigmas`, `timestep_type="continuous"`, `prediction_type="v_prediction"`,
`timestep_spacing="leading"`): the sigma table is built on the host in float64 and rounded to
float32, like the reference; the per-step arithmetic is float32 and jit-able. Training (SPEC §5)
shares the input scaling, the timestep `0.25 ln sigma` and the x0 formula, and adds the
interpolated-cosine sigma law, the noising and the loss weight.
"""

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
  """The scheduler settings that matter (SVD `scheduler/scheduler_config.json`)."""
  sigma_min: float = 0.002
  sigma_max: float = 700.0
  rho: float = 7.0

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'ScheduleConfig':
    """Reads a diffusers scheduler config; refuses settings this port does not implement."""
    expected = dict(prediction_type='v_prediction', use_karras_sigmas=True, timestep_type='continuous',
                    final_sigmas_type='zero')
    for key, want in expected.items():
      if d.get(key, want) != want:
        raise ValueError(f'scheduler config: {key}={d[key]!r} is not supported (expected {want!r})')
    return cls(sigma_min=float(d.get('sigma_min', cls.sigma_min)),
               sigma_max=float(d.get('sigma_max', cls.sigma_max)))

  @classmethod
  def from_file(cls, path: str | os.PathLike) -> 'ScheduleConfig':
    with open(path) as f:
      return cls.from_dict(json.load(f))


def sigmas(num_steps: int, config: ScheduleConfig = ScheduleConfig()) -> np.ndarray:
  """Karras sigmas from sigma_max to sigma_min with a final 0: `[num_steps + 1]` float32."""
  if num_steps < 1:
    raise ValueError(f'num_steps must be >= 1, got {num_steps}')
  ramp = np.linspace(0, 1, num_steps)
  lo, hi = config.sigma_min ** (1 / config.rho), config.sigma_max ** (1 / config.rho)
  karras = (hi + ramp * (lo - hi)) ** config.rho
  return np.concatenate([karras, [0.0]]).astype(np.float32)


def timesteps(sigma: np.ndarray) -> np.ndarray:
  """Continuous UNet timesteps `0.25 ln(sigma)` in float32 for all but the final sigma."""
  return (np.float32(0.25) * np.log(sigma[:-1].astype(np.float32))).astype(np.float32)


def init_noise_sigma(config: ScheduleConfig = ScheduleConfig()) -> np.float32:
  """`sqrt(sigma_max^2 + 1)` in float32 (the 'leading' spacing value)."""
  s = np.float32(config.sigma_max)
  return np.sqrt(s * s + np.float32(1.0)).astype(np.float32)


def scale_model_input(x: jax.Array, sigma: jax.Array) -> jax.Array:
  """EDM input scaling `x / sqrt(sigma^2 + 1)`."""
  return x / jnp.sqrt(sigma * sigma + 1.0)


def predict_x0(v: jax.Array, x: jax.Array, sigma: jax.Array) -> jax.Array:
  """Denoised sample from a v-prediction: `v * (-sigma / sqrt(sigma^2 + 1)) + x / (sigma^2 + 1)`."""
  return v * (-sigma / jnp.sqrt(sigma * sigma + 1.0)) + x / (sigma * sigma + 1.0)


def euler_step(x: jax.Array, x0: jax.Array, sigma: jax.Array, sigma_next: jax.Array) -> jax.Array:
  """One Euler step of the probability-flow ODE from sigma to sigma_next."""
  return x + (x - x0) / sigma * (sigma_next - sigma)


def add_noise(z: jax.Array, sigma: jax.Array, noise: jax.Array) -> jax.Array:
  """`x_sigma = z + sigma * noise`; sigma broadcasts from the leading (batch) axis."""
  return z + _per_row(sigma, z) * noise


def loss_weight(sigma: jax.Array) -> jax.Array:
  """EDM loss weight `(1 + sigma^2) / sigma^2` (SPEC §5 step 8)."""
  return (1.0 + sigma * sigma) / (sigma * sigma)


def _per_row(sigma: jax.Array, like: jax.Array) -> jax.Array:
  """`[B]` -> `[B, 1, ...]` broadcastable against `like` `[B, ...]`."""
  sigma = jnp.asarray(sigma)
  return sigma.reshape(sigma.shape + (1,) * (like.ndim - sigma.ndim))


def sample_training_sigmas(key: jax.Array, batch: int, noise_d_low: float, noise_d_high: float) -> jax.Array:
  """`[B]` noise levels for a batch: stratified uniforms `(arange(B) + U[0, 1)) / B` through
  `training_sigmas` (SPEC §5 step 4)."""
  u = (jnp.arange(batch, dtype=jnp.float32) + jax.random.uniform(key, (batch,), jnp.float32)) / batch
  return training_sigmas(u, noise_d_low, noise_d_high)


def training_sigmas(u: jax.Array, noise_d_low: float, noise_d_high: float, image_d: float = 64,
                    sigma_data: float = 0.5, sigma_min: float = 0.002, sigma_max: float = 700.0) -> jax.Array:
  """Interpolated-cosine noise levels of the training script, from uniforms `u` in [0, 1).

  `u = 0` gives sigma_max and `u = 1` sigma_min (SPEC §5 step 4; the original's noise resolutions
  are 32 and 64: `configs/train.py`'s `loss` section). float32 like the reference.
  """
  u = jnp.asarray(u, jnp.float32)
  logsnr_min = -2 * math.log(sigma_min / sigma_data)
  logsnr_max = -2 * math.log(sigma_max / sigma_data)

  def cosine(t, lo, hi):
    t_min, t_max = math.atan(math.exp(-0.5 * hi)), math.atan(math.exp(-0.5 * lo))
    return -2 * jnp.log(jnp.tan(t_min + t * (t_max - t_min)))

  def shifted(t, noise_d):
    shift = 2 * math.log(noise_d / image_d)
    return cosine(t, logsnr_min - shift, logsnr_max - shift) + shift

  low, high = shifted(u, noise_d_low), shifted(u, noise_d_high)
  logsnr = low + u * (high - low)
  return jnp.exp(-logsnr / 2) * sigma_data
