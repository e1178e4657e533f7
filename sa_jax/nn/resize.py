"""Image resizes with PyTorch semantics, channels-last and jit-able (SPEC §4.1, §4.5, §7.10).

`jax.image.resize` reproduces neither of them, so both are written out:

  * `clip_resize`: diffusers/SVD `_resize_with_antialiasing` (CLIP conditioning path): a separable
    Gaussian blur with reflect padding followed by torch bicubic interpolation with
    `align_corners=True`. Input sizes are static, so the whole resize is one constant linear map per
    axis (`out = M_y @ image @ M_x^T`), built on the host with numpy in the float32 arithmetic
    torch uses for the kernel weights and sample positions.
  * `crop_resize_bilinear`: crop each image to its inclusive box and resize it with torch
    `F.interpolate(mode='bilinear', align_corners=False, antialias=False)` (HJB face crops). Boxes
    are data (traced arrays): one compiled program serves any boxes; gathers keep it differentiable
    with respect to the images.
  * `nearest_legacy`: torch `F.interpolate(mode='nearest')` (the training loss's face-mask resize):
    output pixel `i` reads source `floor(i * in / out)`, the top-left sample of each block.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

CUBIC_A = -0.75   # torch's cubic convolution constant


def _size_pair(size: int | Sequence[int], name: str) -> tuple[int, int]:
  pair = (size, size) if isinstance(size, int) else tuple(size)
  if len(pair) != 2 or any(int(s) < 1 for s in pair):
    raise ValueError(f'{name} must be a positive int or (height, width), got {size!r}')
  return int(pair[0]), int(pair[1])


def _gaussian_kernel(size: int, sigma: float) -> np.ndarray:
  """Normalised 1-D Gaussian of odd `size` in float32 (as torch computes it for the blur)."""
  s = np.float32(sigma)
  x = np.arange(size, dtype=np.float32) - np.float32(size // 2)
  g = np.exp(-(x * x) / (np.float32(2.0) * s * s)).astype(np.float32)
  return g / g.sum(dtype=np.float32)


def _blur_matrix(n: int, sigma: float) -> np.ndarray:
  """`[n, n]` matrix of the 1-D Gaussian blur with reflect padding of one axis of length n.

  Kernel size `int(max(4 sigma, 3))` made odd; the `k - 1` padding is split floor/ceil front/rear.
  """
  k = int(max(4.0 * sigma, 3.0))
  if k % 2 == 0:
    k += 1
  front = (k - 1) // 2
  rear = k - 1 - front
  if max(front, rear) >= n:
    raise ValueError(f'blur kernel of size {k} needs reflect padding {max(front, rear)}, more than an '
                     f'axis of length {n} allows (length must exceed the padding)')
  g = _gaussian_kernel(k, sigma).astype(np.float64)
  src = np.arange(n)[:, None] + np.arange(k)[None, :] - front                      # [n, k] taps
  src = np.abs(src)                                                                # reflect at 0
  src = np.where(src > n - 1, 2 * (n - 1) - src, src)                              # reflect at n-1
  m = np.zeros((n, n), np.float64)
  np.add.at(m, (np.repeat(np.arange(n), k), src.reshape(-1)), np.tile(g, n))
  return m


def _cubic_weights(t: np.ndarray) -> np.ndarray:
  """`[..., 4]` torch cubic-convolution weights (A = -0.75) of taps -1, 0, 1, 2 at offset t, float32."""
  a = np.float32(CUBIC_A)
  near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1                # |x| <= 1
  far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a          # 1 < |x| < 2
  one = np.float32(1.0)
  return np.stack([far(t + one), near(t), near(one - t), far(one - t + one)], axis=-1)


def _bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """`[n_out, n_in]` matrix of torch bicubic interpolation with `align_corners=True`.

  Source position `i * (n_in - 1) / (n_out - 1)` (float32), taps clamped to the border.
  """
  scale = np.float32(n_in - 1) / np.float32(n_out - 1) if n_out > 1 else np.float32(0.0)
  real = (np.float32(scale) * np.arange(n_out, dtype=np.float32)).astype(np.float32)
  index = np.minimum(np.floor(real).astype(np.int64), n_in - 1)
  t = np.clip(real - index.astype(np.float32), np.float32(0.0), np.float32(1.0))
  weights = _cubic_weights(t).astype(np.float64)                      # [n_out, 4]
  m = np.zeros((n_out, n_in), np.float64)
  for tap in range(4):
    np.add.at(m, (np.arange(n_out), np.clip(index - 1 + tap, 0, n_in - 1)), weights[:, tap])
  return m


def clip_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
  """`[n_out, n_in]` float32 matrix of the whole 1-D `clip_resize` of one axis (blur, then bicubic)."""
  sigma = max((n_in / n_out - 1.0) / 2.0, 0.001)
  return (_bicubic_matrix(n_in, n_out) @ _blur_matrix(n_in, sigma)).astype(np.float32)


def clip_resize(images: jax.Array, size: int | Sequence[int] = (224, 224)) -> jax.Array:
  """diffusers `_resize_with_antialiasing(images, size)` on channels-last images (SPEC §4.1).

  Per axis: Gaussian blur with `sigma = max((in/out - 1)/2, 0.001)`, kernel `int(max(4 sigma, 3))`
  made odd, reflect padding; then bicubic (A = -0.75) with `align_corners=True`. The reference blurs
  x then y and interpolates afterwards; all four steps are linear and separable, so they are folded
  into one matrix per axis (identical up to float32 rounding). Applied along x first, then y.

  Args:
    images: `[N, H0, W0, C]` float images (SVD passes values in [-1, 1]); H0, W0 > the blur padding.
    size: output `(H, W)` (or one int for both).
  Returns:
    `[N, H, W, C]` float32.
  """
  if images.ndim != 4:
    raise ValueError(f'clip_resize expects [N, H, W, C] images, got shape {images.shape}')
  out_h, out_w = _size_pair(size, 'size')
  _, in_h, in_w, _ = images.shape
  m_y = jnp.asarray(clip_resize_matrix(in_h, out_h))                  # [H, H0]
  m_x = jnp.asarray(clip_resize_matrix(in_w, out_w))                  # [W, W0]
  x = images.astype(jnp.float32)
  hi = jax.lax.Precision.HIGHEST
  x = jnp.einsum('nhwc,vw->nhvc', x, m_x, precision=hi)              # [N, H0, W0, C] -> [N, H0, W, C]
  return jnp.einsum('nhvc,uh->nuvc', x, m_y, precision=hi)           # [N, H0, W, C] -> [N, H, W, C]


def _linear_taps(start: jax.Array, stop: jax.Array, n_out: int, limit: int
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Bilinear taps (torch, `align_corners=False`) of inclusive spans `[start, stop]` resized to n_out.

  Args:
    start, stop: `[N]` int inclusive bounds of each span in the full image axis.
    n_out: output length.
    limit: length of the full image axis (indices are clamped to it).
  Returns:
    `(index0, index1, weight1)`, each `[N, n_out]`: absolute indices of the two taps and the weight
    of the second (the first has `1 - weight1`).
  """
  length = (stop - start + 1).astype(jnp.int32)[:, None]                            # [N, 1]
  # torch's float32 `in / out`, looked up: XLA turns a division by a constant into a multiplication
  # by its reciprocal, whose rounding error the output index (up to n_out) then amplifies.
  scales = np.arange(limit + 1, dtype=np.float32) / np.float32(n_out)              # [limit + 1]
  scale = jnp.asarray(scales)[jnp.clip(length, 1, limit)]
  dst = jnp.arange(n_out, dtype=jnp.float32)[None, :] + jnp.float32(0.5)
  src = jnp.maximum(scale * dst - jnp.float32(0.5), jnp.float32(0.0))               # [N, n_out]
  i0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), length - 1)
  w1 = jnp.clip(src - i0.astype(jnp.float32), 0.0, 1.0)
  i1 = i0 + (i0 < length - 1).astype(jnp.int32)
  base = start.astype(jnp.int32)[:, None]
  return (jnp.clip(base + i0, 0, limit - 1), jnp.clip(base + i1, 0, limit - 1), w1)


