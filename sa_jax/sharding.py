"""Mesh construction and logical-axis rules (the one place that knows the mesh).

Parameters are created with logical axis names (`nn.with_logical_partitioning`): a kernel is
`[..., EMBED, MLP]` (input features, output features), norm parameters are `[NORM]`.
Activations are marked with `nn.with_logical_constraint` using `BATCH` etc. `LOGICAL_RULES` maps
those names to mesh axes; scaling out is a change of mesh shape, not of model code.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# Mesh axes.
DATA = 'data'      # replicas of the model, each on a slice of the batch
FSDP = 'fsdp'      # parameters sharded, batch sharded too (ZeRO-3 style)
TENSOR = 'tensor'  # room for tensor parallelism (size 1 unless configured)
MESH_AXES = (DATA, FSDP, TENSOR)

# Logical axes.
BATCH = 'batch'
LENGTH = 'length'
EMBED = 'embed'
MLP = 'mlp'
NORM = 'norm'

LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    (BATCH, (DATA, FSDP)),
    (LENGTH, None),
    (EMBED, FSDP),
    (MLP, TENSOR),
    (NORM, None),
)


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh with axes `(data, fsdp, tensor)`; `shape` gives their sizes (missing axes are 1).

  A size of -1 takes the devices that are left, e.g. `{'data': -1}` is pure data parallelism.
  """
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    raise ValueError(f'unknown mesh axes {sorted(unknown)}; expected a subset of {MESH_AXES}')
  devices = list(jax.devices() if devices is None else devices)
  sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f'at most one mesh axis may be -1, got {dict(shape)}')
  if -1 in sizes:
    known = int(np.prod([s for s in sizes if s != -1]))
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f'mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, '
                     f'{len(devices)} available')
  return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def _fit(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
  """Drops mesh axes from dimensions they do not divide (those dimensions are replicated)."""
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
    fitted.append(axes if names and dim % size == 0 else None)
  return PartitionSpec(*fitted)


def logical_to_sharding(logical: Any, shapes: Any, mesh: Mesh,
                        rules: Sequence[tuple[str, Any]] = LOGICAL_RULES) -> Any:
  """Maps a pytree of logical PartitionSpecs (and matching shapes) to NamedShardings."""
  def one(spec, shape):
    mesh_spec = nn.logical_to_mesh_axes(tuple(spec), rules)
    return NamedSharding(mesh, _fit(mesh_spec, shape, mesh))
  return jax.tree.map(one, logical, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec))


def param_shardings(boxed_abstract_params: Any, mesh: Mesh,
                    rules: Sequence[tuple[str, Any]] = LOGICAL_RULES) -> Any:
  """NamedShardings for params, from the boxed abstract tree of `jax.eval_shape(model.init, ...)`."""
  logical = nn.get_partition_spec(boxed_abstract_params)
  shapes = jax.tree.map(lambda x: x.shape, nn.unbox(boxed_abstract_params))
  return logical_to_sharding(logical, shapes, mesh, rules)


def batch_sharding(mesh: Mesh, ndim: int, rules: Sequence[tuple[str, Any]] = LOGICAL_RULES
                   ) -> NamedSharding:
  """Sharding of an array whose first axis is the batch, the rest replicated."""
  spec = nn.logical_to_mesh_axes((BATCH,) + (None,) * (ndim - 1), rules)
  return NamedSharding(mesh, spec)
