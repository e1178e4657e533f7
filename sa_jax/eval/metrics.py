"""Per-frame metrics of generated vs ground-truth frames: L1, PSNR and SSIM, each also in the
convention of DisCo's evaluation code, which published TikTok tables follow (docs/evaluation.md).

Every metric takes uint8 RGB frames `a`, `b: [..., H, W, 3]` of one shape (any leading axes:
frames, clips) and returns one value per frame `[...]`; a clip's score is the mean over its
frames. They are jitted JAX functions, usable on a batch inside training's validation too.

  * `l1`: mean absolute error of [0, 1] pixels. `l1_disco`: DisCo's `l1_eval`, the absolute error of
    0..255 pixels divided by H * W, then averaged: the ~1e-4 figure papers print
    (`l1_disco = 255 * l1 / (H * W)`).
  * `psnr`: computed in float with peak 1; infinite for identical frames. `psnr_disco`: DisCo's
    `psnr_eval`, whose uint8 difference and square wrap around modulo 256 (so it is neither an upper
    nor a lower bound of the true value), and which gives 100 for a zero error.
  * `ssim`: dm-pix's SSIM (Gaussian window of 11, sigma 1.5, population statistics) on RGB in
    [0, 1], averaged over channels. `ssim_disco`: scikit-image's `structural_similarity` defaults as
    DisCo calls it: the frames in OpenCV's grey (fixed-point BT.601), a uniform 7 x 7 window,
    sample covariance, data range 255, averaged over the pixels whose window lies inside the frame.
"""

from collections.abc import Callable

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

FRAME_AXES = (-3, -2, -1)                     # H, W, C of `[..., H, W, 3]`
DISCO_PSNR_OF_ZERO_ERROR = 100.0              # what `psnr_eval` returns for identical frames
DISCO_SSIM_WINDOW = 7                         # scikit-image's default `win_size`
_GREY_WEIGHTS = (9798, 19235, 3735)           # OpenCV's 8-bit RGB -> grey: (R, G, B) / 2**15, rounded
_GREY_SHIFT = 15


def _unit(frames: jax.Array) -> jax.Array:
  return jnp.asarray(frames, jnp.float32) / 255.0


@jax.jit
def l1(a: jax.Array, b: jax.Array) -> jax.Array:
  """Mean absolute error of [0, 1] pixels, per frame."""
  return jnp.mean(jnp.abs(_unit(a) - _unit(b)), axis=FRAME_AXES)


@jax.jit
def l1_disco(a: jax.Array, b: jax.Array) -> jax.Array:
  """DisCo's L1: the mean absolute error of 0..255 pixels divided by H * W, per frame."""
  height, width = a.shape[-3:-1]
  return jnp.mean(jnp.abs(jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32)), axis=FRAME_AXES) / (
      height * width)


@jax.jit
def psnr(a: jax.Array, b: jax.Array) -> jax.Array:
  """PSNR in dB of [0, 1] pixels, per frame: `-10 log10(MSE)`, infinite where the frames are equal."""
  mse = jnp.mean(jnp.square(_unit(a) - _unit(b)), axis=FRAME_AXES)
  return jnp.where(mse > 0, -10.0 * jnp.log10(jnp.maximum(mse, jnp.finfo(jnp.float32).tiny)), jnp.inf)


@jax.jit
def psnr_disco(a: jax.Array, b: jax.Array) -> jax.Array:
  """DisCo's PSNR, per frame: `(a - b) ** 2` in uint8, wrapping modulo 256 twice, peak 255."""
  # The wrap-around is written out in int32: XLA's CPU backend does not keep uint8 products modulo 256.
  difference = (jnp.asarray(a, jnp.int32) - jnp.asarray(b, jnp.int32)) & 0xFF
  mse = jnp.mean(jnp.asarray((difference * difference) & 0xFF, jnp.float32), axis=FRAME_AXES)
  return jnp.where(mse > 0, 20.0 * jnp.log10(255.0 / jnp.sqrt(jnp.maximum(mse, 1.0))), DISCO_PSNR_OF_ZERO_ERROR)


