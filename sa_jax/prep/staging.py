"""All-or-nothing output folders: build in a hidden sibling, rename into place at the end.

A failure at any point removes the partial sibling and leaves the target as it was; a success replaces the
target in two renames on the same file system (the old content is deleted only after the new is in place).
Only an empty folder or one `ours` recognises (sa-prep's own output) is replaced, never one that is or
holds an input (`sa_jax.outputs`).
"""

import contextlib
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from sa_jax import outputs


SA_PREP_OUTPUT = 'an sa-prep output folder (no keypoints.json of sa-prep, or other files in it)'


def check_target(out: str | os.PathLike, overwrite: bool, ours: Callable[[Path], bool],
                 inputs: Iterable[str | os.PathLike | None] = (), what: str = SA_PREP_OUTPUT) -> None:
  """Refuses a target that is a file, a non-empty folder without `overwrite`, a non-empty folder that
  `ours` does not recognise as this tool's output (`what` it expected), or one that is or holds an
  input."""
  out = Path(out)
  if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
    outputs.check_not_input(out, inputs)   # an empty folder: fine
    return
  if os.path.lexists(out) and not out.is_dir():
    raise FileExistsError(f'output {out} exists and is not a folder')
  if os.path.lexists(out) and not overwrite:
    raise FileExistsError(f'output folder {out} is not empty; pass --overwrite to replace it')
  outputs.check_target(out, overwrite=overwrite, ours=ours, inputs=inputs, what=what)


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike, overwrite: bool, ours: Callable[[Path], bool],
               inputs: Iterable[str | os.PathLike | None] = (), what: str = SA_PREP_OUTPUT) -> Iterator[Path]:
  """Yields an empty folder next to `out` that becomes `out` when the block ends without error."""
  out = Path(out)
  inputs = list(inputs)
  check_target(out, overwrite, ours, inputs, what)
  out.parent.mkdir(parents=True, exist_ok=True)
  staging = outputs.staging_path(out)
  staging.mkdir()
  try:
    yield staging
    check_target(out, overwrite, ours, inputs, what)
    outputs.replace(staging, out)
  finally:
    if staging.exists():
      shutil.rmtree(staging)
