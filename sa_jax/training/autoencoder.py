"""Training SVD's VAE from scratch on clips (the demo model's: the release VAE is trained already).

The objective of the VAE's own training, without its adversarial and perceptual terms: the L1
reconstruction of short runs of consecutive frames through the temporal decoder, plus a small KL
term towards N(0, 1) (weight 1e-6, as Stable Diffusion's autoencoder). Every frame is encoded
alone and a run of `frames_per_sample` frames is decoded together, as the pipeline decodes chunks
of `decode_chunk_size`, on random crops (`crop_size`). Afterwards `scaling_factor` is set to 1 / std
of the latents' means over the training frames (as Stable Diffusion chose 0.18215), so that scaled
latents have unit variance where the diffusion expects it.

The last layer of every residual branch (a resnet's `conv2`, attention's `to_out`) starts at zero,
so that each block starts as the identity. From scratch, SVD's VAE otherwise learns slowly: with
Flax's initialisation, and in PyTorch with diffusers' `AutoencoderKLTemporalDecoder` and its own
initialisation alike, the demo's widths stayed above the error of each frame's mean colour for 300
steps (docs/training.md). The decoder's last layer, `time_conv_out` (3 frames -> 1), starts as the
identity over frames: drawn at random it mixed each frame's colours with its neighbours', the first
and last frame of a decoded chunk having one neighbour fewer, and the reconstructions changed hue
from frame to frame. The posterior's log-variance starts at `INITIAL_LOGVAR` (`quant_conv`'s
log-variance half: kernel 0, bias -10, a standard deviation of 0.007): drawn as the rest, it started
near 0, the sampled latents were noise of standard deviation 1 around means of a few tenths, and
the decoder learnt the clips' mean colours before it could read the encoder.

  params, config = train(frames, vae_config, TrainingConfig(...))   # frames: uint8 [N, F, H, W, 3]
"""

import dataclasses
import logging
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from tqdm import tqdm

from sa_jax import outputs
from sa_jax.models import vae
from sa_jax.training import metrics

logger = logging.getLogger(__name__)
RESIDUAL_OUTPUTS = ('conv2', 'to_out')                # the last layer of a resnet's / attention's branch
INITIAL_LOGVAR = -10.0


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
  """Attributes:
    steps: Adam steps.
    batch_size: runs of frames per step.
    frames_per_sample: consecutive frames of a run (decoded together).
    crop_size: each run is cut to a random square of this side at latent-aligned offsets (the
      networks are convolutional: a quarter of the pixels, a quarter of the cost); 0: whole frames.
    learning_rate: Adam's peak, reached linearly over `warmup_steps`, then cosine-decayed to 0.
    warmup_steps: steps of the linear warmup (at most a tenth of `steps`).
    kl_weight: the KL term's weight.
    seed: the initial weights, the batches and the posterior draws.
  """
  steps: int = 1000
  batch_size: int = 8
  frames_per_sample: int = 2
  crop_size: int = 32
  learning_rate: float = 1e-3
  warmup_steps: int = 100
  kl_weight: float = 1e-6
  seed: int = 0


def _pixels(frames: jax.Array) -> jax.Array:
  return jnp.asarray(frames, jnp.float32) / 127.5 - 1.0                          # uint8 -> [-1, 1]


def initial_params(config: vae.VAEConfig, key: jax.Array, sample_shape: tuple[int, int]) -> dict[str, Any]:
  """Flax's initialisation of a VAE of `config`, every residual branch's last layer zero,
  `time_conv_out` the identity over frames and the log-variance `INITIAL_LOGVAR` (see above)."""
  params = nn.unbox(vae.VAE(config).init(key, jnp.zeros((1,) + sample_shape + (3,)), 1)['params'])
  params = traverse_util.unflatten_dict({path: jnp.zeros_like(value) if path[-2] in RESIDUAL_OUTPUTS else value
                                         for path, value in traverse_util.flatten_dict(params).items()})
  kernel = params['decoder']['time_conv_out']['kernel']                   # [3, 1, 1, C, C]: frames t-1, t, t+1
  params['decoder']['time_conv_out']['kernel'] = jnp.zeros_like(kernel).at[1, 0, 0].set(jnp.eye(kernel.shape[-1]))
  moments, latent = params['quant_conv'], config.latent_channels     # kernel [1, 1, C, 2L]: mean | logvar
  moments['kernel'] = moments['kernel'].at[..., latent:].set(0.0)
  moments['bias'] = moments['bias'].at[latent:].set(INITIAL_LOGVAR)
  return params