@jax.jit
def ssim(a: jax.Array, b: jax.Array) -> jax.Array:
  """SSIM of RGB in [0, 1] (dm-pix: Gaussian window 11, sigma 1.5), per frame."""
  lead, frame = a.shape[:-3], a.shape[-3:]          # dm-pix takes [N, H, W, C]
  flat = lambda x: _unit(x).reshape((-1,) + frame)
  return dm_pix.ssim(flat(a), flat(b), max_val=1.0).reshape(lead)


def _grey(frames: jax.Array) -> jax.Array:
  """`[..., H, W, 3]` uint8 RGB -> `[..., H, W]` uint8 grey, as `cv2.cvtColor(..., COLOR_RGB2GRAY)`."""
  weighted = sum(jnp.asarray(frames[..., c], jnp.int32) * w for c, w in enumerate(_GREY_WEIGHTS))
  return jnp.asarray((weighted + (1 << (_GREY_SHIFT - 1))) >> _GREY_SHIFT, jnp.uint8)


def _window_mean(x: jax.Array) -> jax.Array:
  """Mean over each 7 x 7 window lying inside the frame: `[..., H, W] -> [..., H - 6, W - 6]`."""
  window = (1,) * (x.ndim - 2) + (DISCO_SSIM_WINDOW,) * 2
  return jax.lax.reduce_window(x, 0.0, jax.lax.add, window, (1,) * x.ndim, 'VALID') / DISCO_SSIM_WINDOW**2


@jax.jit
def ssim_disco(a: jax.Array, b: jax.Array) -> jax.Array:
  """DisCo's SSIM, per frame: scikit-image's defaults on OpenCV grey (see the module docstring)."""
  # Centred on 128: the statistics are shift-invariant and float32 cancels less in E[x^2] - E[x]^2.
  x, y = (jnp.asarray(_grey(f), jnp.float32) - 128.0 for f in (a, b))
  mean_x, mean_y = _window_mean(x), _window_mean(y)
  samples = DISCO_SSIM_WINDOW**2
  sample = samples / (samples - 1)                                   # scikit-image's use_sample_covariance
  var_x = sample * (_window_mean(x * x) - mean_x * mean_x)
  var_y = sample * (_window_mean(y * y) - mean_y * mean_y)
  cov = sample * (_window_mean(x * y) - mean_x * mean_y)
  mean_x, mean_y = mean_x + 128.0, mean_y + 128.0
  c1, c2 = (0.01 * 255.0)**2, (0.03 * 255.0)**2
  index = ((2 * mean_x * mean_y + c1) * (2 * cov + c2)) / ((mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2))
  return jnp.mean(index, axis=(-2, -1))


# The frame metrics by name (`sa-eval --metrics`), each with its values by key: correct and DisCo's.
FRAME_METRICS = {
    'l1': {'l1': l1, 'l1_disco': l1_disco},
    'psnr': {'psnr': psnr, 'psnr_disco': psnr_disco},
    'ssim': {'ssim': ssim, 'ssim_disco': ssim_disco},
}
CHUNK = 8       # frames per jitted call of `per_frame`


def per_frame(fn: Callable[[jax.Array, jax.Array], jax.Array], generated: np.ndarray, truth: np.ndarray
              ) -> np.ndarray:
  """`fn` over `[F, H, W, 3]` pairs in chunks of `CHUNK` frames (the last padded by repeating its last
  frame, the padding's values dropped), so a frame size compiles once whatever F: `[F]` float64."""
  values = []
  pad = lambda x: np.concatenate([x, np.repeat(x[-1:], CHUNK - len(x), axis=0)])
  for start in range(0, len(truth), CHUNK):
    a, b = generated[start:start + CHUNK], truth[start:start + CHUNK]
    values.append(np.asarray(fn(pad(a), pad(b)), np.float64)[:len(a)])
  return np.concatenate(values)


def frame_means(generated: np.ndarray, truth: np.ndarray) -> dict[str, float]:
  """Every frame metric's mean over the frames of uint8 `[F, H, W, 3]` pairs (training's validation)."""
  return {key: float(np.mean(per_frame(fn, generated, truth)))
          for metric in FRAME_METRICS.values() for key, fn in metric.items()}
