"""Discovery of golden reference cases (`$SA_REFERENCE_DIR`, default `tests/reference`).

A case is a folder holding `case.json` and `io.npz`; its kind is the `case` field of
`case.json`. Tests parametrise over `cases(kind)` and build every model from the case's own
config, so another reference set with other shapes passes the same tests.
"""

import dataclasses
import json
import os
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_DIR = Path(__file__).resolve().parents[1] / 'reference'


def reference_dir() -> Path:
  """The reference directory; a missing directory is an error, never a silent skip."""
  path = Path(os.environ.get('SA_REFERENCE_DIR', DEFAULT_DIR))
  if not path.is_dir():
    raise FileNotFoundError(f'reference directory {path} does not exist (set SA_REFERENCE_DIR)')
  return path


@dataclasses.dataclass(frozen=True)
class Case:
  """One golden case: its folder, `case.json` and arrays."""
  path: Path

  @property
  def name(self) -> str:
    return self.path.name

  @cached_property
  def meta(self) -> Mapping[str, Any]:
    return json.loads((self.path / 'case.json').read_text())

  @cached_property
  def io(self) -> Mapping[str, np.ndarray]:
    with np.load(self.path / 'io.npz') as data:
      return {k: data[k] for k in data.files}

  def weights(self) -> dict[str, Path]:
    """The weight paths of a case that names them (`pipeline`, `train_step`): case.json's
    `"name (comment)": "relative path (comment)"` entries, resolved."""
    return {k.split(' ')[0]: (self.path / v.split(' ')[0]).resolve() for k, v in self.meta['weights'].items()}

  def release_paths(self) -> Any:
    """The case's weights as `convert.release.ReleasePaths` (the release layout the converter reads)."""
    from convert import release
    weights = self.weights()
    return release.ReleasePaths(
        unet_config=weights['unet'] / 'unet', vae=weights['vae'], image_encoder=weights['image_encoder'],
        unet=weights['unet'] / 'unet.pth', pose_net=weights['pose_net'], face_encoder=weights['face_encoder'],
        face_embedder=weights.get('face_embedding_extractor'), scheduler=weights['scheduler'],
        feature_extractor=weights['feature_extractor'])

  def __str__(self) -> str:
    return self.name


def cases(kind: str) -> list[Case]:
  """All cases of one kind (`case.json["case"] == kind`) of `reference_dir()`, sorted by folder name."""
  return cases_in(reference_dir(), kind)


def cases_in(root: Path, kind: str) -> list[Case]:
  """All cases of one kind under `root`, sorted by folder name."""
  found = []
  for folder in sorted(p for p in root.iterdir() if (p / 'case.json').is_file()):
    if json.loads((folder / 'case.json').read_text()).get('case') == kind:
      found.append(Case(folder))
  return found


def assert_close(actual: Any, expected: np.ndarray, atol: Any, rtol: Any = 0.0,
                 name: str = '') -> tuple[float, float]:
  """Asserts `|a - e| <= atol + rtol |e|` elementwise; returns (max abs err, max rel err).

  `atol` and `rtol` are scalars or arrays broadcasting against `expected` (elementwise bounds).
  """
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  if actual.shape != expected.shape:
    raise AssertionError(f'{name}: shape {actual.shape} != reference {expected.shape}')
  err = np.abs(actual - expected)
  max_abs = float(err.max(initial=0.0))
  max_rel = max_abs / max(float(np.abs(expected).max(initial=0.0)), 1e-30)
  bound = np.asarray(atol, np.float64) + np.asarray(rtol, np.float64) * np.abs(expected)
  bad = err > bound
  if bad.any():
    worst = tuple(int(i) for i in np.unravel_index(np.argmax(np.where(bad, err - bound, -np.inf)), err.shape))
    raise AssertionError(f'{name}: {int(bad.sum())}/{bad.size} elements off; max abs err {max_abs:.3g}, '
                         f'worst excess {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst}, '
                         f'max abs err / max |ref| {max_rel:.3g}')
  return max_abs, max_rel


def config_fields(config_class: type, config: Mapping[str, Any]) -> dict[str, Any]:
  """The entries of a case's `config` that `config_class` has fields for; a case also describes
  the reference module (e.g. the IResNet's fixed `widths`, `fp16`), which our strict configs refuse."""
  names = {f.name for f in dataclasses.fields(config_class)}
  return {k: v for k, v in config.items() if k in names}
