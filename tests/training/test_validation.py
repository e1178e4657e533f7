"""Training's validation scores: the validation video against the case's ground truth, as sa-eval."""

import numpy as np
import pytest

from sa_jax.eval import metrics
from sa_jax.prep import frames as frame_io
from sa_jax.training import trainer


@pytest.fixture
def case(tmp_path):
  truth = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), np.uint8)
  (tmp_path / 'images').mkdir()
  for i, frame in enumerate(truth):
    frame_io.save_rgb(tmp_path / 'images' / f'frame_{i}.png', frame)
  return tmp_path, truth


def test_scores_against_the_first_frames_of_the_ground_truth(case):
  folder, truth = case
  scores = trainer.validation_scores(truth[:3], folder)
  assert scores['validation/l1'] == 0 and scores['validation/psnr'] == np.inf
  assert scores['validation/ssim'] == pytest.approx(1, abs=1e-6)
  noisy = np.clip(truth[:3].astype(np.int32) + 9, 0, 255).astype(np.uint8)
  scores = trainer.validation_scores(noisy, folder)
  assert set(scores) == {f'validation/{k}' for m in metrics.FRAME_METRICS.values() for k in m}
  assert scores['validation/psnr'] == pytest.approx(float(np.mean(metrics.psnr(noisy, truth[:3]))), rel=1e-6)


def test_video_at_the_training_size_is_scored_at_the_ground_truths(case):
  folder, truth = case
  half = truth[:2, ::2, ::2]                                      # [2, 32, 32, 3]
  scores = trainer.validation_scores(half, folder)
  assert 10 < scores['validation/psnr'] < np.inf


def test_no_scores_without_matching_ground_truth(case, tmp_path_factory):
  folder, truth = case
  assert trainer.validation_scores(np.concatenate([truth, truth[:1]]), folder) == {}   # 5 frames, 4 truths
  assert trainer.validation_scores(truth[:, :32], folder) == {}                          # another aspect
  assert trainer.validation_scores(truth, tmp_path_factory.mktemp('no_truth')) == {}
