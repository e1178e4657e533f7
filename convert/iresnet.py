"""ArcFace IResNet state dict (`glintr100_torch.pth`, golden `arcface.pth`) -> `sa_jax.models.iresnet`.

Generic rule plus: BatchNorm `running_mean` / `running_var` are the `mean` / `var` parameters of
`sa_jax.nn.norms.BatchNorm`, PReLU `weight` is `negative_slope`, and the `num_batches_tracked`
counters are ignored. float16 checkpoints are cast to the requested dtype.
"""

import os
from typing import Any

import numpy as np

from convert import state_dict as sd_lib
from sa_jax.models import iresnet, stable_animator

KEYMAP = sd_lib.KeyMap(
    renames=(('running_mean', 'mean'), ('running_var', 'var'),
             ('prelu.weight', 'prelu.negative_slope')),
    ignore=(r'(.*\.)?num_batches_tracked',),
)


def load_face_embedder(path: str | os.PathLike, config: iresnet.IResNetConfig,
                       dtype: Any = np.float32) -> dict[str, Any]:
  """Reads an IResNet `.pth` state dict into an IResNet parameter tree of `dtype`, strictly."""
  expected = stable_animator.BY_NAME['face_embedder'].param_shapes(config)
  return sd_lib.convert(sd_lib.load_state_dict(path), expected, KEYMAP, dtype, source=os.fspath(path))


def export_face_embedder(params: Any, dtype: Any = np.float32) -> dict[str, np.ndarray]:
  """IResNet parameters -> torch state dict (names and layout of `glintr100_torch.pth`, without the
  `num_batches_tracked` counters, which inference never reads)."""
  return sd_lib.export(params, KEYMAP, dtype)
