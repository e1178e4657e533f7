"""PoseNet parity with StableAnimator `PoseNet`, for every 'pose_net' case; weight round trip."""

import logging

import jax
import numpy as np
import pytest

from convert import pose_net as convert_pose_net
from convert import state_dict as sd_lib
from sa_jax.models import pose_net
from tests.parity import bounds, reference

pytestmark = pytest.mark.parity

logger = logging.getLogger(__name__)

CASES = reference.cases('pose_net')
# output name -> input name (4-D `[F, 3, H, W]` or 5-D `[B, F, 3, H, W]` torch layout).
INPUTS = {'out': 'poses', 'out_5d': 'poses_5d'}


@pytest.fixture(scope='module', params=CASES, ids=str)
def case(request):
  c = request.param
  config = pose_net.PoseNetConfig.from_dict(reference.config_fields(pose_net.PoseNetConfig, c.meta['config']))
  params = convert_pose_net.load_pose_net(c.path / 'pose_net.pth', config)
  return c, params, jax.jit(pose_net.PoseNet(config).apply)


def test_outputs(case):
  c, params, apply = case
  outputs = set(c.meta['outputs'])
  unknown = outputs - set(INPUTS)
  assert not unknown, f'{c}: outputs {sorted(unknown)} have no test'
  for name in sorted(outputs):
    poses = np.moveaxis(c.io[INPUTS[name]], -3, -1)                # [..., 3, H, W] -> [..., H, W, 3]
    out = apply({'params': params}, poses)
    expected = np.moveaxis(c.io[name], 1, -1)                      # [F, C, h, w] -> [F, h, w, C]
    # SPREAD_FACTOR x this output's recorded float32-vs-float64 spread (bounds.network_atol).
    atol = bounds.network_atol(c, name, expected, bounds.README_MODULE_ATOL)
    err = reference.assert_close(out, expected, atol, name=f'{c}: {name}')
    logger.info('%s %s: max abs %.3g, max abs / max ref %.3g', c, name, *err)


def test_weights_round_trip(case):
  c, params, _ = case
  original = sd_lib.load_state_dict(c.path / 'pose_net.pth')
  exported = convert_pose_net.export_pose_net(params)
  assert exported.keys() == original.keys()
  for key, value in original.items():
    np.testing.assert_array_equal(exported[key], value.astype(np.float32), err_msg=key)