def loss(params: Any, config: vae.VAEConfig, frames: jax.Array, key: jax.Array
         ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L1 reconstruction + `kl_weight` KL of uint8 runs `[B, F, H, W, 3]` (the terms as metrics)."""
  b, f = frames.shape[:2]
  x = _pixels(frames).reshape((b * f,) + frames.shape[2:])                        # [BF, H, W, 3]
  posterior = vae.encode(params, config, x)
  z = posterior.sample(key).reshape((b, f) + posterior.mean.shape[1:])             # [B, F, h, w, L]
  recon = vae.decode_frames(params, config, z.reshape((b * f,) + z.shape[2:]), f)   # [BF, H, W, 3]
  l1 = jnp.mean(jnp.abs(recon - x))
  kl = 0.5 * jnp.mean(posterior.mean ** 2 + jnp.exp(posterior.logvar) - 1.0 - posterior.logvar)
  return l1, dict(l1=l1, kl=kl)


def train(frames: np.ndarray, config: vae.VAEConfig, training: TrainingConfig, progress: bool = True
          ) -> tuple[dict[str, Any], vae.VAEConfig]:
  """Trains a VAE of `config` on clips `frames` uint8 `[N, F, H, W, 3]` (F >= `frames_per_sample`).

  Returns its parameters and `config` with the measured `scaling_factor`.
  """
  n, length, height, width = frames.shape[:4]
  run, crop, factor = training.frames_per_sample, training.crop_size, config.spatial_factor
  if length < run:
    raise ValueError(f'clips of {length} frames; the VAE trains on runs of {run}')
  if crop and (crop % factor or crop > min(height, width)):
    raise ValueError(f'crop_size {crop}: expected a multiple of {factor} within the {width}x{height} frames')
  key = jax.random.key(training.seed)
  init_key, key = jax.random.split(key)
  params = initial_params(config, init_key, (crop or height, crop or width))
  tx = optax.adam(optax.warmup_cosine_decay_schedule(
      0.0, training.learning_rate, min(training.warmup_steps, training.steps // 10), training.steps))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, batch, key):
    def objective(p):
      l1, terms = loss(p, config, batch, key)
      return l1 + training.kl_weight * terms['kl'], terms
    (_, terms), grads = jax.value_and_grad(objective, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, terms

  rng = np.random.default_rng(training.seed)
  bar = tqdm(range(training.steps), desc='VAE', unit='step', disable=not progress or None)
  for i in bar:
    outputs.check_interrupted()       # a stop signal whose exception a callback swallowed
    clips = rng.integers(0, n, training.batch_size)
    starts = rng.integers(0, length - run + 1, training.batch_size)
    batch = np.stack([frames[c, s:s + run] for c, s in zip(clips, starts)])        # [B, run, H, W, 3]
    if crop:
      ys = rng.integers(0, (height - crop) // factor + 1, training.batch_size) * factor
      xs = rng.integers(0, (width - crop) // factor + 1, training.batch_size) * factor
      batch = np.stack([b[:, y:y + crop, x:x + crop] for b, y, x in zip(batch, ys, xs)])
    params, opt_state, terms = step(params, opt_state, batch, jax.random.fold_in(key, i))
    bar.set_postfix(l1=f'{float(terms["l1"]):.4f}', kl=f'{float(terms["kl"]):.3g}')
    if bar.disable:
      metrics.log_progress('VAE', i + 1, training.steps, terms)
  scaling_factor = latent_scale(params, config, frames.reshape((-1,) + frames.shape[2:]))
  logger.info('VAE: %d steps, last batch L1 %.4f (pixels in [-1, 1]), KL %.3g; scaling factor %.5f',
              training.steps, terms['l1'], terms['kl'], scaling_factor)
  return jax.device_get(params), dataclasses.replace(config, scaling_factor=scaling_factor)


def latent_scale(params: Any, config: vae.VAEConfig, frames: np.ndarray, chunk: int = 256) -> float:
  """1 / std of the posterior means of uint8 `frames [N, H, W, 3]`."""
  encode = jax.jit(lambda x: vae.encode(params, config, _pixels(x)).mean)
  means = np.concatenate([np.asarray(encode(frames[i:i + chunk])) for i in range(0, len(frames), chunk)])
  return float(1.0 / means.std())
