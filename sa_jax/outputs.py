"""Outputs that cannot destroy: a tool replaces only what it recognisably wrote, never its inputs.

Every tool writes its output under a hidden staging name beside the target and renames it into
place at the end (`replace`): an existing target is first renamed aside and deleted only once the
new output is in place, so a crash leaves one of the two intact. Before any work, `check_target`
refuses a target that exists without `--overwrite`, one that is or holds one of the run's inputs,
and one that is not what the tool writes (each tool passes its recogniser: a checkpoint with our
`config.json`, the exact files `sa-animate` names, a prep folder with its keypoints manifest).
Hidden `.<name>.partial-<pid>-<tag>` / `.<name>.old-<pid>-<tag>` siblings left by a killed run are
recognised by their dead process and cleaned up by the next run (`remove_stale`). `check_space`
refuses, before any work, an output folder that cannot be created or written or whose file system
lacks room for a lower bound of the output's size.

Interrupts: under `stop_on_signals()` SIGINT and SIGTERM raise `Interrupted` and are remembered
(under `defer_first_signal()` the first one is only remembered, for a loop to act on between steps).
`commit` (and `replace`, a commit of one) refuses to rename anything into place once one arrived,
so even a signal whose exception was swallowed (JAX's garbage-collection callbacks print "Exception
ignored" and go on) leaves nothing under a final name; a signal that arrives during a commit is
held until its renames are done, so a commit is never cut in half.
"""

import contextlib
import os
import re
import shutil
import signal
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

SIGNATURE = 'sa-jax'       # written into the files the tools make (PNG text, GIF and MP4 comments)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []   # signals that arrived under `stop_on_signals`, in order
_held = 0                   # > 0 while a commit renames: signals are recorded, raised after it
_deferring = 0              # > 0 while a loop takes a first signal at its next safe point (`defer_first_signal`)
_staged_here: set[str] = set()   # staging names this process made (a killed run may have had our pid)


class Interrupted(KeyboardInterrupt):
  """SIGINT or SIGTERM stopped the run (a KeyboardInterrupt, so `except Exception` does not catch it)."""

  def __init__(self, signum: int):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum


def _on_signal(signum: int, frame: object) -> None:
  del frame
  _received.append(signum)
  if not _held and not (_deferring and len(_received) == 1):
    raise Interrupted(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
  """SIGINT and SIGTERM raise `Interrupted` inside this context (in the main thread; elsewhere, and
  for a signal the process was started ignoring, nothing changes); the previous handlers come back
  at the end and the signals received are forgotten."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  _received.clear()
  previous = {signum: signal.signal(signum, _on_signal) for signum in STOP_SIGNALS
              if signal.getsignal(signum) is not signal.SIG_IGN}
  try:
    yield
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)
    _received.clear()


@contextlib.contextmanager
def defer_first_signal() -> Iterator[None]:
  """Inside, the first stop signal is only recorded: a loop finds it with `received_signal` at its
  next safe point (sa-train: between steps, where it saves the step reached); a second one raises
  `Interrupted` at once (a loop stuck in a step still stops)."""
  global _deferring
  _deferring += 1
  try:
    yield
  finally:
    _deferring -= 1


def received_signal() -> int | None:
  """The first stop signal that arrived under `stop_on_signals`, if any."""
  return _received[0] if _received else None


def check_interrupted() -> None:
  """Raises `Interrupted` if a stop signal arrived, even one whose exception was swallowed."""
  if _received:
    raise Interrupted(_received[0])


def _existing_ancestor(path: Path) -> Path:
  path = Path(os.path.abspath(path))
  while not path.exists() and path != path.parent:
    path = path.parent
  return path


def check_space(folder: str | os.PathLike, need_bytes: int, what: str) -> None:
  """Before any work: `folder` (absent ones are created later) is a writable folder with at least
  `need_bytes` free (a lower bound of the output's size); one-line OSError naming it otherwise."""
  folder = Path(folder)
  base = _existing_ancestor(folder)
  if not base.is_dir():
    raise NotADirectoryError(f'cannot write {what} into {folder}: {base} is not a folder')
  if not os.access(base, os.W_OK | os.X_OK):
    raise PermissionError(f'cannot write {what} into {folder}: {base} is not writable')
  free = shutil.disk_usage(base).free
  if free < need_bytes:
    raise OSError(f'not enough free space for {what} in {folder}: {free / 2**20:,.0f} MiB free, '
                  f'at least {need_bytes / 2**20:,.0f} MiB needed')


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
  check_not_input(target, inputs)
  remove_stale(target)
  if not os.path.lexists(target):
    return
  if not overwrite:
    raise FileExistsError(f'output {target} exists; pass --overwrite to replace it')
  if target.is_symlink() or not ours(target):
    raise FileExistsError(f'output {target} exists and is not {what}; refusing to replace it '
                          '(remove it yourself or choose another output)')


def check_not_input(target: str | os.PathLike, inputs: Iterable[str | os.PathLike | None]) -> None:
  """Refuses an output `target` that is or holds one of the run's `inputs` (None entries skipped)."""
  resolved = Path(target).resolve()
  for source in inputs:
    if source is not None and _inside(Path(source).resolve(), resolved):
      raise FileExistsError(f'output {target} is or holds the input {source}; choose another output')


def _hidden(target: Path, kind: str) -> Path:
  path = target.parent / f'.{target.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}'
  _staged_here.add(path.name)
  return path


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
    if not match or path.name in _staged_here or (int(match[2]) != os.getpid() and _alive(int(match[2]))):
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
  """Renames `staged` to `target` (a `commit` of one)."""
  commit([(staged, target)])


def commit(moves: Sequence[tuple[str | os.PathLike, str | os.PathLike]]) -> None:
  """Renames each staged output to its target, in order; an existing target is renamed aside first
  and removed once its replacement is in place.

  Refuses (`Interrupted`) once a stop signal arrived; one that arrives during the renames is
  recorded and raised when they are all done, so no commit is left half made.
  """
  global _held
  check_interrupted()
  _held += 1
  try:
    for staged, target in moves:
      _rename_into_place(Path(staged), Path(target))
  finally:
    _held -= 1
  check_interrupted()


def _rename_into_place(staged: Path, target: Path) -> None:
  if not os.path.lexists(target):
    os.replace(staged, target)
    return
  aside = _hidden(target, 'old')
  os.replace(target, aside)
  try:
    os.replace(staged, target)
  except BaseException:
    os.replace(aside, target)
    raise
  if aside.is_dir() and not aside.is_symlink():
    shutil.rmtree(aside)
  else:
    aside.unlink()
