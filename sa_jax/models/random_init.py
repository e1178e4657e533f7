"""Seeded random parameters drawn on the host with numpy.

`model.init` compiles one random-number kernel per parameter, which takes minutes for the UNet on
a CPU; drawing from the abstract parameter tree with numpy takes a moment. For tests and the
bundled demo model: every value is non-trivial (biases and mix factors too), so a wrongly wired
parameter shows up in the output. Not a training initialisation.
"""

from typing import Any

import flax.linen as nn
import numpy as np
from flax import traverse_util


def random_params(abstract: Any, seed: int = 0) -> dict[str, Any]:
  """Numpy parameters with the paths, shapes and dtypes of `abstract` (boxed or plain).

  Kernels ~ N(0, 1/fan_in); norm scales and BatchNorm variances ~ U(0.5, 1.5); everything else
  (biases, means, mix factors, embeddings) ~ N(0, 0.1^2).
  """
  rng = np.random.default_rng(seed)
  out = {}
  for path, leaf in traverse_util.flatten_dict(nn.unbox(abstract)).items():
    shape, name = tuple(leaf.shape), path[-1]
    if name == 'kernel':
      value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
    elif name in ('scale', 'var'):
      value = rng.uniform(0.5, 1.5, shape)
    else:
      value = 0.1 * rng.standard_normal(shape)
    out[path] = value.astype(leaf.dtype)
  return traverse_util.unflatten_dict(out)
