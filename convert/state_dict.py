"""Reading torch/safetensors state dicts and mapping their names onto Flax parameter trees.

The mapping is generic; each model only lists the few names that differ (`KeyMap.renames`):
  * a torch key `a.b.0.c.weight` becomes the Flax path `('a', 'b_0', 'c', 'kernel')`: numeric
    segments join the segment before them (Flax names list members `b_0`), `weight` becomes
    `kernel` (Dense/Conv) or `scale` (1-D: norms);
  * kernels change layout: Linear `(out, in)` -> `(in, out)`, Conv `(O, I, *k)` -> `(*k, I, O)`;
    this is the one NCHW -> NHWC change of the whole library (STYLE rule 6).
Conversion is strict: every expected parameter must be produced with the expected shape, and
every source tensor must be used; all offenders are listed in one error.
"""

import dataclasses
import json
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from sa_jax import errors

logger = logging.getLogger(__name__)

Path = tuple[str, ...]


class CheckpointMismatchError(ValueError):
  """A state dict does not fit the model: lists missing, unexpected and mis-shaped tensors."""


def _read_pth(path: str) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError as e:
    raise ImportError(f'reading {path} needs PyTorch: pip install "sa-jax[torch]"') from e
  try:
    # weights_only: never unpickle arbitrary objects from a downloaded file.
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, pickle.UnpicklingError) as e:
    raise ValueError(f'{path}: not a readable torch state dict ({type(e).__name__}: {errors.first_line(e)})') from e
  if not isinstance(obj, Mapping):
    raise ValueError(f'{path}: expected a state dict (mapping of name to tensor), got {type(obj).__name__}')
  out = {}
  for name, tensor in obj.items():
    if not isinstance(tensor, torch.Tensor):
      raise ValueError(f'{path}: entry {name!r} is a {type(tensor).__name__}, not a tensor')
    if tensor.dtype == torch.bfloat16:
      tensor = tensor.float()
    out[name] = tensor.detach().cpu().numpy()
  return out


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  import ml_dtypes  # noqa: F401  registers bfloat16 with numpy for safetensors' loader
  from safetensors.numpy import load_file
  try:
    return dict(load_file(path))
  except Exception as e:  # safetensors raises its own error types for corrupt headers
    raise ValueError(f'{path}: not a readable safetensors file ({type(e).__name__}: {errors.first_line(e)})') from e


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a `.pth`/`.pt`/`.bin` (torch, `weights_only=True`) or `.safetensors` file into numpy."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'weights file not found: {path}')
  if path.endswith('.safetensors'):
    return _read_safetensors(path)
  if path.endswith(('.pth', '.pt', '.bin', '.ckpt')):
    return _read_pth(path)
  raise ValueError(f'{path}: unknown weights format (expected .safetensors, .pth, .pt or .bin)')


def find_weights(folder: str | os.PathLike, stem: str) -> str:
  """The weights file of a diffusers/transformers folder: `<stem>.safetensors`, else its fp16 variant."""
  folder = os.fspath(folder)
  for name in (f'{stem}.safetensors', f'{stem}.fp16.safetensors', f'{stem}.bin', f'{stem}.fp16.bin'):
    candidate = os.path.join(folder, name)
    if os.path.isfile(candidate):
      return candidate
  raise FileNotFoundError(f'no {stem}[.fp16].safetensors or .bin in {folder}')


