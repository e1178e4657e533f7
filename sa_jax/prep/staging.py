"""All-or-nothing output folders: build in a hidden sibling, rename into place at the end.

A failure at any point removes the partial sibling and leaves the target as it was; a success replaces the
target in two renames on the same file system (the old content is deleted only after the new is in place).
"""

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


def check_target(out: str | os.PathLike, overwrite: bool) -> None:
  """Refuses a target that is a file, or a non-empty folder unless `overwrite`."""
  out = Path(out)
  if not out.exists():
    return
  if not out.is_dir():
    raise FileExistsError(f'output {out} exists and is not a folder')
  if not overwrite and any(out.iterdir()):
    raise FileExistsError(f'output folder {out} is not empty; pass --overwrite to replace it')


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
  """Yields an empty folder next to `out` that becomes `out` when the block ends without error."""
  out = Path(out)
  check_target(out, overwrite)
  out.parent.mkdir(parents=True, exist_ok=True)
  tag = f'{os.getpid()}-{uuid.uuid4().hex[:8]}'
  staging = out.parent / f'.{out.name}.partial-{tag}'
  staging.mkdir()
  try:
    yield staging
    check_target(out, overwrite)
    if out.exists():
      old = out.parent / f'.{out.name}.old-{tag}'
      os.rename(out, old)
      try:
        os.rename(staging, out)
      except OSError:
        os.rename(old, out)
        raise
      shutil.rmtree(old)
    else:
      os.rename(staging, out)
  finally:
    if staging.exists():
      shutil.rmtree(staging)
