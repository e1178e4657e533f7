"""Mesh construction and logical-axis rules (the one place that knows the mesh).

Parameters are created with logical axis names (`nn.with_logical_partitioning`); norm parameters
are `[NORM]`. Activations are marked with `nn.with_logical_constraint` using `BATCH` etc.
`LOGICAL_RULES` (or rules built from a config by `rules_from_config`) map those names to mesh axes;
scaling out is a change of mesh shape and rules, not of model code.

Kernels are `[*window, in, out]`; their last two axes take one of two layouts, Megatron style:

  IN_PROJ  = [EMBED, MLP]  in features on `fsdp` x `context`, out on `tensor` (column parallel)
  OUT_PROJ = [MLP, EMBED]  in features on `tensor`, out on `fsdp` x `context` (row parallel; the default)

IN_PROJ marks the first kernel of a pair: its output features stay split over `tensor` and feed
only elementwise ops (and norms) and then the pair's OUT_PROJ kernel, which reads them split the
same way and reduces. Every other kernel is OUT_PROJ, so whatever writes a residual stream (or is
a standalone projection) yields whole features and streams are never split over `tensor`; a pair
costs one reduction and no all-gather. `linear.dense`/`linear.conv` pin each output's feature axis
accordingly (`output_features`). Biases follow their kernel's out axis (`[MLP]` or `[EMBED]`).
The window axes of a convolution are never sharded.

  IN_PROJ (first of a pair)                        OUT_PROJ (its second)
  Attention to_q, to_k, to_v                       to_out
  IDAttention to_q, to_k, to_v, id_to_k, id_to_v   to_out
  FeedForward proj_in (GEGLU: value | gate)        proj_out
  TimestepEmbedding linear_1                       linear_2
  ResnetBlock conv1, time_emb_proj (added to it)   conv2
  IResNet IBasicBlock conv1                        conv2
  PerceiverAttention to_q, to_kv                   to_out
  FusionFaceId proj_0                              proj_2
  OUT_PROJ, standalone: UNet conv_in, conv_out, transformer proj_in/proj_out, conv_shortcut,
  resamplers, VAE convs outside resnets (time_conv_out included), PoseNet, CLIP patch embedding
  and visual projection, IResNet stem/downsample/fc, perceiver proj_in/proj_out.

With `tensor` of size 1 (the default mesh) only `fsdp` and `context` shard parameters; the two layouts then
differ only in which kernel axis it splits. GEGLU's `[value | gate]` halves land on different
`tensor` shards, so its product costs one exchange of the hidden activation.

Video activations (`context` splits each video's frames over devices; size 1 unless configured):

  BATCH   B of `[B, F, ...]` arrays (batch fields, latents, temporal views)       -> data x fsdp
  FRAMES  F of the same                                                           -> context
  ROWS    the merged rows of `[BF, ...]` streams (UNet, VAE encoder, PoseNet) and  -> data x fsdp x context
          of the temporal transformers' `[BL, F, C]` sequences

`constrain` pins these where the mesh holds them. With one video per batch shard (B = data x
fsdp; `per_device_batch_size=1` in sa-train) the split rows of `[BF]` are the split frames of
`[B, F]`: each device holds F / context consecutive frames, and the reshapes between the two move
nothing (with more videos per shard the layouts differ and each such reshape re-splits the
stream: correct, but an exchange every time). Spatial layers (convolutions, spatial attention,
per-frame GroupNorm) run on local frames. A temporal resnet's frame convolution exchanges one
boundary frame with each neighbour and its frame-pooled GroupNorm sums statistics over the axis.
A temporal transformer re-splits its `[BL, F, C]` sequences by rows (one all-to-all in, one out)
and attends over all F frames locally: each device sends 2 (c - 1) / c^2 of the block's input,
where attending with F split would gather K and V, 2 (c - 1) / c of it. Parameters are split over
`context` as over `fsdp` (`EMBED -> fsdp x context`): the devices that share a video also share
the state, so a mesh of context alone holds 1/c of it per device (gathered one block at a time,
gradients reduce-scattered over both axes).
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# Mesh axes.
DATA = 'data'      # replicas of the model, each on a slice of the batch
FSDP = 'fsdp'      # parameters sharded, batch sharded too (ZeRO-3 style)
CONTEXT = 'context'  # a video's frames split over devices (size 1 unless configured)
TENSOR = 'tensor'  # tensor parallelism: pairs split their hidden features (size 1 unless configured)
# Inner axes are neighbours in `jax.devices()` order (on one host, on the fastest links): tensor
# and context exchange activations inside every block, data and fsdp once per parameter.
MESH_AXES = (DATA, FSDP, CONTEXT, TENSOR)

# Logical axes.
BATCH = 'batch'
FRAMES = 'frames'
ROWS = 'rows'
LENGTH = 'length'
EMBED = 'embed'
MLP = 'mlp'
NORM = 'norm'
LOGICAL_AXES = (BATCH, FRAMES, ROWS, LENGTH, EMBED, MLP, NORM)
VIDEO = (BATCH, FRAMES)   # the leading axes of `[B, F, ...]` arrays

# Logical axes of the `[in, out]` axes of a kernel (see the module docstring).
IN_PROJ = (EMBED, MLP)
OUT_PROJ = (MLP, EMBED)


def output_features(kernel_axes: Sequence[str | None]) -> str | None:
  """Logical axis of the output features of a projection: `MLP` after `IN_PROJ`, whole after `OUT_PROJ`."""
  kernel_axes = tuple(kernel_axes)
  if kernel_axes not in (IN_PROJ, OUT_PROJ):
    raise ValueError(f'kernel axes {kernel_axes}; expected IN_PROJ {IN_PROJ} or OUT_PROJ {OUT_PROJ}')
  return MLP if kernel_axes == IN_PROJ else None

LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    (BATCH, (DATA, FSDP)),
    (FRAMES, CONTEXT),
    (ROWS, (DATA, FSDP, CONTEXT)),
    (LENGTH, None),
    (EMBED, (FSDP, CONTEXT)),
    (MLP, TENSOR),
    (NORM, None),
)


def rules_from_config(config: Mapping[str, str | Sequence[str] | None]) -> tuple[tuple[str, Any], ...]:
  """Logical-axis rules from a mapping `logical axis -> mesh axis, list of mesh axes, or None`.

  E.g. `{'batch': ['data', 'fsdp'], 'frames': 'context', 'rows': ['data', 'fsdp', 'context'],
  'length': None, 'embed': ['fsdp', 'context'], 'mlp': 'tensor', 'norm': None}` gives `LOGICAL_RULES`. Logical
  axes left out are replicated. Accepts a dict or an `ml_collections.ConfigDict`.

  Raises:
    ValueError: naming unknown logical axes, unknown or repeated mesh axes, or a value that is not
      a mesh axis name, a list of them, or None.
  """
  config = dict(config.items())
  unknown = sorted(set(config) - set(LOGICAL_AXES))
  if unknown:
    raise ValueError(f'unknown logical axes {unknown}; expected a subset of {LOGICAL_AXES}')
  rules = []
  for name in LOGICAL_AXES:
    if name not in config:
      continue
    value = config[name]
    if value is None or isinstance(value, str):
      axes = () if value is None else (value,)
    elif isinstance(value, Sequence) and all(isinstance(a, str) for a in value):
      axes = tuple(value)
    else:
      raise ValueError(f'logical axis {name!r} maps to {value!r}; expected a mesh axis name, '
                       'a list of them, or None')
    bad = sorted(set(axes) - set(MESH_AXES))
    if bad:
      raise ValueError(f'logical axis {name!r} maps to unknown mesh axes {bad}; expected some of {MESH_AXES}')
    if len(set(axes)) != len(axes):
      raise ValueError(f'logical axis {name!r} maps to {list(axes)}, which repeats a mesh axis')
    rules.append((name, value if isinstance(value, str) else axes or None))
  return tuple(rules)


def parse_mesh_shape(text: str) -> dict[str, int]:
  """`'data=2,fsdp=4'` -> `{'data': 2, 'fsdp': 4}`, the `shape` of `make_mesh` (-1: the rest)."""
  shape: dict[str, int] = {}
  for item in text.split(','):
    name, sep, size = (part.strip() for part in item.partition('='))
    if not sep or not name:
      raise ValueError(f'mesh shape {text!r}: {item.strip()!r} is not axis=size; expected e.g. '
                       "'data=2,fsdp=4'")
    if name not in MESH_AXES:
      raise ValueError(f'mesh shape {text!r}: unknown mesh axis {name!r}; expected one of {MESH_AXES}')
    if name in shape:
      raise ValueError(f'mesh shape {text!r}: axis {name!r} is given twice')
    try:
      shape[name] = int(size)
    except ValueError:
      raise ValueError(f'mesh shape {text!r}: size {size!r} of {name!r} is not an integer') from None
    if shape[name] < 1 and shape[name] != -1:
      raise ValueError(f'mesh shape {text!r}: size {shape[name]} of {name!r}; expected >= 1 or -1')
  return shape


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh with axes `(data, fsdp, context, tensor)`; `shape` gives their sizes (missing axes are 1).

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


def map_over_rows(fn: Callable[..., jax.Array], logical: Sequence[str | None], *arrays: jax.Array) -> jax.Array:
  """`fn(*arrays)`, each device applying `fn` to its own block (`jax.shard_map`) of arrays laid out
  by `logical` (all the same rank and layout; the result too): for a computation XLA cannot split,
  such as a Pallas kernel, whose rows and heads are independent. Dimensions that do not divide over
  their mesh axes are whole on every device; outside a mesh with logical-axis rules, `fn(*arrays)`."""
  rules, mesh = nn.get_logical_axis_rules(), jax.sharding.get_abstract_mesh()
  if not rules or mesh.empty:
    return fn(*arrays)
  spec = nn.logical_to_mesh_axes(tuple(logical), rules)
  specs = [_fit(spec, x.shape, mesh) for x in arrays]
  common = PartitionSpec(*[axes if all(s[i] == axes for s in specs) else None for i, axes in enumerate(specs[0])])
  return jax.shard_map(fn, mesh=mesh, in_specs=(common,) * len(arrays), out_specs=common, check_vma=False)(*arrays)


def constrain(x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
  """`nn.with_logical_constraint` where the mesh holds the layout exactly: x is left to the compiler
  when a named dimension does not divide over its mesh axes (a batch smaller than the batch shards,
  a VAE decoder chunk of one video), and outside a mesh with logical-axis rules."""
  rules, mesh = nn.get_logical_axis_rules(), jax.sharding.get_abstract_mesh()
  if not rules or mesh.empty:
    return x
  spec = nn.logical_to_mesh_axes(tuple(logical), rules)
  if _fit(spec, x.shape, mesh) != spec:
    return x
  return jax.lax.with_sharding_constraint(x, spec)


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


def video_sharding(mesh: Mesh, ndim: int, rules: Sequence[tuple[str, Any]] = LOGICAL_RULES
                   ) -> NamedSharding:
  """Sharding of a video array `[B, F, ...]`: `BATCH` then `FRAMES`, the rest replicated."""
  spec = nn.logical_to_mesh_axes(VIDEO + (None,) * (ndim - 2), rules)
  return NamedSharding(mesh, spec)
