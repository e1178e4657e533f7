"""UNet weights: the release `unet.pth` or a diffusers `unet/` folder -> Flax params, and back.

`unet.pth` holds the full StableAnimator UNet (1460 tensors for SVD-xt, including the 32 ID-adapter
projections `...attn2.processor.id_to_{k,v}.weight`). A diffusers SVD folder has the 1428 base
tensors only; for it, the ID-adapter projections start as copies of the same block's
`attn2.to_k`/`to_v`, as StableAnimator initialises them before training (SPEC §2.9).
"""

import logging
import os
import re
from typing import Any

import numpy as np

from convert import state_dict as sd
from sa_jax.models import stable_animator, unet

logger = logging.getLogger(__name__)

KEYMAP = sd.KeyMap(renames=(
    ('attn2.processor.id_to_k', 'attn2.id_to_k'),
    ('attn2.processor.id_to_v', 'attn2.id_to_v'),
    ('to_out.0', 'to_out'),
    ('ff.net.0.proj', 'ff.proj_in'),
    ('ff.net.2', 'ff.proj_out'),
    ('ff_in.net.0.proj', 'ff_in.proj_in'),
    ('ff_in.net.2', 'ff_in.proj_out'),
))


def read_config(folder: str | os.PathLike) -> unet.UNetConfig:
  """The UNet config of a diffusers `unet/` folder (its `config.json`)."""
  return unet.UNetConfig.from_dict(sd.read_json(os.path.join(folder, 'config.json'), 'UNet config'))


def _add_id_adapter_copies(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Adds `attn2.processor.id_to_{k,v}` as copies of `attn2.to_{k,v}` when the source has none."""
  if any('.processor.id_to_' in k for k in tensors):
    return tensors
  out = dict(tensors)
  for key, value in tensors.items():
    m = re.fullmatch(r'(.*\.transformer_blocks\.\d+\.attn2)\.to_([kv])\.weight', key)
    if m:
      out[f'{m[1]}.processor.id_to_{m[2]}.weight'] = value
  logger.info('no ID-adapter weights in the source: initialised from attn2.to_k/to_v')
  return out


def load_unet(path: str | os.PathLike, config: unet.UNetConfig, dtype: Any = np.float32
              ) -> dict[str, Any]:
  """Reads UNet params from `unet.pth` (release) or a diffusers `unet/` folder / weights file.

  Raises:
    CheckpointMismatchError: listing every missing, unexpected or mis-shaped tensor.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    path = sd.find_weights(path, 'diffusion_pytorch_model')
  tensors = sd.load_state_dict(path)
  if path.endswith('.safetensors'):
    tensors = _add_id_adapter_copies(tensors)
  expected = stable_animator.BY_NAME['unet'].param_shapes(config)
  return sd.convert(tensors, expected, KEYMAP, dtype=dtype, source=path)


def export_unet(params: Any, dtype: Any = np.float32) -> dict[str, np.ndarray]:
  """Flax UNet params -> the release `unet.pth` state dict (names, layouts) as numpy arrays."""
  return sd.export(params, KEYMAP, dtype)