def crop_resize_bilinear(images: jax.Array, boxes: jax.Array, size: int | Sequence[int] = 112
                         ) -> jax.Array:
  """Crops each image to its inclusive box and resizes it bilinearly (SPEC §4.5, §7.10).

  Equals torch `F.interpolate(image[:, y0:y1+1, x0:x1+1], size, mode='bilinear',
  align_corners=False)` (no antialiasing): source `(i + 0.5) * in/out - 0.5`, negative positions
  clamped to 0, taps clamped to the crop border; interpolated along x, then y. Boxes are traced
  data, so one compiled program serves every box; differentiable with respect to `images`.

  Args:
    images: `[N, H, W, C]` float images.
    boxes: `[N, 4]` int `(y_min, y_max, x_min, x_max)`, inclusive, inside the image (not checked:
      they are data; out-of-range taps are clamped to the image border).
    size: output `(h, w)` (or one int for both).
  Returns:
    `[N, h, w, C]` in the dtype of `images`.
  """
  if images.ndim != 4:
    raise ValueError(f'crop_resize_bilinear expects [N, H, W, C] images, got shape {images.shape}')
  if boxes.shape != (images.shape[0], 4):
    raise ValueError(f'boxes must be [{images.shape[0]}, 4] (y_min, y_max, x_min, x_max), '
                     f'got shape {boxes.shape}')
  if not jnp.issubdtype(boxes.dtype, jnp.integer):
    raise ValueError(f'boxes must be integer pixel indices, got dtype {boxes.dtype}')
  out_h, out_w = _size_pair(size, 'size')
  _, in_h, in_w, _ = images.shape
  y0, y1, wy = _linear_taps(boxes[:, 0], boxes[:, 1], out_h, in_h)                 # [N, h]
  x0, x1, wx = _linear_taps(boxes[:, 2], boxes[:, 3], out_w, in_w)                 # [N, w]

  def one(image, y0, y1, wy, x0, x1, wx):
    wx = wx.astype(image.dtype)[None, :, None]
    wy = wy.astype(image.dtype)[:, None, None]
    cols = (jnp.take(image, x0, axis=1, mode='clip') * (1 - wx)
            + jnp.take(image, x1, axis=1, mode='clip') * wx)        # [H, W, C] -> [H, w, C]
    return (jnp.take(cols, y0, axis=0, mode='clip') * (1 - wy)
            + jnp.take(cols, y1, axis=0, mode='clip') * wy)         # [H, w, C] -> [h, w, C]

  return jax.vmap(one)(images, y0, y1, wy, x0, x1, wx)


def _legacy_nearest_index(n_in: int, n_out: int) -> np.ndarray:
  """torch's legacy nearest source indices `min(floor(i * (in / out)), in - 1)`, scale in float32."""
  scale = np.float32(n_in) / np.float32(n_out)
  return np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64), n_in - 1)


def nearest_legacy(images: jax.Array, size: int | Sequence[int]) -> jax.Array:
  """torch `F.interpolate(images, size, mode='nearest')` on `[..., H, W, C]` -> `[..., h, w, C]` (SPEC §7.10).

  Not the half-pixel-centre rule of `jax.image.resize`: for an 8x downsample it keeps pixel
  `(8i, 8j)` of each block.
  """
  if images.ndim < 3:
    raise ValueError(f'nearest_legacy expects [..., H, W, C] images, got shape {images.shape}')
  out_h, out_w = _size_pair(size, 'size')
  in_h, in_w = images.shape[-3:-1]
  rows = jnp.asarray(_legacy_nearest_index(in_h, out_h))
  cols = jnp.asarray(_legacy_nearest_index(in_w, out_w))
  return jnp.take(jnp.take(images, rows, axis=-3), cols, axis=-2)
