"""IResNet parity with the ArcFace `IResNet` (eval mode), for every 'arcface' case; round trip."""

import logging

import jax
import numpy as np
import pytest

from convert import iresnet as convert_iresnet
from convert import state_dict as sd_lib
from sa_jax.models import iresnet
from tests.parity import bounds, reference

pytestmark = pytest.mark.parity

logger = logging.getLogger(__name__)

CASES = reference.cases('arcface')


@pytest.fixture(scope='module', params=CASES, ids=str)
def case(request):
  c = request.param
  config = iresnet.IResNetConfig.from_dict(reference.config_fields(iresnet.IResNetConfig, c.meta['config']))
  params = convert_iresnet.load_face_embedder(c.path / 'arcface.pth', config)
  return c, params, jax.jit(iresnet.IResNet(config).apply)


def test_embeddings(case):
  c, params, apply = case
  outputs = set(c.meta['outputs'])
  assert outputs == {'embeddings'}, f'{c}: outputs {sorted(outputs - {"embeddings"})} have no test'
  faces = np.moveaxis(c.io['faces'], 1, -1)                        # [N, 3, H, W] -> [N, H, W, 3]
  out = apply({'params': params}, faces)
  # SPREAD_FACTOR x the recorded float32-vs-float64 spread of the embeddings (bounds.network_atol).
  atol = bounds.network_atol(c, 'embeddings', c.io['embeddings'], bounds.README_MODULE_ATOL)
  err = reference.assert_close(out, c.io['embeddings'], atol, name=f'{c}: embeddings')
  logger.info('%s embeddings: max abs %.3g, max abs / max ref %.3g', c, *err)


def test_weights_round_trip(case):
  """Every tensor but the BatchNorm counters comes back bit-exact (float16 values widen exactly)."""
  c, params, _ = case
  original = sd_lib.load_state_dict(c.path / 'arcface.pth')
  original = {k: v for k, v in original.items() if not convert_iresnet.KEYMAP.ignored(k)}
  exported = sd_lib.export(params, convert_iresnet.KEYMAP)
  assert exported.keys() == original.keys()
  for key, value in original.items():
    np.testing.assert_array_equal(exported[key], value.astype(np.float32), err_msg=key)
