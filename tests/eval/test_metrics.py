"""sa_jax.eval.metrics on inputs with known answers, DisCo's overflow, and SSIM against scikit-image."""

import cv2
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from sa_jax.eval import metrics

FRAMES, HEIGHT, WIDTH = 3, 40, 48
# float32 metrics of at most 1e5 values: a mean's relative rounding error stays below ~1e-6, so
# 1e-4 dB bounds PSNR (10 log10(1 + 1e-5) = 4e-5 dB) and 1e-6 bounds L1 of [0, 1] pixels.
PSNR_ATOL_DB, L1_ATOL = 1e-4, 1e-6
# SSIM in float32 vs scikit-image's float64: E[x^2] - E[x]^2 loses ~eps * x_max^2 (6e-8 * 128^2 = 1e-3
# for the centred 0..255 grey, 6e-8 for [0, 1]); divided by the smallest denominator term C2
# ((0.03 * 255)^2 = 58.5, resp. 9e-4) it bounds each pixel's index error by ~2e-5, resp. ~7e-5.
SSIM_DISCO_ATOL, SSIM_ATOL = 1e-4, 3e-4


def _pair(seed=0, spread=30):
  rng = np.random.default_rng(seed)
  a = rng.integers(0, 256, (2, FRAMES, HEIGHT, WIDTH, 3), dtype=np.uint8)
  b = np.clip(a.astype(np.int16) + rng.integers(-spread, spread + 1, a.shape), 0, 255).astype(np.uint8)
  return a, b


def test_identical_frames():
  a, _ = _pair()
  np.testing.assert_array_equal(metrics.l1(a, a), 0)
  np.testing.assert_array_equal(metrics.l1_disco(a, a), 0)
  assert np.isposinf(metrics.psnr(a, a)).all()
  np.testing.assert_array_equal(metrics.psnr_disco(a, a), metrics.DISCO_PSNR_OF_ZERO_ERROR)
  np.testing.assert_allclose(metrics.ssim(a, a), 1, atol=SSIM_ATOL)
  np.testing.assert_allclose(metrics.ssim_disco(a, a), 1, atol=SSIM_DISCO_ATOL)


def test_a_known_error_gives_its_psnr_and_l1():
  rng = np.random.default_rng(1)
  a = rng.integers(0, 200, (FRAMES, HEIGHT, WIDTH, 3), dtype=np.uint8)
  b = a + np.uint8(5)                                         # every pixel off by 5 of 255
  np.testing.assert_allclose(metrics.psnr(a, b), 20 * np.log10(255 / 5), atol=PSNR_ATOL_DB)
  np.testing.assert_allclose(metrics.l1(a, b), 5 / 255, atol=L1_ATOL)
  np.testing.assert_allclose(metrics.l1_disco(a, b), 5 / (HEIGHT * WIDTH), rtol=1e-6)
  assert metrics.psnr(a, b).shape == (FRAMES,)


def test_disco_psnr_reproduces_the_uint8_overflow():
  zeros, sixteens = np.zeros((1, 8, 8, 3), np.uint8), np.full((1, 8, 8, 3), 16, np.uint8)
  # (0 - 16) wraps to 240, 240^2 = 57600 wraps to 0: DisCo reports "no error" for a 16-level one.
  np.testing.assert_array_equal(metrics.psnr_disco(zeros, sixteens), metrics.DISCO_PSNR_OF_ZERO_ERROR)
  np.testing.assert_allclose(metrics.psnr(zeros, sixteens), 20 * np.log10(255 / 16), atol=PSNR_ATOL_DB)
  a, b = _pair()
  for clip in range(2):
    for frame in range(FRAMES):
      original, compressed = a[clip, frame], b[clip, frame]
      disco = 20 * np.log10(255 / np.sqrt(np.mean((original - compressed) ** 2)))   # psnr_eval's expression
      assert metrics.psnr_disco(original, compressed) == pytest.approx(disco, abs=PSNR_ATOL_DB)
  assert np.abs(metrics.psnr_disco(a, b) - metrics.psnr(a, b)).min() > 1, 'the two conventions differ'


def test_ssim_matches_scikit_image():
  a, b = _pair(seed=2)
  got, got_disco = np.asarray(metrics.ssim(a, b)), np.asarray(metrics.ssim_disco(a, b))
  assert got.shape == got_disco.shape == (2, FRAMES)
  for clip in range(2):
    for frame in range(FRAMES):
      x, y = a[clip, frame], b[clip, frame]
      # DisCo: cv2.imread (BGR) -> COLOR_BGR2GRAY, i.e. RGB2GRAY of our RGB frames; scikit-image defaults.
      disco = structural_similarity(cv2.cvtColor(x, cv2.COLOR_RGB2GRAY), cv2.cvtColor(y, cv2.COLOR_RGB2GRAY))
      assert got_disco[clip, frame] == pytest.approx(disco, abs=SSIM_DISCO_ATOL)
      gaussian = structural_similarity(x / 255, y / 255, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False, data_range=1.0, channel_axis=-1)
      assert got[clip, frame] == pytest.approx(gaussian, abs=SSIM_ATOL)
