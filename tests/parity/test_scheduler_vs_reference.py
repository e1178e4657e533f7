"""Euler schedule, step arithmetic and the training sigma law against the reference scheduler."""

import re

import numpy as np
import pytest

from sa_jax.sampling import schedule
from tests.parity import reference

pytestmark = pytest.mark.parity

CASES = reference.cases('scheduler')


def _config(case):
  return schedule.ScheduleConfig.from_file(case.path / 'scheduler' / 'scheduler_config.json')


@pytest.mark.parametrize('case', CASES, ids=str)
def test_sigmas_and_timesteps(case):
  config = _config(case)
  counts = sorted(int(m.group(1)) for k in case.io if (m := re.fullmatch(r'sigmas_(\d+)', k)))
  assert counts, f'{case} records no sigma table'
  for n in counts:
    sigma = schedule.sigmas(n, config)
    np.testing.assert_allclose(sigma, case.io[f'sigmas_{n}'], rtol=2e-7, atol=0, err_msg=f'sigmas_{n}')
    np.testing.assert_allclose(schedule.timesteps(sigma), case.io[f'timesteps_{n}'], rtol=2e-7,
                               atol=1e-7, err_msg=f'timesteps_{n}')
    if f'init_noise_sigma_{n}' in case.io:
      np.testing.assert_allclose(schedule.init_noise_sigma(config), case.io[f'init_noise_sigma_{n}'][0],
                                 rtol=1e-7)
  assert schedule.sigmas(counts[0], config)[0] == np.float32(config.sigma_max)


@pytest.mark.parametrize('case', CASES, ids=str)
def test_euler_loop(case):
  """Each step from the recorded sample before it (so rounding does not accumulate)."""
  io = case.io
  outputs = io['loop_model_outputs']
  sigma = schedule.sigmas(len(outputs), _config(case))
  for i, v in enumerate(outputs):
    x = io['loop_initial_sample'] if i == 0 else io['loop_prev_samples'][i - 1]
    reference.assert_close(schedule.scale_model_input(x, sigma[i]), io['loop_scaled_inputs'][i], 1e-6,
                           1e-6, name=f'scaled input {i}')
    x0 = schedule.predict_x0(v, x, sigma[i])
    reference.assert_close(x0, io['loop_pred_original'][i], 1e-6, 1e-6, name=f'x0 {i}')
    expected = io['loop_prev_samples'][i]
    # x - x0 cancels at sigma ~ 700: allow a few float32 ulps of the largest value.
    reference.assert_close(schedule.euler_step(x, x0, sigma[i], sigma[i + 1]), expected,
                           2e-6 * np.abs(expected).max(), name=f'step {i}')


@pytest.mark.parametrize('case', CASES, ids=str)
def test_training_sigmas(case):
  got = schedule.training_sigmas(case.io['train_sigma_u'])
  np.testing.assert_allclose(got, case.io['train_sigma'], rtol=1e-5)


def test_config_refuses_what_is_not_implemented():
  with pytest.raises(ValueError, match='prediction_type'):
    schedule.ScheduleConfig.from_dict({'prediction_type': 'epsilon'})
