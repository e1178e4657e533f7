"""A small body-keypoint estimator: the pose error's estimator for synthetic characters.

DWPose (the pose error's estimator for people, `sa_jax.eval.pose`) was trained on photographs and does
not see the demo dataset's drawn characters; this network is trained on them (`sa-make-dataset`,
`sa_jax.training.keypoint_net`) and stands in for it with the same interface: a frame in, a `Pose` out.

  frame [H, W, 3] -> 3x3 convolutions (two of stride 2)      [H/4, W/4, 128]
                  -> 1x1 convolution                         [H/4, W/4, 18] heatmaps
                  -> soft-argmax per heatmap                 [18, 2] (x / W, y / H)

Fully convolutional: any size whose sides are multiples of 4; the expected position under the
softmax of each heatmap gives sub-cell keypoints. Every keypoint is reported visible (score 1).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sa_jax.nn import linear
from sa_jax.prep import keypoints

# (output channels, stride) of the 3x3 convolutions, each followed by SiLU.
LAYERS = ((32, 1), (64, 2), (64, 1), (128, 2), (128, 1), (128, 1))
NUM_BODY = keypoints.BODY.stop - keypoints.BODY.start
STRIDE = 4


class KeypointNet(nn.Module):
  """Body keypoints of one person per image."""

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    """Args: images `[N, H, W, 3]` in [-1, 1]. Returns `[N, 18, 2]` keypoints as (x / W, y / H)."""
    x = images
    for i, (features, stride) in enumerate(LAYERS):
      x = nn.silu(linear.conv(features, (3, 3), strides=stride, padding=((1, 1), (1, 1)), name=f'conv_{i}')(x))
    heat = linear.conv(NUM_BODY, (1, 1), padding=((0, 0), (0, 0)), name='heatmaps')(x)   # [N, h, w, 18]
    n, h, w, k = heat.shape
    weights = jax.nn.softmax(heat.reshape(n, h * w, k), axis=1).reshape(n, h, w, k)
    xs = (jnp.arange(w) + 0.5) / w                                                        # cell centres
    ys = (jnp.arange(h) + 0.5) / h
    return jnp.stack([jnp.einsum('nhwk,w->nk', weights, xs), jnp.einsum('nhwk,h->nk', weights, ys)], axis=-1)


def to_unit(frames: Any) -> jax.Array:
  """uint8 `[..., 3]` -> float32 in [-1, 1]."""
  return jnp.asarray(frames, jnp.float32) / 127.5 - 1.0


@jax.jit
def predict(params: Any, frames: jax.Array) -> jax.Array:
  """uint8 `[N, H, W, 3]` -> `[N, 18, 2]` keypoints as (x / W, y / H)."""
  return KeypointNet().apply({'params': params}, to_unit(frames))


class Estimator:
  """`estimator(frame)` -> `keypoints.Pose` of one person (the interface of `prep.dwpose.PoseEstimator`)."""

  def __init__(self, params: Any):
    self.params = params

  def __call__(self, image: np.ndarray) -> keypoints.Pose:
    height, width = image.shape[:2]
    if height % STRIDE or width % STRIDE:
      raise ValueError(f'frame of {width}x{height}: the keypoint estimator needs sides that are multiples of '
                       f'{STRIDE}')
    body = np.asarray(predict(self.params, image[None]))[0]                       # [18, 2]
    normalised = np.zeros((1, keypoints.NUM_KEYPOINTS, 2))
    scores = np.zeros((1, keypoints.NUM_KEYPOINTS))
    normalised[0, keypoints.BODY], scores[0, keypoints.BODY] = body, 1.0
    return keypoints.Pose(normalised, scores, width, height)
