"""Tests of sa_jax/nn/resize.py against PyTorch (a test dependency): SPEC §4.1, §4.5, §7.10."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sa_jax.nn import resize


def _torch_clip_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
  """The SPEC §4.1 recipe in torch ops on NCHW: Gaussian blur x then y (reflect), bicubic align_corners."""
  c = x.shape[1]
  out = x
  for axis, n_out in ((3, size[1]), (2, size[0])):
    sigma = torch.tensor(max((x.shape[axis] / n_out - 1.0) / 2.0, 0.001), dtype=torch.float32)
    k = int(max(4.0 * float(sigma), 3.0))
    k += k % 2 == 0
    t = torch.arange(k, dtype=torch.float32) - k // 2
    g = torch.exp(-t.pow(2.0) / (2 * sigma.pow(2.0)))
    g = g / g.sum()
    front, rear = (k - 1) // 2, k - 1 - (k - 1) // 2
    if axis == 3:
      out = F.conv2d(F.pad(out, (front, rear, 0, 0), mode='reflect'), g.view(1, 1, 1, k).repeat(c, 1, 1, 1),
                     groups=c)
    else:
      out = F.conv2d(F.pad(out, (0, 0, front, rear), mode='reflect'), g.view(1, 1, k, 1).repeat(c, 1, 1, 1),
                     groups=c)
  return F.interpolate(out, size=size, mode='bicubic', align_corners=True)


@pytest.mark.parametrize('in_hw,out_hw', [((800, 256), (224, 224)),    # the golden CLIP input size
                                          ((1024, 576), (224, 224)),   # release portrait resolution
                                          ((100, 150), (224, 224)),    # upsampling (sigma 0.001)
                                          ((224, 224), (224, 224)),    # identity
                                          ((97, 61), (40, 33))])       # odd sizes, non-square output
def test_clip_resize_matches_torch(in_hw, out_hw):
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (2, 3) + in_hw).astype(np.float32)
  expected = _torch_clip_resize(torch.from_numpy(x), out_hw).numpy().transpose(0, 2, 3, 1)
  actual = jax.jit(resize.clip_resize, static_argnums=1)(x.transpose(0, 2, 3, 1), out_hw)
  assert actual.shape == (2,) + out_hw + (3,)
  np.testing.assert_allclose(actual, expected, atol=3e-6, rtol=0)


def test_clip_resize_identity_size_is_exact():
  x = np.random.default_rng(1).uniform(-1, 1, (1, 224, 224, 3)).astype(np.float32)
  np.testing.assert_array_equal(resize.clip_resize(x, 224), x)


def test_clip_resize_rejects_bad_input():
  with pytest.raises(ValueError, match='reflect padding'):
    resize.clip_resize(jnp.zeros((1, 1, 50, 3)), (224, 224))       # a 1-pixel axis cannot be reflected
  with pytest.raises(ValueError, match=r'\[N, H, W, C\]'):
    resize.clip_resize(jnp.zeros((3, 300, 300)))


def _torch_crops(x: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
  """NCHW images, inclusive boxes -> NHWC crops resized by torch (bilinear, align_corners=False)."""
  out = [F.interpolate(torch.from_numpy(x[i:i + 1, :, y0:y1 + 1, x0:x1 + 1]), (size, size),
                       mode='bilinear', align_corners=False)[0]
         for i, (y0, y1, x0, x1) in enumerate(boxes)]
  return torch.stack(out).numpy().transpose(0, 2, 3, 1)


BOX_SETS = [
    [[0, 299, 0, 199], [10, 50, 20, 40], [100, 250, 5, 190]],       # whole image, small, large
    [[5, 5, 7, 7], [0, 111, 0, 111], [1, 113, 2, 112]],             # one pixel, exactly 112, 113
    [[290, 299, 150, 199], [37, 200, 60, 61], [0, 1, 198, 199]],    # at the far border, thin
]


@pytest.fixture(scope='module')
def crop_setup():
  traces = []

  def crop(images, boxes):
    traces.append(1)
    return resize.crop_resize_bilinear(images, boxes, 112)

  x = np.random.default_rng(0).uniform(-1, 1, (3, 3, 300, 200)).astype(np.float32)   # [N, C, H, W]
  return jax.jit(crop), traces, x


def test_crop_resize_matches_torch_with_one_compile(crop_setup):
  crop, traces, x = crop_setup
  images = jnp.asarray(x.transpose(0, 2, 3, 1))
  for boxes in BOX_SETS:
    boxes = np.asarray(boxes)
    actual = crop(images, jnp.asarray(boxes, jnp.int32))
    # Each sample's source coordinate ((i + 0.5) * scale - 0.5, up to the image's size) is computed
    # in float32 by both, in a few roundings of 2^-24 relative each (XLA may fuse a multiply-add,
    # torch does not): ~3 * 2^-24 * size pixels apart, which moves an interpolated value by that
    # times the largest step between neighbouring pixels (the input's range, 2).
    atol = 3 * 2.0 ** -24 * max(x.shape[2:]) * float(np.ptp(x))
    np.testing.assert_allclose(actual, _torch_crops(x, boxes, 112), atol=atol, rtol=0)
  assert len(traces) == 1, 'boxes must be data: one compiled program for every box'


def test_crop_resize_gradient_matches_torch(crop_setup):
  _, _, x = crop_setup
  boxes = np.asarray(BOX_SETS[0])
  w = np.random.default_rng(2).standard_normal((3, 112, 112, 3)).astype(np.float32)
  grad = jax.grad(lambda im: jnp.sum(resize.crop_resize_bilinear(im, jnp.asarray(boxes), 112) * w))(
      jnp.asarray(x.transpose(0, 2, 3, 1)))
  xt = torch.from_numpy(x).requires_grad_(True)
  out = [F.interpolate(xt[i:i + 1, :, y0:y1 + 1, x0:x1 + 1], (112, 112), mode='bilinear',
                       align_corners=False)[0] for i, (y0, y1, x0, x1) in enumerate(boxes)]
  (torch.stack(out) * torch.from_numpy(w.transpose(0, 3, 1, 2))).sum().backward()
  np.testing.assert_allclose(grad, xt.grad.numpy().transpose(0, 2, 3, 1), atol=1e-5, rtol=0)


def test_crop_resize_rectangular_output_and_checks():
  images = jnp.ones((2, 20, 30, 1))
  boxes = jnp.asarray([[0, 9, 0, 9], [5, 19, 3, 29]])
  assert resize.crop_resize_bilinear(images, boxes, (8, 16)).shape == (2, 8, 16, 1)
  with pytest.raises(ValueError, match='boxes must be'):
    resize.crop_resize_bilinear(images, boxes[:1], 8)
  with pytest.raises(ValueError, match='integer'):
    resize.crop_resize_bilinear(images, boxes.astype(jnp.float32), 8)
