"""VAE weights: a diffusers `vae/` folder (SVD `AutoencoderKLTemporalDecoder`) <-> Flax params.

The folder holds `config.json` and `diffusion_pytorch_model[.fp16].safetensors` (374 tensors for
SVD). Names map by the generic rule except the attention output projection (`to_out.0` ->
`to_out`). Checkpoints written before diffusers renamed its attention parameters call the
mid-block projections `query`, `key`, `value`, `proj_attn`; they are read as `to_q`, `to_k`,
`to_v`, `to_out.0` (SPEC §3.4). Half-precision files are cast to the requested dtype.
"""

import logging
import os
import re
from typing import Any

import numpy as np

from convert import state_dict as sd
from sa_jax.models import stable_animator, vae

logger = logging.getLogger(__name__)

KEYMAP = sd.KeyMap(renames=(('to_out.0', 'to_out'),))

LEGACY_ATTENTION_NAMES = {'query': 'to_q', 'key': 'to_k', 'value': 'to_v', 'proj_attn': 'to_out.0'}
_LEGACY = re.compile(r'(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)')


def read_config(folder: str | os.PathLike) -> vae.VAEConfig:
  """The VAE config of a diffusers `vae/` folder (its `config.json`)."""
  return vae.VAEConfig.from_dict(sd.read_json(os.path.join(folder, 'config.json'), 'VAE config'))


def rename_legacy_attention(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Renames legacy attention keys (`...attentions.0.query.weight` -> `...attentions.0.to_q.weight`)."""
  out, renamed = {}, 0
  for key, value in tensors.items():
    m = _LEGACY.fullmatch(key)
    if m:
      key = f'{m[1]}.{LEGACY_ATTENTION_NAMES[m[2]]}.{m[3]}'
      renamed += 1
    out[key] = value
  if renamed:
    logger.info('read %d legacy attention tensors (query/key/value/proj_attn)', renamed)
  return out


def load_vae(path: str | os.PathLike, config: vae.VAEConfig, dtype: Any = np.float32) -> dict[str, Any]:
  """Reads VAE params from a diffusers `vae/` folder or its weights file, strictly.

  Args:
    path: the folder (weights found with `find_weights`) or a `.safetensors`/`.bin` file.
    config: the architecture the weights must fit (`read_config(folder)` for the folder's own).
    dtype: dtype of the returned arrays (fp16 files are cast).
  Raises:
    CheckpointMismatchError: listing every missing, unexpected or mis-shaped tensor.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    path = sd.find_weights(path, 'diffusion_pytorch_model')
  tensors = rename_legacy_attention(sd.load_state_dict(path))
  expected = stable_animator.BY_NAME['vae'].param_shapes(config)
  return sd.convert(tensors, expected, KEYMAP, dtype=dtype, source=path)


def export_vae(params: Any, dtype: Any = np.float32) -> dict[str, np.ndarray]:
  """Flax VAE params -> a diffusers `AutoencoderKLTemporalDecoder` state dict (numpy, torch layout)."""
  return sd.export(params, KEYMAP, dtype)