def read_json(path: str | os.PathLike, what: str) -> dict[str, Any]:
  """A JSON config file, with errors that name the file and what it should hold."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{what} not found: {path}')
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: not valid JSON ({e})') from e


def _split_index(component: str, atomic: frozenset[str]) -> list[str]:
  if component in atomic:
    return [component]
  m = re.fullmatch(r'(.*?[^_])((?:_\d+)+)', component)
  if not m:
    return [component]
  return [m.group(1)] + m.group(2)[1:].split('_')


def _replace_segments(name: str, old: str, new: str) -> str:
  return ('.' + name + '.').replace('.' + old + '.', '.' + new + '.')[1:-1]


@dataclasses.dataclass(frozen=True)
class KeyMap:
  """How one model's torch names differ from its Flax paths.

  Attributes:
    renames: `(torch, flax)` dotted name fragments, replaced on whole segments, in order.
    ignore: regexes of torch keys that carry no parameter (buffers such as BatchNorm counters).
    atomic: Flax/torch names that end in `_<digits>` but are not list members (`linear_1`).
  """
  renames: tuple[tuple[str, str], ...] = ()
  ignore: tuple[str, ...] = ()
  atomic: frozenset[str] = frozenset({'linear_1', 'linear_2'})

  def ignored(self, key: str) -> bool:
    return any(re.fullmatch(p, key) for p in self.ignore)

  def to_path(self, key: str, ndim: int) -> Path:
    """Torch key -> Flax path, e.g. `down_blocks.0.conv.weight` -> `('down_blocks_0','conv','kernel')`."""
    for old, new in self.renames:
      key = _replace_segments(key, old, new)
    path: list[str] = []
    for seg in key.split('.'):
      if seg.isdigit() and path:
        path[-1] = f'{path[-1]}_{seg}'
      else:
        path.append(seg)
    if path[-1] == 'weight':
      path[-1] = 'kernel' if ndim >= 2 else 'scale'
    return tuple(path)

  def to_key(self, path: Path) -> str:
    """Flax path -> torch key (inverse of `to_path`)."""
    *parents, leaf = path
    segs = [s for comp in parents for s in _split_index(comp, self.atomic)]
    segs.append('weight' if leaf in ('kernel', 'scale') and parents else leaf)
    key = '.'.join(segs)
    for old, new in reversed(self.renames):
      key = _replace_segments(key, new, old)
    return key


def to_flax_layout(leaf: str, x: np.ndarray) -> np.ndarray:
  """Torch tensor -> Flax layout (kernels only change)."""
  if leaf != 'kernel' or x.ndim < 2:
    return x
  if x.ndim == 2:
    return x.T                                          # (out, in) -> (in, out)
  return x.transpose(*range(2, x.ndim), 1, 0)           # (O, I, *k) -> (*k, I, O)


def to_torch_layout(leaf: str, x: np.ndarray) -> np.ndarray:
  """Flax layout -> torch tensor layout (inverse of `to_flax_layout`)."""
  if leaf != 'kernel' or x.ndim < 2:
    return x
  if x.ndim == 2:
    return x.T
  n = x.ndim - 2
  return x.transpose(n + 1, n, *range(n))               # (*k, I, O) -> (O, I, *k)


def _shape_of(x: Any) -> tuple[int, ...]:
  return tuple(x.shape) if hasattr(x, 'shape') else tuple(x)


def _format(items: Iterable[str], limit: int = 50) -> str:
  items = sorted(items)
  shown = '\n    '.join(items[:limit])
  more = f'\n    ... and {len(items) - limit} more' if len(items) > limit else ''
  return f'\n    {shown}{more}'


def convert(state_dict: Mapping[str, np.ndarray], expected: Any, keymap: KeyMap,
            dtype: Any = np.float32, source: str = 'state dict') -> dict[str, Any]:
  """Maps a torch state dict onto a Flax parameter tree, strictly.

  Args:
    state_dict: torch name -> array (torch layout, any float dtype).
    expected: nested dict of the model's parameters (arrays or ShapeDtypeStructs) giving the
      paths and shapes that must be produced.
    keymap: the model's naming differences.
    dtype: dtype of the produced arrays.
    source: name of the source for error messages (a file path).
  Returns:
    Nested dict of numpy arrays with exactly the paths and shapes of `expected`.
  Raises:
    CheckpointMismatchError: listing every missing, unexpected and mis-shaped tensor, and every
      tensor that is not floating point or holds NaN or infinite values.
  """
  want = {p: _shape_of(v) for p, v in traverse_util.flatten_dict(expected).items()}
  got: dict[Path, np.ndarray] = {}
  seen: set[Path] = set()
  unexpected, mismatched, unusable = [], [], []
  for key, value in state_dict.items():
    if keymap.ignored(key):
      continue
    value = np.asarray(value)
    if not np.issubdtype(value.dtype, np.floating):
      unusable.append(f'{key}: dtype {value.dtype}, expected floating point')
      continue
    bad = int(value.size - np.count_nonzero(np.isfinite(value)))
    if bad:
      unusable.append(f'{key}: {bad} of {value.size} values are NaN or infinite')
      continue
    path = keymap.to_path(key, value.ndim)
    if path not in want:
      unexpected.append(f'{key} {tuple(value.shape)}')
      continue
    seen.add(path)
    array = to_flax_layout(path[-1], value)
    if array.shape != want[path]:
      needed = to_torch_layout(path[-1], np.broadcast_to(np.int8(0), want[path])).shape
      mismatched.append(f'{key}: {tuple(value.shape)} in the file, the model needs {needed}')
      continue
    got[path] = array.astype(dtype)
  missing = [f'{keymap.to_key(p)} {to_torch_layout(p[-1], np.broadcast_to(np.int8(0), s)).shape}'
             for p, s in want.items() if p not in seen and keymap.to_key(p) not in
             {u.split(':')[0] for u in unusable}]
  if missing or unexpected or mismatched or unusable:
    parts = [f'{source} does not match the model:']
    if missing:
      parts.append(f'  missing ({len(missing)}):{_format(missing)}')
    if unexpected:
      parts.append(f'  unexpected ({len(unexpected)}):{_format(unexpected)}')
    if mismatched:
      parts.append(f'  wrong shape ({len(mismatched)}):{_format(mismatched)}')
    if unusable:
      parts.append(f'  unusable values ({len(unusable)}):{_format(unusable)}')
    raise CheckpointMismatchError('\n'.join(parts))
  return traverse_util.unflatten_dict(got)


def export(params: Any, keymap: KeyMap, dtype: Any = np.float32) -> dict[str, np.ndarray]:
  """Flax parameter tree -> torch-named state dict of numpy arrays in torch layout."""
  out = {}
  for path, value in traverse_util.flatten_dict(params).items():
    out[keymap.to_key(path)] = np.ascontiguousarray(
        to_torch_layout(path[-1], np.asarray(value))).astype(dtype)
  return out
