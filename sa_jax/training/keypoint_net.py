"""Training the keypoint estimator (`models/keypoint_net.py`) on frames with known body keypoints.

L1 between predicted and true keypoints in pixels, Adam with a cosine decay; a horizontal flip of
half the batch (with left and right keypoints swapped) widens the poses it sees.
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
from sa_jax.models import keypoint_net
from sa_jax.training import metrics

logger = logging.getLogger(__name__)

# OpenPose-18 body order: nose, neck, r/l shoulder, elbow, wrist, hip, knee, ankle, r/l eye, r/l ear.
FLIPPED = (0, 1, 5, 6, 7, 2, 3, 4, 11, 12, 13, 8, 9, 10, 15, 14, 17, 16)


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
  """Attributes: steps, batch_size, learning_rate (Adam, cosine-decayed), seed."""
  steps: int = 1500
  batch_size: int = 32
  learning_rate: float = 2e-3
  seed: int = 0


def train(frames: np.ndarray, points: np.ndarray, training: TrainingConfig, progress: bool = True
          ) -> dict[str, Any]:
  """Trains on uint8 frames `[N, H, W, 3]` with keypoints `[N, 18, 2]` as (x / W, y / H); returns the params."""
  n, height, width = frames.shape[:3]
  size = jnp.array([width, height], jnp.float32)
  sample = jnp.zeros((1, height, width, 3))
  params = nn.unbox(keypoint_net.KeypointNet().init(jax.random.key(training.seed), sample)['params'])
  tx = optax.adam(optax.cosine_decay_schedule(training.learning_rate, training.steps))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, frames, points):
    def loss(p):
      predicted = keypoint_net.KeypointNet().apply({'params': p}, keypoint_net.to_unit(frames))
      return jnp.mean(jnp.abs(predicted - points) * size)
    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  rng = np.random.default_rng(training.seed)
  bar = tqdm(range(training.steps), desc='keypoints', unit='step', disable=not progress or None)
  for i in bar:
    outputs.check_interrupted()       # a stop signal whose exception a callback swallowed
    pick = rng.choice(n, training.batch_size, replace=n < training.batch_size)
    batch, target = frames[pick].copy(), points[pick].copy()
    flip = rng.random(training.batch_size) < 0.5
    batch[flip], target[flip] = mirrored(batch[flip], target[flip])
    params, opt_state, value = step(params, opt_state, batch, target)
    bar.set_postfix(error_px=f'{float(value):.2f}')
    if bar.disable:
      metrics.log_progress('keypoint estimator', i + 1, training.steps, dict(error_px=value))
  logger.info('keypoint estimator: %d steps, last batch error %.2f px', training.steps, value)
  return jax.device_get(params)


def mirrored(frames: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Frames `[N, H, W, 3]` flipped left to right, with their keypoints `[N, 18, 2]` (x / W, y / H):
  mirrored, and left and right swapped (a right shoulder seen in a mirror is a left one)."""
  return frames[:, :, ::-1], points[:, FLIPPED] * [-1, 1] + [1, 0]


@dataclasses.dataclass(frozen=True)
class Trainer:
  """`train` on flat `{'a/b': array}` parameters (`character.PoseEstimator`)."""
  training: TrainingConfig

  def fit(self, frames: np.ndarray, points: np.ndarray) -> dict[str, np.ndarray]:
    params = train(frames, points, self.training)
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep='/').items()}
