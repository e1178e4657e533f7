"""sa-jax checkpoints: one directory with the model configs and an orbax parameter tree.

    DIR/config.json   {"models": {unet, vae, image_encoder, pose_net, face_encoder[, face_embedder]},
                       "scheduler": {...}, "image_mean": [...], "image_std": [...], "dtype": ..., ...}
    DIR/params/       orbax tree {"unet": ..., "vae": ..., ...} (same names as config["models"])

Writes go to a temporary sibling directory that is renamed into place at the end, so a failed
save never leaves a half-written checkpoint under the final name.
"""

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

logger = logging.getLogger(__name__)

CONFIG = 'config.json'
PARAMS = 'params'


def save(directory: str | os.PathLike, params: Mapping[str, Any], config: Mapping[str, Any],
         overwrite: bool = False) -> None:
  """Writes `params` (a dict of network name -> param tree) and `config` to `directory`."""
  directory = os.path.abspath(os.fspath(directory))
  if os.path.exists(directory) and not overwrite:
    raise FileExistsError(f'{directory} exists; pass overwrite=True (--overwrite) to replace it')
  missing = set(config.get('models', {})) ^ set(params)
  if missing:
    raise ValueError(f'config["models"] and params must name the same networks; differ in {sorted(missing)}')
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix='.' + os.path.basename(directory) + '.', dir=parent)
  try:
    with open(os.path.join(staging, CONFIG), 'w') as f:
      json.dump(config, f, indent=2, sort_keys=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(staging, PARAMS), dict(params))
    checkpointer.wait_until_finished()
    if os.path.exists(directory):
      shutil.rmtree(directory)
    os.replace(staging, directory)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  logger.info('saved checkpoint %s', directory)


def load_config(directory: str | os.PathLike) -> dict[str, Any]:
  """The `config.json` of a checkpoint directory."""
  path = os.path.join(os.fspath(directory), CONFIG)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{directory} is not an sa-jax checkpoint: no {CONFIG} '
                            '(make one with sa-convert)')
  with open(path) as f:
    return json.load(f)


def load(directory: str | os.PathLike, networks: tuple[str, ...] | None = None,
         shardings: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
  """Reads `(params, config)`; `networks` restricts which param trees are read.

  Args:
    directory: checkpoint directory.
    networks: names to read (default: all in the checkpoint).
    shardings: optional network name -> tree of `jax.sharding.Sharding` to place params on a mesh.
  """
  directory = os.path.abspath(os.fspath(directory))
  config = load_config(directory)
  available = tuple(config['models'])
  networks = available if networks is None else tuple(networks)
  absent = [n for n in networks if n not in available]
  if absent:
    raise ValueError(f'checkpoint {directory} has no {absent}; it holds {list(available)}')
  checkpointer = ocp.StandardCheckpointer()
  path = os.path.join(directory, PARAMS)
  metadata = checkpointer.metadata(path).item_metadata
  target = {}
  for name in available:
    shard = (shardings or {}).get(name)
    def leaf(meta, sharding=None):
      return jax.ShapeDtypeStruct(meta.shape, meta.dtype, sharding=sharding)
    tree = metadata[name]
    target[name] = (jax.tree.map(leaf, tree, shard) if shard is not None else jax.tree.map(leaf, tree))
  restored = checkpointer.restore(path, target)
  return {n: restored[n] for n in networks}, config


def count_params(tree: Any) -> int:
  return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(tree)))
