"""sa_jax.eval.lpips: zero, symmetry, growth with noise, and both nets against a float64 PyTorch
re-implementation of LPIPS from the same weights (the published example images of
richzhang/PerceptualSimilarity are not available offline, so no published value is checked)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sa_jax.eval import lpips, weights

FRAMES, SIDE = 4, 64
EPS32 = 2.0**-24                      # float32 unit roundoff
# The widest conv sum: VGG16's 3 x 3 x 512 (AlexNet's 3 x 3 x 384). A float32 sum of K terms errs by
# about sqrt(K) eps of the sum of their magnitudes (random-walk rounding): 68 x 6e-8 = 4e-6 here.
FEATURE_RTOL = np.sqrt(3 * 3 * 512) * EPS32
# Against float64, every one of the <= 13 conv layers adds that error to the features; a distance of
# frames that differ is not a cancellation, so it keeps their relative error: 13 x 4e-6 = 5e-5.
REFERENCE_RTOL = 13 * FEATURE_RTOL
# Evaluating one network pass as images_0 and as images_1 may round differently (separate fusions):
# by FEATURE_RTOL per feature, so symmetry holds to that relative error.
SYMMETRY_RTOL = FEATURE_RTOL


@pytest.fixture(scope='module')
def alexnet():
  return lpips.make_lpips('alexnet')


def _frames(seed=0):
  """Smooth random frames `[FRAMES, SIDE, SIDE, 3]`: upsampled 8 x 8 colour noise, as in natural images."""
  coarse = np.random.default_rng(seed).integers(0, 256, (FRAMES, 8, 8, 3)).astype(np.float64)
  return np.kron(coarse, np.ones((1, SIDE // 8, SIDE // 8, 1))).astype(np.uint8)


def _noisy(frames, level, seed=1):
  noise = np.random.default_rng(seed).standard_normal(frames.shape)     # one pattern, scaled
  return np.clip(frames + level * noise, 0, 255).astype(np.uint8)


def test_identical_frames_are_zero(alexnet):
  a = _frames()
  got = np.asarray(alexnet(a, a))
  assert got.shape == (FRAMES,)
  # The two passes of one frame may round differently, by about FEATURE_RTOL of a unit-normalised
  # feature vector: a squared difference of about FEATURE_RTOL^2 per position, which each layer's
  # linear weights scale by at most their largest (~1e-10 in all; a real difference gives ~0.1).
  params = weights.load_lpips_params('alexnet')
  max_weight = sum(float(params[f'NetLinLayer_{i}']['Conv_0']['kernel'].max()) for i in range(5))
  np.testing.assert_array_less(np.abs(got), max_weight * FEATURE_RTOL**2)


def test_symmetric_and_growing_with_noise(alexnet):
  a = _frames()
  levels = [np.asarray(alexnet(a, _noisy(a, level))) for level in (8, 32, 96)]
  assert all(np.all(low < high) for low, high in zip(levels, levels[1:])), levels
  b = _noisy(a, 32)
  np.testing.assert_allclose(alexnet(b, a), alexnet(a, b), rtol=SYMMETRY_RTOL)


def test_leading_axes_and_bad_inputs(alexnet):
  a, b = _frames(), _noisy(_frames(), 32)
  clips = alexnet(a.reshape(2, 2, SIDE, SIDE, 3), b.reshape(2, 2, SIDE, SIDE, 3))
  assert clips.shape == (2, 2)
  np.testing.assert_allclose(np.asarray(clips).reshape(-1), alexnet(a, b), rtol=SYMMETRY_RTOL)
  with pytest.raises(ValueError, match=r'\(4, 64, 64, 3\) and \(3, 64, 64, 3\)'):
    alexnet(a, b[:3])
  with pytest.raises(ValueError, match='at least 31'):
    alexnet(a[:, :30], b[:, :30])
  with pytest.raises(ValueError, match="'squeezenet'"):
    lpips.make_lpips('squeezenet')


# ---------------------------------------------------------------- float64 PyTorch LPIPS

# torchvision's `alexnet().features` up to relu5 and `vgg16().features` up to relu5_3, as the
# original LPIPS slices them: (stride, padding, max-pool before the conv, its relu is a tap).
_ALEXNET = [(4, 2, False, True), (1, 2, True, True), (1, 1, True, True), (1, 1, False, True),
            (1, 1, False, True)]
_VGG16 = [(1, 1, pool, tap) for pool, tap in
          [(False, False), (False, True), (True, False), (False, True), (True, False), (False, False),
           (False, True), (True, False), (False, False), (False, True), (True, False), (False, False),
           (False, True)]]


def _torch_lpips(params, net, a, b):
  """LPIPS v0.1 of uint8 `[N, H, W, 3]` frames in float64 NCHW PyTorch -> `[N]`."""
  backbone, layers, pool = ((params['AlexNet_0'], _ALEXNET, (3, 2)) if net == 'alexnet' else
                            (params['VGG16_0'], _VGG16, (2, 2)))
  tensor = lambda x: torch.from_numpy(np.asarray(x, np.float64))
  shift = torch.tensor([-.030, -.088, -.188], dtype=torch.float64).view(1, 3, 1, 1)
  scale = torch.tensor([.458, .448, .450], dtype=torch.float64).view(1, 3, 1, 1)

  def taps(frames):
    x = (tensor(frames).permute(0, 3, 1, 2) / 127.5 - 1 - shift) / scale      # [N, H, W, 3] -> [N, 3, H, W]
    out = []
    for i, (stride, padding, pool_first, tap) in enumerate(layers):
      if pool_first:
        x = F.max_pool2d(x, *pool)
      conv = backbone[f'Conv_{i}']
      x = F.relu(F.conv2d(x, tensor(conv['kernel']).permute(3, 2, 0, 1), tensor(conv['bias']),
                          stride=stride, padding=padding))                   # HWIO -> OIHW
      if tap:
        out.append(x / (torch.sqrt(torch.sum(x**2, dim=1, keepdim=True)) + 1e-10))
    return out

  total = 0
  for i, (x, y) in enumerate(zip(taps(a), taps(b))):
    weight = tensor(params[f'NetLinLayer_{i}']['Conv_0']['kernel']).permute(3, 2, 0, 1)   # [1, 1, C, 1] -> [1, C, 1, 1]
    total = total + F.conv2d((x - y)**2, weight).mean(dim=(1, 2, 3))
  return total.numpy()


@pytest.mark.parametrize('net', ['alexnet', 'vgg16'])
def test_matches_a_float64_torch_lpips(net, alexnet):
  distance = alexnet if net == 'alexnet' else lpips.make_lpips(net)
  rng = np.random.default_rng(3)
  a = rng.integers(0, 256, (FRAMES, SIDE, SIDE, 3), dtype=np.uint8)
  b = _noisy(_frames(seed=4), 40)
  want = _torch_lpips(weights.load_lpips_params(net), net, a, b)
  assert np.all(want > 0.05), want                      # a pair far from identical
  np.testing.assert_allclose(distance(a, b), want, rtol=REFERENCE_RTOL)
