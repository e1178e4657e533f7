"""sa-jax checkpoints: one directory with the typed config and an orbax parameter tree.

    DIR/config.json   CheckpointConfig.to_json(): {"models": {<one section per network>},
                      "scheduler": {...}, "image_mean": [...], "image_std": [...], "dtype": ..., "source": ...}
    DIR/params/       orbax tree {"unet": ..., "vae": ..., ...} (the names of config["models"])

`CheckpointConfig` is the one reader and writer of `config.json`. Writes go to a temporary
sibling directory that is renamed into place at the end, so a failed save never leaves a
half-written checkpoint under the final name. `load` reads only the networks asked for, straight
into their shardings when given.
"""

import dataclasses
import json
import logging
import os
import re
import shutil
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from sa_jax import diffusion, errors, outputs
from sa_jax.models import clip
from sa_jax.models.stable_animator import ModelConfigs

logger = logging.getLogger(__name__)

CONFIG = 'config.json'
PARAMS = 'params'
OS_ERROR_CODE = re.compile(r"\[os_error_code='(\d+)'\]")  # tensorstore's note of a failed write's errno


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """What a checkpoint's parameters mean.

  Attributes:
    models: the architecture of every network in the checkpoint.
    scheduler: the sigma range of the sampler.
    image_mean, image_std: CLIP normalisation (`feature_extractor/preprocessor_config.json`).
    dtype: the stored parameter dtype.
    source: where the parameters came from (informational; not part of equality).
  """
  models: ModelConfigs
  scheduler: diffusion.ScheduleConfig
  image_mean: tuple[float, ...] = clip.CLIP_MEAN
  image_std: tuple[float, ...] = clip.CLIP_STD
  dtype: str = 'float32'
  source: Any = dataclasses.field(default=None, compare=False, hash=False)

  @classmethod
  def from_json(cls, data: Mapping[str, Any]) -> 'CheckpointConfig':
    """From the `config.json` structure; unknown top-level keys are an error naming them.

    `scheduler` may be a diffusers `scheduler_config.json` (its extra keys are read leniently).
    """
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
      raise ValueError(f'checkpoint config: unknown keys {unknown}; expected {sorted(fields)}')
    if 'models' not in data:
      raise ValueError('checkpoint config has no "models" section')
    return cls(models=ModelConfigs.from_dict(data['models']),
               scheduler=diffusion.ScheduleConfig.from_dict(data.get('scheduler', {})),
               image_mean=tuple(float(v) for v in data.get('image_mean', clip.CLIP_MEAN)),
               image_std=tuple(float(v) for v in data.get('image_std', clip.CLIP_STD)),
               dtype=str(data.get('dtype', 'float32')), source=data.get('source'))

  def to_json(self) -> dict[str, Any]:
    """The `config.json` structure; `from_json` reads it back to an equal config."""
    return dict(models=self.models.to_dict(), scheduler=dataclasses.asdict(self.scheduler),
                image_mean=list(self.image_mean), image_std=list(self.image_std), dtype=self.dtype,
                source=self.source)


def is_checkpoint(directory: str | os.PathLike) -> bool:
  """Whether `directory` is recognisably an sa-jax checkpoint: only `config.json` (JSON with
  "models") and `params/` in it. Only such a folder may be replaced by `save(overwrite=True)`."""
  directory = Path(directory)
  if not directory.is_dir() or directory.is_symlink():
    return False
  if {p.name for p in directory.iterdir()} - {CONFIG, PARAMS}:
    return False
  try:
    data = json.loads((directory / CONFIG).read_text())
  except (OSError, ValueError):
    return False
  return isinstance(data, dict) and 'models' in data


def check_target(directory: str | os.PathLike, overwrite: bool, inputs: Iterable[Any] = ()) -> None:
  """Before any work: `directory` may receive a checkpoint (absent, or with `overwrite` one of ours
  that is not and does not hold an input)."""
  outputs.check_target(directory, overwrite=overwrite, ours=is_checkpoint, what='an sa-jax checkpoint',
                       inputs=inputs)


def save(directory: str | os.PathLike, params: Mapping[str, Any], config: CheckpointConfig,
         overwrite: bool = False, inputs: Iterable[Any] = ()) -> None:
  """Writes `params` (network name -> param tree, one per network of `config.models`) and `config`.

  The checkpoint is built in a hidden sibling and renamed into place; with `overwrite` an existing
  checkpoint (and only a checkpoint, `is_checkpoint`) is replaced once the new one is complete.
  """
  directory = os.path.abspath(os.fspath(directory))
  check_target(directory, overwrite, inputs)
  differ = set(config.models.names) ^ set(params)
  if differ:
    raise ValueError(f'config.models and params must name the same networks; differ in {sorted(differ)}')
  os.makedirs(os.path.dirname(directory), exist_ok=True)
  staging = outputs.staging_path(directory)
  staging.mkdir()
  try:
    _write(staging, params, config, directory)
    check_target(directory, overwrite, inputs)
    outputs.replace(staging, directory)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  logger.info('saved checkpoint %s', directory)


