"""SVD `image_encoder/` (transformers `CLIPVisionModelWithProjection`) <-> `sa_jax.models.clip`.

The folder holds `config.json` and `model[.fp16].safetensors`. The generic rule covers the torch
names (`vision_model.encoder.layers.3.layer_norm1.weight` -> `vision_model/encoder/layers_3/
layer_norm1/scale`, the patch conv OIHW -> HWIO, Linear transposed); the renames map the shared
blocks' projections (`{q,k,v,out}_proj` -> `to_{q,k,v,out}`, `fc1/fc2` -> `proj_in/proj_out`) and
the position table, an `nn.Embedding` `[L, C]` that must not be transposed like a Linear kernel.
An optional `position_ids` buffer (older transformers) carries no parameter and is skipped.
Also reads the CLIP normalisation from the sibling `feature_extractor/preprocessor_config.json`.
"""

import logging
import os
from typing import Any

import numpy as np

from convert import state_dict as sd
from sa_jax.models import clip, stable_animator

logger = logging.getLogger(__name__)

KEYMAP = sd.KeyMap(
    renames=(
        ('position_embedding.weight', 'position_embedding'),
        ('q_proj', 'to_q'),
        ('k_proj', 'to_k'),
        ('v_proj', 'to_v'),
        ('out_proj', 'to_out'),
        ('fc1', 'proj_in'),
        ('fc2', 'proj_out'),
    ),
    ignore=(r'(.*\.)?position_ids',),
)


def read_config(folder: str | os.PathLike) -> clip.CLIPVisionConfig:
  """The CLIP vision config of an `image_encoder/` folder (its transformers `config.json`)."""
  path = os.path.join(folder, 'config.json')
  return clip.CLIPVisionConfig.from_dict(sd.read_json(path, 'image encoder config'))


def read_normalization(folder: str | os.PathLike | None
                       ) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """`(mean, std)` of a `feature_extractor/` folder's `preprocessor_config.json`.

  Falls back to the OpenAI CLIP values (`clip.CLIP_MEAN`, `clip.CLIP_STD`) when `folder` is None or
  has no such file.
  """
  path = None if folder is None else os.path.join(folder, 'preprocessor_config.json')
  if path is None or not os.path.isfile(path):
    logger.info('no preprocessor_config.json%s: using the OpenAI CLIP mean/std',
                '' if path is None else f' at {path}')
    return clip.CLIP_MEAN, clip.CLIP_STD
  d = sd.read_json(path, 'feature extractor config')
  mean = tuple(float(v) for v in d.get('image_mean', clip.CLIP_MEAN))
  std = tuple(float(v) for v in d.get('image_std', clip.CLIP_STD))
  if len(mean) != len(std):
    raise ValueError(f'{path}: {len(mean)} image_mean values but {len(std)} image_std values')
  return mean, std


def load_image_encoder(folder: str | os.PathLike, config: clip.CLIPVisionConfig | None = None,
                       dtype: Any = np.float32) -> dict[str, Any]:
  """Reads the CLIP params of an `image_encoder/` folder (or a weights file) into `dtype`, strictly.

  Args:
    folder: the `image_encoder/` folder (`model.safetensors`, else `model.fp16.safetensors`), or
      one weights file.
    config: the model config; default: the folder's `config.json`.
    dtype: dtype of the returned arrays (float16 files are cast).
  Raises:
    CheckpointMismatchError: listing every missing, unexpected or mis-shaped tensor.
  """
  folder = os.fspath(folder)
  path = sd.find_weights(folder, 'model') if os.path.isdir(folder) else folder
  if config is None:
    config = read_config(os.path.dirname(path))
  expected = stable_animator.BY_NAME['image_encoder'].param_shapes(config)
  return sd.convert(sd.load_state_dict(path), expected, KEYMAP, dtype=dtype, source=path)


def export_image_encoder(params: Any, dtype: Any = np.float32) -> dict[str, np.ndarray]:
  """CLIP params -> transformers `CLIPVisionModelWithProjection` state dict (names and layouts)."""
  return sd.export(params, KEYMAP, dtype)
