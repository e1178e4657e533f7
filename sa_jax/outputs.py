"""Outputs that cannot destroy: a tool replaces only what it recognisably wrote, never its inputs.

Every tool writes its output under a hidden staging name beside the target and renames it into
place at the end (`replace`): an existing target is first renamed aside and deleted only once the
new output is in place, so a crash leaves one of the two intact. Before any work, `check_target`
refuses a target that exists without `--overwrite`, one that is or holds one of the run's inputs,
and one that is not what the tool writes (each tool passes its recogniser: a checkpoint with our
`config.json`, the exact files `sa-animate` names, a prep folder with its keypoints manifest).
Hidden `.<name>.partial-<pid>-<tag>` / `.<name>.old-<pid>-<tag>` siblings left by a killed run are
recognised by their dead process and cleaned up by the next run (`remove_stale`).
"""

import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path


def _inside(path: Path, folder: Path) -> bool:
  return path == folder or folder in path.parents


def check_target(target: str | os.PathLike, *, overwrite: bool, ours: Callable[[Path], bool], what: str,
                 inputs: Iterable[str | os.PathLike | None] = ()) -> None:
  """Refuses to write `target` where that could lose data (one-line FileExistsError naming it).

  Args:
    target: the output path (file or folder).
    overwrite: the user's `--overwrite`.
    ours: whether an existing `target` is recognisably this tool's output.
    what: the tool's output, in words ("an sa-jax checkpoint"), for the message.
    inputs: the run's input paths (None entries are skipped): the target may not be or hold one.
  """
  target = Path(target)
  resolved = target.resolve()
  for source in inputs:
    if source is not None and _inside(Path(source).resolve(), resolved):
      raise FileExistsError(f'output {target} is or holds the input {source}; choose another output')
  if not os.path.lexists(target):
    return
  if not overwrite:
    raise FileExistsError(f'output {target} exists; pass --overwrite to replace it')
  if target.is_symlink() or not ours(target):
    raise FileExistsError(f'output {target} exists and is not {what}; refusing to replace it '
                          '(remove it yourself or choose another output)')


def _hidden(target: Path, kind: str) -> Path:
  return target.parent / f'.{target.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}'


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def remove_stale(target: str | os.PathLike) -> None:
  """Cleans up after a killed earlier run writing `target` (its process is gone): partial outputs
  are removed; an old output it had moved aside is put back if the new one never arrived, else removed."""
  target = Path(target)
  if not target.parent.is_dir():
    return
  pattern = re.compile(re.escape(f'.{target.name}.') + r'(partial|old)-(\d+)-[0-9a-f]{8}')
  for path in sorted(target.parent.iterdir()):
    match = pattern.fullmatch(path.name)
    if not match or int(match[2]) == os.getpid() or _alive(int(match[2])):
      continue
    if match[1] == 'old' and not os.path.lexists(target):
      os.replace(path, target)
    elif path.is_dir() and not path.is_symlink():
      shutil.rmtree(path)
    else:
      path.unlink()


def staging_path(target: str | os.PathLike) -> Path:
  """A fresh hidden sibling of `target` to build the output in (stale ones of killed runs go first)."""
  target = Path(target)
  remove_stale(target)
  return _hidden(target, 'partial')


def replace(staged: str | os.PathLike, target: str | os.PathLike) -> None:
  """Renames `staged` to `target`; an existing target is renamed aside first and removed after."""
  staged, target = Path(staged), Path(target)
  if not os.path.lexists(target):
    os.replace(staged, target)
    return
  aside = _hidden(target, 'old')
  os.replace(target, aside)
  try:
    os.replace(staged, target)
  except OSError:
    os.replace(aside, target)
    raise
  if aside.is_dir() and not aside.is_symlink():
    shutil.rmtree(aside)
  else:
    aside.unlink()
