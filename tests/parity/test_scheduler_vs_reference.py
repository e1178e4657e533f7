"""Euler schedule, step arithmetic and the training sigma law against the reference scheduler."""

import re

import numpy as np
import pytest

from configs import train as train_configs
from sa_jax import diffusion as schedule
from tests.parity import bounds, reference

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
    # Both tables are float64 values rounded once to float32: at most one ulp apart (<= EPS32 rel).
    np.testing.assert_allclose(sigma, case.io[f'sigmas_{n}'], rtol=bounds.EPS32, atol=0,
                               err_msg=f'sigmas_{n}')
    # 0.25 ln(sigma) in float32: two log implementations of LIBM_ULPS ulp each (0.25 is exact),
    # plus one ulp of sigma (relative EPS32) carried through 0.25 ln: 0.25 EPS32 absolute.
    np.testing.assert_allclose(schedule.timesteps(sigma), case.io[f'timesteps_{n}'],
                               rtol=2 * bounds.LIBM_ULPS * bounds.EPS32, atol=0.25 * bounds.EPS32,
                               err_msg=f'timesteps_{n}')
    if f'init_noise_sigma_{n}' in case.io:
      # sqrt(s*s + 1) in float32, in u = EPS32/2: s*s (u), +1 (2u), the root (half of that plus one
      # ulp: 3u) each side, 6u = 3 EPS32 for two.
      np.testing.assert_allclose(schedule.init_noise_sigma(config), case.io[f'init_noise_sigma_{n}'][0],
                                 rtol=3 * bounds.EPS32)
  assert schedule.sigmas(counts[0], config)[0] == np.float32(config.sigma_max)


@pytest.mark.parametrize('case', CASES, ids=str)
def test_euler_loop(case):
  """Each step from the recorded sample before it (so rounding does not accumulate)."""
  io = case.io
  outputs = io['loop_model_outputs']
  sigma = schedule.sigmas(len(outputs), _config(case))
  for i, v in enumerate(outputs):
    x = io['loop_initial_sample'] if i == 0 else io['loop_prev_samples'][i - 1]
    reference.assert_close(schedule.scale_model_input(x, sigma[i]), io['loop_scaled_inputs'][i], 0.0,
                           bounds.scale_model_input_rtol(), name=f'scaled input {i}')
    x0 = schedule.predict_x0(v, x, sigma[i])
    x0_bound = bounds.predict_x0_bound(v, x, sigma[i])
    reference.assert_close(x0, io['loop_pred_original'][i], x0_bound, name=f'x0 {i}')
    # x - x0 cancels at sigma ~ 700: the bound scales with the operands |x|, |x0| and
    # |sigma' - sigma| / sigma, and takes our x0's own rounding through the step.
    reference.assert_close(schedule.euler_step(x, x0, sigma[i], sigma[i + 1]), io['loop_prev_samples'][i],
                           bounds.euler_step_bound(x, x0, sigma[i], sigma[i + 1], x0_bound),
                           name=f'step {i}')


@pytest.mark.parametrize('case', CASES, ids=str)
def test_training_sigmas(case):
  u = case.io['train_sigma_u']
  # Elementwise: float32 rounding of tan's argument near pi/2 (u -> 0) dominates (bounds.py).
  law = train_configs.get_config().loss                 # the release settings' sigma law
  reference.assert_close(schedule.training_sigmas(u, law.noise_d_low, law.noise_d_high), case.io['train_sigma'], 0.0,
                         bounds.training_sigma_rtol(u), name='training sigmas')


def test_config_refuses_what_is_not_implemented():
  with pytest.raises(ValueError, match='prediction_type'):
    schedule.ScheduleConfig.from_dict({'prediction_type': 'epsilon'})
