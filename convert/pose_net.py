"""`pose_net.pth` (StableAnimator `PoseNet` state dict) <-> `sa_jax.models.pose_net` parameters.

Every torch name maps by the generic rule (`conv_layers.2.weight` -> `conv_layers_2/kernel`;
the top-level scalar `scale` stays `scale`), so the key map is empty.
"""

import os
from typing import Any

import numpy as np

from convert import state_dict as sd_lib
from sa_jax.models import pose_net, stable_animator

KEYMAP = sd_lib.KeyMap()


def load_pose_net(path: str | os.PathLike, config: pose_net.PoseNetConfig,
                  dtype: Any = np.float32) -> dict[str, Any]:
  """Reads `pose_net.pth` (any float dtype) into a PoseNet parameter tree of `dtype`, strictly."""
  expected = stable_animator.BY_NAME['pose_net'].param_shapes(config)
  return sd_lib.convert(sd_lib.load_state_dict(path), expected, KEYMAP, dtype, source=os.fspath(path))


def export_pose_net(params: Any, dtype: Any = np.float32) -> dict[str, np.ndarray]:
  """PoseNet parameters -> torch state dict (names and layout of `pose_net.pth`) as numpy arrays."""
  return sd_lib.export(params, KEYMAP, dtype)
