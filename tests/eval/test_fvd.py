"""sa_jax.eval.fvd: windows, the reference's resize, the Fréchet distance against closed forms, and
the I3D features against the published output of the TF-hub module on a constant video."""

import numpy as np
import pytest

from sa_jax.eval import fvd

EPS32, EPS64 = 2.0**-24, 2.0**-53            # unit roundoffs
# I3D in float32: a conv sum of K terms errs by ~sqrt(K) eps of its magnitudes (at most 3 x 3 x 3 x 832
# = 22464 terms: 9e-6), along the 11 conv layers of the deepest path: ~1e-4 of features of size ~1.
FEATURE_ATOL = 11 * np.sqrt(3 * 3 * 3 * 832) * EPS32
# TF's `frechet_video_distance.py` on 16 all-zero videos of 15 frames (each frame -1 after
# preprocessing, whatever the resize): the first and last three of the 400 features, as printed
# by github.com/zhanganny/cal_FVD `my_suc.py` (TF-hub deepmind/i3d-kinetics-400/1).
PUBLISHED_ZERO_VIDEO_FEATURES = ([0.7422105, 2.829727, 0.39993525], [-0.38092658, 0.65539014, -1.4021297])


def _clip(seed, side=32, frames=fvd.WINDOW):
  """A square moving over a colour gradient: `[frames, side, side, 3]` uint8."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[:side, :side] / side
  background = 255 * (rng.uniform(0.2, 0.8, 3) * y[..., None] + rng.uniform(0, 0.2, 3) * x[..., None])
  video = np.repeat(background[None], frames, axis=0)
  step = rng.integers(1, 3, 2)
  for t in range(frames):
    top, left = (t * step) % (side - 8)
    video[t, top:top + 8, left:left + 8] = rng.uniform(0, 255, 3)
  return video.astype(np.uint8)


def _noisy(videos, level):
  noise = np.random.default_rng(7).standard_normal(videos.shape)           # one pattern, scaled
  return np.clip(videos + level * noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope='module')
def features():
  """I3D features of 2 real clips, the same slightly noisy, heavily noisy, and the first again.

  7 clips in batches of 4: one compile, two calls, the last padded.
  """
  real = np.stack([_clip(0), _clip(1)])
  videos = np.concatenate([real, _noisy(real, 8), _noisy(real, 64), real[:1]])
  out = fvd.make_i3d(batch_size=4)(videos)
  return {'real': out[:2], 'slight': out[2:4], 'heavy': out[4:6], 'again': out[6:], 'all': out}


# ---------------------------------------------------------------- windows and preprocessing

def test_clip_windows():
  video = np.arange(35 * 4 * 5 * 3, dtype=np.int64).reshape(35, 4, 5, 3).astype(np.uint8)
  windows = fvd.clip_windows(video)
  assert windows.shape == (2, 16, 4, 5, 3)
  np.testing.assert_array_equal(windows[1], video[16:32])
  assert fvd.clip_windows(video, length=5).shape == (7, 5, 4, 5, 3)
  with pytest.raises(ValueError, match='video has 15 frames, expected at least 16'):
    fvd.clip_windows(video[:15])
  with pytest.raises(ValueError, match=r'\(35, 4, 5\), expected \[F, H, W, 3\]'):
    fvd.clip_windows(video[..., 0])


def test_network_calls_never_run_more_than_twice_the_clips():
  assert fvd._batches(1, 8) == [1] and fvd._batches(0, 8) == []
  assert fvd._batches(7, 4) == [4, 4] and fvd._batches(9, 8) == [8, 1] and fvd._batches(11, 8) == [8, 4]
  assert fvd._batches(5, 8) == [8] and fvd._batches(3, 2) == [2, 1]


def test_resize_is_tf1_bilinear():
  # TF1 resize_bilinear (no half-pixel centres): output i samples input i * in / out, edge-clamped.
  np.testing.assert_array_equal(fvd._resize_matrix(2, 4), [[1, 0], [.5, .5], [0, 1], [0, 1]])
  np.testing.assert_array_equal(fvd._resize_matrix(4, 2), [[1, 0, 0, 0], [0, 0, 1, 0]])   # no antialias
  np.testing.assert_allclose(fvd._resize_matrix(3, 224).sum(axis=1), 1, rtol=EPS32)
  ramp = np.broadcast_to(np.array([0, 100, 200, 250], np.uint8)[None, None, None, :, None], (1, 1, 3, 4, 3))
  out = np.asarray(fvd.preprocess(ramp))
  assert out.shape == (1, 1, 224, 224, 3)
  # Columns 0, 56, 112 and 168 land on pixels 0..3; column 1 on 1/56; past 168 the edge holds.
  levels = 2 * np.array([0, 100 / 56, 100, 200, 250, 250]) / 255 - 1
  np.testing.assert_allclose(out[0, 0, 0, [0, 1, 56, 112, 168, 223], 0], levels, atol=4 * EPS32)
  np.testing.assert_allclose(out[0, 0, 2, :, 0], out[0, 0, 0, :, 0], atol=4 * EPS32)   # constant along H


# ---------------------------------------------------------------- Fréchet distance

def _with_moments(mean, factor, rng):
  """`2 D` points whose mean is `mean` and sample covariance `factor factor^T` exactly (up to rounding)."""
  count = 2 * len(mean)
  spread = np.sqrt((count - 1) / 2) * factor.T                    # rows: mean +- each column of factor
  return np.concatenate([mean + spread, mean - spread])[rng.permutation(count)]


def test_frechet_distance_of_a_set_with_itself():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((64, 8)) @ rng.standard_normal((8, 8))
  # sqrtm of the well-conditioned S S is exact to ~cond(S) eps64 relative, and so is 2 tr(S) - 2 tr(sqrtm).
  trace = np.trace(np.cov(x, rowvar=False))
  assert abs(fvd.frechet_distance(x, x)) < 1e6 * EPS64 * trace


@pytest.mark.parametrize('rotate', [False, True])
def test_frechet_distance_of_diagonal_gaussians(rotate):
  rng = np.random.default_rng(1)
  dims = 6
  mean_a, mean_b = rng.standard_normal(dims), rng.standard_normal(dims)
  var_a, var_b = rng.uniform(0.1, 4, dims), rng.uniform(0.1, 4, dims)
  # Rotating both sets by one orthogonal matrix keeps the distance and makes the covariances full.
  basis = np.linalg.qr(rng.standard_normal((dims, dims)))[0] if rotate else np.eye(dims)
  a = _with_moments(mean_a, np.diag(np.sqrt(var_a)), rng) @ basis.T
  b = _with_moments(mean_b, np.diag(np.sqrt(var_b)), rng) @ basis.T
  want = np.sum((mean_a - mean_b)**2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b))**2)
  assert fvd.frechet_distance(a, b) == pytest.approx(want, rel=1e-9)


def test_frechet_distance_of_general_gaussians():
  rng = np.random.default_rng(2)
  dims = 5
  factor_a, factor_b = rng.standard_normal((dims, dims)), rng.standard_normal((dims, dims))
  cov_a, cov_b = factor_a @ factor_a.T, factor_b @ factor_b.T
  a = _with_moments(np.zeros(dims), factor_a, rng)
  b = _with_moments(np.ones(dims), factor_b, rng)
  # tr sqrtm(A B) = tr sqrtm(A^1/2 B A^1/2), a symmetric PSD matrix: the square roots of its eigenvalues.
  values, vectors = np.linalg.eigh(cov_a)
  root_a = vectors @ np.diag(np.sqrt(values)) @ vectors.T
  cross = np.sum(np.sqrt(np.linalg.eigvalsh(root_a @ cov_b @ root_a)))
  want = dims + np.trace(cov_a) + np.trace(cov_b) - 2 * cross
  assert fvd.frechet_distance(a, b) == pytest.approx(want, rel=1e-9)


def test_frechet_distance_rejects_bad_sets():
  with pytest.raises(ValueError, match=r'features_b is \(1, 3\), expected \[N, D\] with N >= 2'):
    fvd.frechet_distance(np.zeros((4, 3)), np.zeros((1, 3)))
  with pytest.raises(ValueError, match='3 and 4 dimensions'):
    fvd.frechet_distance(np.zeros((4, 3)), np.zeros((4, 4)))


# ---------------------------------------------------------------- I3D and FVD

def test_i3d_features(features):
  everything = features['all']
  assert everything.shape == (7, fvd.FEATURES) and everything.dtype == np.float32
  assert np.all(np.isfinite(everything))
  # The same clip at another batch position, in another (padded) batch.
  np.testing.assert_allclose(features['again'][0], features['real'][0], atol=FEATURE_ATOL)
  assert np.abs(features['real'][0] - features['real'][1]).max() > 0.1     # distinct clips differ


def test_fvd_grows_with_noise(features):
  real = features['real']
  scale = np.trace(np.cov(real, rowvar=False))
  # S has rank 1: each of the D - 1 zero eigenvalues of S S comes out of sqrtm as up to
  # sqrt(eps64) |S| instead of 0, so 2 D sqrt(eps64) tr(S) bounds the error of FVD(real, real).
  itself = 2 * fvd.FEATURES * np.sqrt(EPS64) * scale
  assert abs(fvd.frechet_distance(real, real)) < itself
  assert abs(fvd.frechet_distance(real, np.concatenate([features['again'], real[1:]]))) < 1e2 * itself
  slight, heavy = (fvd.frechet_distance(real, features[k]) for k in ('slight', 'heavy'))
  assert 1e2 * itself < slight < heavy, (itself, slight, heavy)


def test_i3d_matches_the_published_tf_hub_features():
  # 15 frames as the reference's example: a second compile, batches of 2 (the constant 255 video
  # fills the batch; its features are not published).
  videos = np.stack([np.zeros((15, 8, 8, 3), np.uint8), np.full((15, 8, 8, 3), 255, np.uint8)])
  got = fvd.make_i3d(batch_size=2)(videos)[0]
  first, last = PUBLISHED_ZERO_VIDEO_FEATURES
  np.testing.assert_allclose(got[:3], first, atol=FEATURE_ATOL)
  np.testing.assert_allclose(got[-3:], last, atol=FEATURE_ATOL)


def test_i3d_rejects_bad_videos():
  i3d = fvd.make_i3d(batch_size=1)
  with pytest.raises(ValueError, match=r'float64 \(1, 16, 8, 8, 3\), expected uint8 \[N, T, H, W, 3\]'):
    i3d(np.zeros((1, 16, 8, 8, 3)))
  with pytest.raises(ValueError, match='8 frames, expected at least 9'):
    i3d(np.zeros((1, 8, 8, 8, 3), np.uint8))
  with pytest.raises(ValueError, match='batch_size is 0'):
    fvd.make_i3d(batch_size=0)