def _write(staging: Path, params: Mapping[str, Any], config: CheckpointConfig, directory: str) -> None:
  """Writes the checkpoint into `staging`; a failed write is one OSError naming `directory` and the cause."""
  try:
    with open(staging / CONFIG, 'w') as f:
      json.dump(config.to_json(), f, indent=2, sort_keys=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(staging / PARAMS, dict(params))
    checkpointer.wait_until_finished()
  except Exception as err:  # orbax and tensorstore wrap the OSError of a failed write in their own types
    raise OSError(f'writing checkpoint {directory} failed: {_write_cause(err)}') from err


def _chain(err: BaseException) -> list[BaseException]:
  """`err` and the exceptions it was raised from or while handling, outermost first."""
  chain = []
  while err is not None and err not in chain:
    chain.append(err)
    err = err.__cause__ or err.__context__
  return chain


def _write_cause(err: Exception) -> str:
  """The system error of a failed write ("No space left on device"), else the innermost message."""
  chain = _chain(err)
  for link in chain:
    if isinstance(link, OSError) and link.errno:
      return link.strerror or os.strerror(link.errno)
  for link in chain:
    if code := OS_ERROR_CODE.search(str(link)):
      return os.strerror(int(code[1]))
  return next((errors.first_line(link) for link in reversed(chain) if str(link).strip()), type(err).__name__)


def load_config(directory: str | os.PathLike) -> CheckpointConfig:
  """The config of a checkpoint directory; any fault is one error naming its `config.json`."""
  path = os.path.join(os.fspath(directory), CONFIG)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{directory} is not an sa-jax checkpoint: no {CONFIG} '
                            '(make one with sa-convert)')
  try:
    with open(path) as f:
      data = json.load(f)
  except OSError as err:
    raise OSError(f'{path}: cannot read ({err.strerror or err})') from err
  except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
    raise ValueError(f'{path}: not valid JSON ({err})') from err
  if not isinstance(data, dict):
    raise ValueError(f'{path}: holds a JSON {type(data).__name__}, expected an object with "models"')
  try:
    return CheckpointConfig.from_json(data)
  except ValueError as err:
    raise ValueError(f'{path}: {errors.one_line(err)}') from err
  except (TypeError, KeyError, AttributeError) as err:  # a section of the wrong type
    raise ValueError(f'{path}: wrong structure ({type(err).__name__}: {errors.first_line(err)})') from err


def _tree_metadata(directory: str, path: str) -> dict[str, Any]:
  """Network name -> metadata tree of the orbax tree at `path` (checkpoint `directory`)."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f'checkpoint {directory}: {PARAMS}/ is missing (not an sa-jax checkpoint, or an '
                            'interrupted copy)')
  try:
    metadata = ocp.PyTreeCheckpointer().metadata(path).item_metadata
  except Exception as err:  # orbax and tensorstore raise many types
    raise ValueError(f'checkpoint {directory} is truncated or corrupt: {errors.first_line(err)}') from err
  if metadata is None:
    raise ValueError(f'checkpoint {directory} is truncated or corrupt: {PARAMS}/ has no readable orbax '
                     'tree metadata')
  tree = getattr(metadata, 'tree', metadata)  # orbax >= 0.12 wraps the tree in a TreeMetadata
  if not isinstance(tree, dict):
    raise ValueError(f'checkpoint {directory}: {PARAMS}/ holds a {type(tree).__name__}, expected a tree of '
                     'networks by name')
  return tree


def load(directory: str | os.PathLike, networks: Sequence[str] | None = None,
         shardings: Mapping[str, Any] | None = None, dtype: Any = None
         ) -> tuple[dict[str, Any], CheckpointConfig]:
  """Reads `(params, config)`, only the param trees of `networks`.

  Args:
    directory: checkpoint directory.
    networks: names to read (default: all in the checkpoint); the others are not read from disk.
    shardings: optional network name -> tree of `jax.sharding.Sharding`: those networks are
      restored straight into their shardings (each host reads only its shards).
    dtype: optional dtype to restore floating parameters as (default: as stored).
  """
  directory = os.path.abspath(os.fspath(directory))
  config = load_config(directory)
  available = config.models.names
  networks = available if networks is None else tuple(networks)
  absent = [n for n in networks if n not in available]
  if absent:
    raise ValueError(f'checkpoint {directory} has no {absent}; it holds {list(available)}')
  path = os.path.join(directory, PARAMS)
  metadata = _tree_metadata(directory, path)
  missing = [n for n in networks if n not in metadata]
  if missing:
    raise ValueError(f'checkpoint {directory}: {PARAMS}/ holds no network {" or ".join(map(repr, missing))} '
                     f'(it has {sorted(metadata)})')

  def leaf(meta, sharding=None):
    cast = dtype if dtype is not None and np.issubdtype(meta.dtype, np.floating) else meta.dtype
    return jax.ShapeDtypeStruct(meta.shape, cast, sharding=sharding)

  target = {}
  for name in networks:
    shard = (shardings or {}).get(name)
    target[name] = jax.tree.map(leaf, metadata[name], shard) if shard is not None else jax.tree.map(
        leaf, metadata[name])
  try:
    restored = ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True))
  except Exception as err:  # orbax and tensorstore raise many types
    raise ValueError(f'checkpoint {directory} is truncated or corrupt: {errors.first_line(err)}') from err
  return dict(restored), config


def count_params(tree: Any) -> int:
  return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(tree)))


def load_npz(path: str | os.PathLike) -> dict[str, Any]:
  """The parameter tree of a small network stored as one `.npz` of '/'-joined paths (`sa-make-dataset`'s
  face embedder and keypoint estimator), never unpickling (an object array is refused)."""
  try:
    with np.load(path, allow_pickle=False) as arrays:
      return traverse_util.unflatten_dict({k: arrays[k] for k in arrays.files}, sep='/')
  except (OSError, ValueError, zipfile.BadZipFile) as err:
    raise ValueError(f'{path}: not a parameter file of sa-make-dataset (.npz of arrays): {err}') from err
