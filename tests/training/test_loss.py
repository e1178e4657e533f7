"""The training loss's draws (its maths is tested against the original in tests/parity)."""

import jax
import numpy as np

from configs import train as train_configs
from sa_jax import diffusion
from sa_jax.training import loss as loss_lib


def _config(**overrides):
  section = train_configs.get_config().loss
  section.update(overrides)
  return loss_lib.LossConfig.from_config(section)


def test_the_sigma_law_is_the_originals_by_default_and_noisier_at_smaller_noise_resolutions():
  """`draw` takes its sigmas from the config's law: at the release settings the parity-tested one,
  with smaller noise resolutions a larger sigma for every uniform strictly inside (0, 1) (the two
  ends are sigma_max and sigma_min for any law)."""
  key = jax.random.key(0)
  batch = 64
  release = loss_lib.draw(key, (batch, 2, 4, 4, 4), _config()).sigma
  u = (np.arange(batch) + np.asarray(jax.random.uniform(jax.random.split(key, 3)[0], (batch,)))) / batch
  np.testing.assert_array_equal(release, diffusion.training_sigmas(u.astype(np.float32), 32, 64))
  noisier = loss_lib.draw(key, (batch, 2, 4, 4, 4), _config(noise_d_low=8.0, noise_d_high=16.0)).sigma
  assert np.all(np.asarray(noisier) > np.asarray(release))
