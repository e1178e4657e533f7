"""FusionFaceId parity with StableAnimator `FusionFaceId`, for every 'face_encoder' case; round trip."""

import functools
import logging

import jax
import numpy as np
import pytest

from convert import face_encoder as convert_face_encoder
from convert import state_dict as sd_lib
from sa_jax.models import face_encoder
from tests.parity import bounds, reference

pytestmark = pytest.mark.parity

logger = logging.getLogger(__name__)

CASES = reference.cases('face_encoder')
# output name -> (id embedding input, CLIP embedding input, forward keyword arguments).
RUNS = {
    'out': ('id_embeds', 'clip_embeds', {}),
    'b2_out': ('b2_id_embeds', 'b2_clip_embeds', {}),
    'out_shortcut_scale0p5': ('id_embeds', 'clip_embeds', {'shortcut': True, 'scale': 0.5}),
}


@pytest.fixture(scope='module', params=CASES, ids=str)
def case(request):
  c = request.param
  config = face_encoder.FaceEncoderConfig.from_dict(
      reference.config_fields(face_encoder.FaceEncoderConfig, c.meta['config']))
  params = convert_face_encoder.load_face_encoder(c.path / 'face_encoder.pth', config)
  return c, params, face_encoder.FusionFaceId(config)


def test_outputs(case):
  c, params, model = case
  outputs = set(c.meta['outputs'])
  unknown = outputs - set(RUNS)
  assert not unknown, f'{c}: outputs {sorted(unknown)} have no test'
  for name in sorted(outputs):
    id_name, clip_name, kwargs = RUNS[name]
    apply = jax.jit(functools.partial(model.apply, **kwargs))
    out = apply({'params': params}, c.io[id_name], c.io[clip_name])
    # SPREAD_FACTOR x this output's recorded float32-vs-float64 spread (the shortcut variant has
    # none: the largest relative spread of the network times its max |ref|), bounds.network_atol.
    atol = bounds.network_atol(c, name, c.io[name], bounds.README_MODULE_ATOL)
    err = reference.assert_close(out, c.io[name], atol, name=f'{c}: {name}')
    logger.info('%s %s: max abs %.3g, max abs / max ref %.3g', c, name, *err)


def test_weights_round_trip(case):
  c, params, _ = case
  original = sd_lib.load_state_dict(c.path / 'face_encoder.pth')
  exported = convert_face_encoder.export_face_encoder(params)
  assert exported.keys() == original.keys()
  for key, value in original.items():
    np.testing.assert_array_equal(exported[key], value.astype(np.float32), err_msg=key)
