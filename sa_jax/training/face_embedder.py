"""Training a face embedder on identities: our IResNet as a CosFace classifier (the demo model's).

The release's face embedder (glintr100, IResNet-100) was trained by insightface with a margin softmax
over identities; the demo's is the same network at a small depth and width, trained here the same
way on the face crops of a synthetic dataset: `logits = s * (cos(e, w_c) - m [c = label])` over a
learned unit vector `w_c` per identity (CosFace, Wang et al. 2018), `s = 30`, `m = 0.35`. Crops are
cut from the frames by their face boxes exactly as the HJB correction and `sa-eval` cut them
(`stable_animator.crop_faces`), each box jittered a little so that the embedding tolerates the
boxes of generated frames. The BatchNorms keep their statistics (mean 0, variance 1): the network
is used in inference mode only, and only their scales and biases train.

  params = train(frames, boxes, labels, config, TrainingConfig(...))
  embeddings = embed(params, config, frames, boxes)      # [N, E] unit vectors
"""

import dataclasses
import functools
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
from sa_jax.models import iresnet
from sa_jax.models.stable_animator import crop_faces
from sa_jax.sampling import hjb
from sa_jax.training import metrics

logger = logging.getLogger(__name__)

STATISTICS = ('mean', 'var')    # BatchNorm leaves that do not train


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
  """Attributes:
    steps: Adam steps.
    batch_size: crops per step.
    learning_rate: Adam's, cosine-decayed to 0.
    scale, margin: CosFace's `s` and `m`.
    jitter: each box edge moves by up to this fraction of the box's side.
    seed: the initial weights, the batches and the jitter.
  """
  steps: int = 300
  batch_size: int = 32
  learning_rate: float = 2e-3
  scale: float = 30.0
  margin: float = 0.35
  jitter: float = 0.1
  seed: int = 0


def _unit(x: jax.Array) -> jax.Array:
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True).clip(1e-12)


def _images(frames: jax.Array) -> jax.Array:
  return (jnp.asarray(frames, jnp.float32) / 255.0 - 0.5) / 0.5              # uint8 -> [-1, 1]


@functools.partial(jax.jit, static_argnames='config')
def embed(params: Any, config: iresnet.IResNetConfig, frames: jax.Array, boxes: jax.Array) -> jax.Array:
  """uint8 `[N, H, W, 3]` frames and int `[N, 4]` inclusive boxes -> `[N, E]` unit embeddings."""
  return _unit(iresnet.IResNet(config).apply({'params': params}, crop_faces(_images(frames), boxes)))


def _jittered(boxes: np.ndarray, rng: np.random.Generator, jitter: float, height: int, width: int) -> np.ndarray:
  """Inclusive `[y0, y1, x0, x1]` boxes with each edge moved by up to `jitter` of the side, kept in frame."""
  side = np.stack([boxes[:, 1] - boxes[:, 0], boxes[:, 1] - boxes[:, 0], boxes[:, 3] - boxes[:, 2],
                   boxes[:, 3] - boxes[:, 2]], axis=1) + 1
  moved = boxes + np.rint(rng.uniform(-jitter, jitter, boxes.shape) * side).astype(boxes.dtype)
  y0, x0 = np.clip(moved[:, 0], 0, height - 2), np.clip(moved[:, 2], 0, width - 2)
  y1, x1 = np.clip(moved[:, 1], y0 + 1, height - 1), np.clip(moved[:, 3], x0 + 1, width - 1)
  return np.stack([y0, y1, x0, x1], axis=1)


def train(frames: np.ndarray, boxes: np.ndarray, labels: np.ndarray, config: iresnet.IResNetConfig,
          training: TrainingConfig, progress: bool = True) -> dict[str, Any]:
  """Trains an IResNet of `config` to tell the identities `labels` apart.

  Args:
    frames: uint8 `[N, H, W, 3]`.
    boxes: int `[N, 4]` inclusive `[y_min, y_max, x_min, x_max]` face boxes.
    labels: int `[N]` identity indices in `[0, C)`.
  Returns:
    the IResNet parameters (the `face_embedder` tree).
  """
  n, height, width = frames.shape[:3]
  classes = int(labels.max()) + 1
  net_key, class_key = jax.random.split(jax.random.key(training.seed))
  faces = jnp.zeros((1, iresnet.INPUT_SIZE, iresnet.INPUT_SIZE, 3))
  params = {'net': nn.unbox(iresnet.IResNet(config).init(net_key, faces)['params']),
            'classes': jax.random.normal(class_key, (classes, config.num_features))}
  labels_of = traverse_util.path_aware_map(lambda path, _: 'fixed' if path[-1] in STATISTICS else 'trained', params)
  schedule = optax.cosine_decay_schedule(training.learning_rate, training.steps)
  tx = optax.multi_transform({'trained': optax.adam(schedule), 'fixed': optax.set_to_zero()}, labels_of)
  opt_state = tx.init(params)

  def loss_fn(params, images, boxes, labels):
    embeddings = _unit(iresnet.IResNet(config).apply({'params': params['net']}, crop_faces(images, boxes)))
    cos = embeddings @ _unit(params['classes']).T                                   # [B, C]
    logits = training.scale * (cos - training.margin * jax.nn.one_hot(labels, classes))
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, jnp.mean(jnp.argmax(cos, -1) == labels)

  @jax.jit
  def step(params, opt_state, frames, boxes, labels):
    (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, _images(frames), boxes, labels)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, accuracy

  rng = np.random.default_rng(training.seed)
  bar = tqdm(range(training.steps), desc='face embedder', unit='step', disable=not progress or None)
  for i in bar:
    outputs.check_interrupted()       # a stop signal whose exception a callback swallowed
    pick = rng.choice(n, training.batch_size, replace=n < training.batch_size)
    params, opt_state, loss, accuracy = step(params, opt_state, frames[pick],
                                             _jittered(boxes[pick], rng, training.jitter, height, width), labels[pick])
    bar.set_postfix(loss=f'{float(loss):.3f}', accuracy=f'{float(accuracy):.2f}')
    if bar.disable:
      metrics.log_progress('face embedder', i + 1, training.steps, dict(loss=loss, accuracy=accuracy))
  logger.info('face embedder: %d steps, last batch loss %.3f, accuracy %.2f', training.steps, loss, accuracy)
  return jax.device_get(params['net'])


@dataclasses.dataclass(frozen=True)
class Trainer:
  """`train` and `embed` on flat `{'a/b/c': array}` parameters and face masks (`character.FaceEmbedder`).

  Attributes:
    config: the IResNet to train.
    training: how.
  """
  config: iresnet.IResNetConfig
  training: TrainingConfig

  def fit(self, frames: np.ndarray, masks: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    params = train(frames, mask_boxes(masks), labels, self.config, self.training)
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep='/').items()}

  def embed(self, params: dict[str, np.ndarray], frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
    return np.asarray(embed(traverse_util.unflatten_dict(params, sep='/'), self.config, frames, mask_boxes(masks)))


def mask_boxes(masks: np.ndarray) -> np.ndarray:
  """int32 `[N, 4]` inclusive boxes of the 255 pixels of uint8 masks `[N, H, W]` (every mask has a face)."""
  return np.stack([hjb.face_box(mask, f'face mask {i}') for i, mask in enumerate(masks)])
