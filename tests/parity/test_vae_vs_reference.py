"""VAE parity with diffusers `AutoencoderKLTemporalDecoder` for every 'vae' case; chunked decoding; weights.

Each case holds `vae/config.json` + `vae/diffusion_pytorch_model[.fp16].safetensors` and, in
`io.npz` (torch layout): `image [1, 3, H, W]`, the posterior `posterior_{mean,logvar,std,mode}
[1, 4, h, w]`, raw (unscaled) `latents [F, 4, h, w]` and `decoded [F, 3, H, W]` =
`vae.decode(latents, num_frames=F)` (one decoder call over all F frames, no scaling).
"""

import logging

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from convert import state_dict as sd_lib
from convert import vae as convert_vae
from sa_jax.models import vae
from tests.parity import bounds, reference

pytestmark = pytest.mark.parity

logger = logging.getLogger(__name__)

CASES = reference.cases('vae')
POSTERIOR = ('mean', 'logvar', 'std', 'mode')


def _config(c: reference.Case) -> vae.VAEConfig:
  folder = c.path / 'vae'
  if (folder / 'config.json').is_file():
    return convert_vae.read_config(folder)
  return vae.VAEConfig.from_dict(c.meta['config'])


@pytest.fixture(scope='module', params=CASES, ids=str)
def case(request):
  c = request.param
  config = _config(c)
  params = convert_vae.load_vae(c.path / 'vae', config)
  return c, config, params


def _nhwc(x: np.ndarray) -> np.ndarray:
  return np.moveaxis(x, 1, -1)                                   # [N, C, H, W] -> [N, H, W, C]


def test_cases_exist():
  assert CASES, f'no "vae" case in {reference.reference_dir()}'


def test_posterior(case):
  c, config, params = case
  posterior = jax.jit(lambda p, x: vae.encode(p, config, x))(params, _nhwc(c.io['image']))
  for name in POSTERIOR:
    actual = posterior.mode() if name == 'mode' else getattr(posterior, name)
    expected = _nhwc(c.io[f'posterior_{name}'])
    # SPREAD_FACTOR x the recorded float32-vs-float64 spread (logvar and mode have none: the
    # largest relative spread of the VAE times their max |ref|), bounds.network_atol.
    atol = bounds.network_atol(c, f'posterior_{name}', expected, bounds.README_MODULE_ATOL)
    err = reference.assert_close(actual, expected, atol, name=f'{c}: posterior_{name}')
    logger.info('%s posterior_%s: max abs %.3g, max abs / max ref %.3g', c, name, *err)


def test_decoded(case):
  c, config, params = case
  latents = _nhwc(c.io['latents'])
  out = jax.jit(lambda p, z: vae.decode_frames(p, config, z, z.shape[0]))(params, latents)
  atol = bounds.network_atol(c, 'decoded', c.io['decoded'], bounds.README_MODULE_ATOL)
  err = reference.assert_close(out, _nhwc(c.io['decoded']), atol, name=f'{c}: decoded')
  logger.info('%s decoded: max abs %.3g, max abs / max ref %.3g', c, *err)


def test_chunked_decode_is_separate_calls(case):
  """Chunks of 2 frames (the last shorter) equal separate decoder calls and differ from one call."""
  c, config, params = case
  lat = _nhwc(c.io['latents'])
  latents = np.concatenate([lat, lat[::-1], lat[:1]])            # 2F + 1 >= 3 frames: full chunks + tail
  n, chunk = latents.shape[0], 2
  chunked = jax.jit(lambda p, x: vae.decode(p, config, x, chunk))(params, latents)
  z = np.float32(1.0 / config.scaling_factor) * latents           # the reference's `1 / sf * latents`
  one_call = jax.jit(lambda p, x: vae.decode_frames(p, config, x, x.shape[0]))
  separate = np.concatenate([one_call(params, z[i:i + chunk]) for i in range(0, n, chunk)])
  # The same float32 decoder in two compiled programs (fusion may differ): at most the decoder's
  # float32 error, i.e. the tolerance against the reference decode.
  atol = bounds.network_atol(c, 'decoded', separate, bounds.README_MODULE_ATOL)
  np.testing.assert_allclose(chunked, separate, atol=atol, rtol=0)
  unchunked = one_call(params, z)
  diff = np.abs(np.asarray(chunked) - np.asarray(unchunked)).max()
  assert diff > atol, f'chunking changed the frames by {diff:.3g} only, within rounding ({atol:.3g}); ' \
      'it should change them (temporal layers only see their chunk)'


def test_weights_round_trip(case):
  c, _, params = case
  path = sd_lib.find_weights(c.path / 'vae', 'diffusion_pytorch_model')
  original = sd_lib.load_state_dict(path)
  exported = convert_vae.export_vae(params)
  assert exported.keys() == original.keys()
  for key, value in original.items():
    np.testing.assert_array_equal(exported[key], value.astype(np.float32), err_msg=key)


def test_legacy_attention_names(case, tmp_path):
  """A checkpoint with `query/key/value/proj_attn` loads to the same parameters."""
  c, config, params = case
  original = sd_lib.load_state_dict(sd_lib.find_weights(c.path / 'vae', 'diffusion_pytorch_model'))
  legacy_of = {v: k for k, v in convert_vae.LEGACY_ATTENTION_NAMES.items()}
  legacy = {}
  for key, value in original.items():
    for new, old in legacy_of.items():
      key = key.replace(f'.attentions.0.{new}.', f'.attentions.0.{old}.')
    legacy[key] = value
  assert sum('.proj_attn.' in k for k in legacy) == 4             # encoder + decoder, weight + bias
  save_file(legacy, str(tmp_path / 'legacy.safetensors'))
  loaded = convert_vae.load_vae(tmp_path / 'legacy.safetensors', config)
  jax.tree.map(np.testing.assert_array_equal, loaded, params)


def test_conversion_is_strict(case):
  c, config, _ = case
  smaller = vae.VAEConfig.from_dict({**c.meta['config'], 'latent_channels': config.latent_channels + 1})
  with pytest.raises(sd_lib.CheckpointMismatchError, match='wrong shape'):
    convert_vae.load_vae(c.path / 'vae', smaller)
