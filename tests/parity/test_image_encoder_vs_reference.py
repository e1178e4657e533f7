"""CLIP image encoder parity with transformers `CLIPVisionModelWithProjection` and SVD `_encode_image`
preprocessing, for every 'image_encoder' case; weights round trip."""

import logging

import jax
import numpy as np
import pytest
from PIL import Image

from convert import clip as convert_clip
from convert import state_dict as sd_lib
from sa_jax.models import clip
from tests.parity import bounds, reference

pytestmark = pytest.mark.parity

logger = logging.getLogger(__name__)

CASES = reference.cases('image_encoder')


def _nhwc(x: np.ndarray) -> np.ndarray:
  return x.transpose(0, 2, 3, 1)                           # [N, C, H, W] -> [N, H, W, C]


def _input_image(c: reference.Case) -> np.ndarray:
  """The case's input PNG (the one `.png` named in case.json `inputs`) as `[1, H, W, 3]` uint8 RGB."""
  pngs = [name for name in c.meta['inputs'] if name.endswith('.png')]
  if len(pngs) != 1:
    raise ValueError(f'{c}: expected one PNG input in case.json, found {pngs}')
  with Image.open(c.path / pngs[0]) as im:
    return np.asarray(im.convert('RGB'))[None]


def _embed_atol(c: reference.Case) -> float:
  """SPREAD_FACTOR x the recorded float32-vs-float64 spread of image_embeds (bounds.network_atol)."""
  return bounds.network_atol(c, 'image_embeds', c.io['image_embeds'], bounds.README_MODULE_ATOL)


@pytest.fixture(scope='module', params=CASES, ids=str)
def case(request):
  c = request.param
  config = convert_clip.read_config(c.path / 'image_encoder')
  params = convert_clip.load_image_encoder(c.path / 'image_encoder', config)
  mean, std = convert_clip.read_normalization(c.path / 'feature_extractor')
  return c, config, params, mean, std


def test_pixel_values(case):
  c, config, _, mean, std = case
  preprocess = jax.jit(clip.preprocess, static_argnums=(1, 2, 3))
  image = _input_image(c)
  pixels = preprocess(image, mean, std, config.image_size)
  atol = bounds.clip_pixel_atol(image.shape[1:3], config.image_size, std)
  err = reference.assert_close(pixels, _nhwc(c.io['pixel_values']), atol, name=f'{c}: pixel_values')
  logger.info('%s pixel_values: max abs %.3g, max abs / max ref %.3g', c, *err)


def test_image_embeds_from_pixel_values(case):
  c, config, params, _, _ = case
  model = clip.CLIPVisionModelWithProjection(config)
  out = jax.jit(model.apply)({'params': params}, _nhwc(c.io['pixel_values']))
  err = reference.assert_close(out, c.io['image_embeds'], _embed_atol(c), name=f'{c}: image_embeds')
  logger.info('%s image_embeds (recorded pixel_values): max abs %.3g, max abs / max ref %.3g', c, *err)


def test_image_embeds_end_to_end(case):
  c, config, params, mean, std = case
  encode = jax.jit(clip.encode_image, static_argnums=(1, 3, 4))
  out = encode(params, config, _input_image(c), mean, std)
  # From the PNG: the recorded pixel values' own rounding enters too, but CLIP's float32 error on
  # pixel inputs of order one is what the recorded spread measures, so the bound is the same.
  err = reference.assert_close(out, c.io['image_embeds'], _embed_atol(c),
                               name=f'{c}: image_embeds end to end')
  logger.info('%s image_embeds (from the PNG): max abs %.3g, max abs / max ref %.3g', c, *err)


def test_weights_round_trip(case):
  c, _, params, _, _ = case
  original = sd_lib.load_state_dict(sd_lib.find_weights(c.path / 'image_encoder', 'model'))
  original = {k: v for k, v in original.items() if not convert_clip.KEYMAP.ignored(k)}
  exported = convert_clip.export_image_encoder(params)
  assert exported.keys() == original.keys()
  for key, value in original.items():
    np.testing.assert_array_equal(exported[key], value.astype(np.float32), err_msg=key)
