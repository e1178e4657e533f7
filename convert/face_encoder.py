"""`face_encoder.pth` (StableAnimator `FusionFaceId` state dict) <-> `sa_jax.models.face_encoder`.

The generic rule covers everything (`proj.0` -> `proj_0`, `fusion_model.layers.1.0.to_kv` ->
`fusion_model/layers_1_0/to_kv`, the feed-forward LayerNorm `layers.1.1.0` -> `layers_1_1_0`)
except the two feed-forward linears, torch Sequential members `layers.L.1.1` / `layers.L.1.3`,
which are `proj_in` / `proj_out` of the shared `FeedForward` named `layers_L_1`. The renames
anchor on the trailing `.weight` so the layer index L never matches by accident.
"""

import os
from typing import Any

import numpy as np

from convert import state_dict as sd_lib
from sa_jax.models import face_encoder, stable_animator

KEYMAP = sd_lib.KeyMap(renames=(
    ('1.1.weight', '1.proj_in.weight'),
    ('1.3.weight', '1.proj_out.weight'),
))


def load_face_encoder(path: str | os.PathLike, config: face_encoder.FaceEncoderConfig,
                      dtype: Any = np.float32) -> dict[str, Any]:
  """Reads `face_encoder.pth` into a FusionFaceId parameter tree of `dtype`, strictly."""
  expected = stable_animator.BY_NAME['face_encoder'].param_shapes(config)
  return sd_lib.convert(sd_lib.load_state_dict(path), expected, KEYMAP, dtype, source=os.fspath(path))


def export_face_encoder(params: Any, dtype: Any = np.float32) -> dict[str, np.ndarray]:
  """FusionFaceId parameters -> torch state dict (names and layout of `face_encoder.pth`)."""
  return sd_lib.export(params, KEYMAP, dtype)
