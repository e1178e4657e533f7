"""Programs kept on disk as serialized StableHLO (`jax.export`), so a later process skips tracing.

JAX's persistent compilation cache saves XLA's compile but not the tracing and lowering that
compute its key; for a small run those cost more than the compile (a warm `sa-animate` traced
for 15 s, docs/performance.md). `jit` stores each program it traces under a key of everything the
tracing depends on: the caller's description of the function (its configs), the arguments' tree,
shapes and dtypes, a digest of sa_jax's sources, the versions of JAX, Flax, Optax and NumPy,
JAX's configuration, and the devices. A later process with the same key deserializes the program
(a flatbuffer, never a pickle) and calls it through `jax.jit`, whose lowering is then the same
each time, so its compile hits JAX's cache.

`stored_json` keeps small derived facts (a network's parameter shapes) the same way.

Files are `<folder>/<key>.jaxexport` (the serialized program behind its sha256) and
`<folder>/<key>.json`, written under a staging name and renamed into place; one that cannot be
read, or does not match its digest, is traced again and replaced.
"""

import functools
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import flax
import jax
import jaxlib
import numpy as np
import optax

from sa_jax import outputs

logger = logging.getLogger(__name__)

FORMAT = 1                   # bump when what a key covers changes
PROGRAM_SUFFIX = '.jaxexport'
_DIGEST_BYTES = 32           # a stored program is sha256(serialized) + serialized
_PACKAGE = Path(__file__).resolve().parent


@functools.cache
def sources_digest() -> str:
  """sha256 of every Python source file of sa_jax (their paths and contents)."""
  digest = hashlib.sha256()
  for path in sorted(_PACKAGE.rglob('*.py')):
    digest.update(str(path.relative_to(_PACKAGE)).encode() + b'\0' + path.read_bytes() + b'\0')
  return digest.hexdigest()


def _environment() -> str:
  """What tracing depends on besides the function and its arguments."""
  device = jax.devices()[0]
  return json.dumps([FORMAT, jax.__version__, jaxlib.__version__, flax.__version__, optax.__version__,
                     np.__version__, device.platform, device.device_kind, jax.device_count(),
                     jax.process_count(), bool(jax.config.jax_enable_x64),
                     str(jax.config.jax_default_matmul_precision), jax.config.jax_numpy_dtype_promotion,
                     sources_digest()])


def key(*parts: Any) -> str:
  """sha256 of `parts` (their `repr`s) and the environment: sa_jax's sources, the libraries, the devices."""
  return hashlib.sha256(repr((_environment(),) + parts).encode()).hexdigest()


def signature(args: Sequence[Any]) -> str:
  """The tree, shapes and dtypes of a call's arguments (all a traced program depends on in them)."""
  leaves, tree = jax.tree.flatten(args)
  return repr((tree, [(np.shape(x), str(x.dtype if hasattr(x, 'dtype') else np.result_type(x)),
                       bool(getattr(x, 'weak_type', False))) for x in leaves]))


def _write(path: Path, data: bytes) -> None:
  """`data` into `path`, complete or not at all (`outputs`: staged, renamed into place); a folder
  that cannot take it costs the next process the work, not this one its run (a warning)."""
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = outputs.staging_path(path)
    try:
      staging.write_bytes(data)
      outputs.replace(staging, path)
    finally:
      staging.unlink(missing_ok=True)
  except OSError as err:
    logger.warning('cannot keep %s (%s); a later run will trace it again', path, err)


def _read_checked(path: Path) -> bytes:
  """A stored program's bytes, checked against the digest in front of them (the flatbuffer parser
  is not made for damaged input)."""
  data = path.read_bytes()
  digest, payload = data[:_DIGEST_BYTES], data[_DIGEST_BYTES:]
  if hashlib.sha256(payload).digest() != digest:
    raise ValueError('its content does not match its digest (truncated or damaged)')
  return payload


def _named(fn: Callable, name: str) -> Callable:
  """`fn` under `name`, the name `jax.jit` gives its program (in compile logs and profiles)."""
  def program(*args):
    return fn(*args)
  program.__name__ = program.__qualname__ = name
  return program


def jit(fn: Callable, description: Any, folder: Path | None, *, name: str | None = None,
        **jit_kwargs: Any) -> Callable:
  """`jax.jit(fn, **jit_kwargs)` whose traced programs are kept in `folder` (None: plain `jax.jit`).

  Args:
    fn: the function; it must not call back into Python (`jax.debug.callback`): such a program
      cannot be serialized.
    description: what `fn` computes besides its arguments (configs, flags): part of the key, so
      it must name everything the trace depends on; `repr` is taken.
    folder: where programs are kept.
    name: the program's name (`jit_<name>` in JAX's logs; default `fn`'s), also part of the key.
    **jit_kwargs: `donate_argnums`, `in_shardings`, `out_shardings` (applied to the loaded program).
  Returns:
    the function, with `.lower(*args)` as a jitted function has (args may be `ShapeDtypeStruct`s).
  """
  fn = _named(fn, name or fn.__name__)
  if folder is None:
    return jax.jit(fn, **jit_kwargs)
  folder = Path(folder)
  programs: dict[str, Callable] = {}

  def program(args: Sequence[Any]) -> Callable:
    shapes = signature(args)
    if shapes not in programs:
      path = folder / f'{key(fn.__name__, description, shapes)}{PROGRAM_SUFFIX}'
      programs[shapes] = jax.jit(_named(_load_or_export(fn, args, path, jit_kwargs).call, fn.__name__),
                                 **jit_kwargs)
    return programs[shapes]

  def call(*args):
    return program(args)(*args)

  call.lower = lambda *args: program(args).lower(*args)
  return call


def _load_or_export(fn: Callable, args: Sequence[Any], path: Path, jit_kwargs: dict[str, Any]) -> jax.export.Exported:
  if path.is_file():
    try:
      exported = jax.export.deserialize(bytearray(_read_checked(path)))
    except (OSError, ValueError) as err:
      logger.warning('stored program %s cannot be read (%s); tracing it again', path, err)
    else:
      logger.debug('program loaded from %s', path)
      return exported
  exported = jax.export.export(jax.jit(fn, **jit_kwargs))(*args)
  payload = bytes(exported.serialize())
  _write(path, hashlib.sha256(payload).digest() + payload)
  logger.debug('program stored in %s', path)
  return exported


def stored_json(folder: Path | None, description: Any, compute: Callable[[], Any]) -> Any:
  """`compute()` (JSON data), kept in `folder` under `description` and the environment (None: computed)."""
  if folder is None:
    return compute()
  path = Path(folder) / f'{key(description)}.json'
  if path.is_file():
    try:
      return json.loads(path.read_text())
    except (OSError, ValueError) as err:
      logger.warning('stored record %s cannot be read (%s); computing it again', path, err)
  value = compute()
  _write(path, json.dumps(value).encode())
  return value
