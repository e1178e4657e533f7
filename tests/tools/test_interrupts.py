"""Interrupts and kills of sa-convert and sa-animate processes at several points (issue 12).

Each run replaces an earlier complete output (`--overwrite`) and is stopped at a point recognised
from its stderr (JAX's compile log, the progress bar) or from its staging folder appearing; the
denoising, decoding and writing stages are interrupted in this process, the signal sent right
after their programs are dispatched or the first frame is written:
SIGINT/SIGTERM must end it with exit status 130/143, the earlier output byte for byte intact and
nothing new under a final name; after SIGKILL the next run removes the killed run's staging and
replaces the output. The animation runs share the default persistent compilation cache with this
process, which made the first (complete) animation: they compile nothing, which the last run checks.
They animate the bundled sample with the session's micro model (tests/micro_model.py): what an
interrupt does does not depend on the model, and each run traces and loads several times less.
"""

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import pytest

from sa_jax import animate, checkpoint
from sa_jax.prep import frames as frame_io
from sa_jax.sampling import pipeline
import tools
from tools import animate as animate_tool

ROOT = Path(__file__).resolve().parents[2]
LOG_COMPILES = {'JAX_LOG_COMPILES': '1', 'JAX_EXPLAIN_CACHE_MISSES': '1'}
POINT_TIMEOUT_S = 600      # generous for a loaded 2-core machine; a missed point fails, it never hangs

pytestmark = pytest.mark.heavy


class Run:
  """A tool started in a subprocess, its stderr collected as it arrives (progress bars too)."""

  def __init__(self, *args: str):
    # os.environ as the test sees it, not as it was at import: $XDG_CACHE_HOME is the session's
    # (tests/conftest.py), whose compilation cache the module's first animation filled.
    self.process = subprocess.Popen([sys.executable, '-m', *args], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, cwd=ROOT, env={**os.environ, **LOG_COMPILES})
    self.chunks: list[str] = []
    self.reader = threading.Thread(target=self._read, daemon=True)
    self.reader.start()

  def _read(self) -> None:
    while chunk := os.read(self.process.stderr.fileno(), 65536):
      self.chunks.append(chunk.decode(errors='replace'))

  @property
  def stderr(self) -> str:
    return ''.join(self.chunks)

  def stop_when(self, point: Callable[[], bool], signum: int) -> int:
    """Sends `signum` as soon as `point()` holds; returns the exit status."""
    deadline = time.monotonic() + POINT_TIMEOUT_S
    while not point():
      assert self.process.poll() is None, f'ended (status {self.process.returncode}) before the point:\n' + \
          self.stderr[-3000:]
      assert time.monotonic() < deadline, 'the point never came:\n' + self.stderr[-3000:]
      time.sleep(0.002)
    self.process.send_signal(signum)
    return self.wait()

  def wait(self) -> int:
    status = self.process.wait(timeout=POINT_TIMEOUT_S)
    self.reader.join()
    return status


def logged(run: Run, text: str, times: int = 1) -> Callable[[], bool]:
  return lambda: ''.join(run.chunks).count(text) >= times


def staged(target: Path) -> Callable[[], bool]:
  """Whether the staging folder of `target` (`.<name>.partial-<pid>-<tag>`) exists."""
  return lambda: any(p.name.startswith(f'.{target.name}.partial-') for p in target.parent.iterdir())


def contents(folder: Path) -> dict[str, tuple[str, int, int]]:
  """sha256, inode and modification time of every visible file under `folder` (a file replaced by
  an identical one shows too)."""
  found = {}
  for path in sorted(folder.rglob('*')):
    if path.is_file() and not any(part.startswith('.') for part in path.relative_to(folder).parts):
      info = path.stat()
      found[str(path.relative_to(folder))] = (hashlib.sha256(path.read_bytes()).hexdigest(), info.st_ino,
                                              info.st_mtime_ns)
  return found


def hidden(folder: Path) -> list[str]:
  return sorted(p.name for p in folder.iterdir() if p.name.startswith('.'))


def _assert_stopped(run: Run, status: int, signum: int, folder: Path, before: dict[str, str]) -> None:
  assert status == tools.SIGNAL_EXIT + signum, f'exit status {status}:\n{run.stderr[-3000:]}'
  assert f'stopped by {signal.Signals(signum).name}' in run.stderr
  assert 'Traceback' not in run.stderr, run.stderr[-3000:]
  assert contents(folder) == before, 'the earlier output changed or a new one appeared'


def test_conversion_interrupted_or_killed(release_dir, checkpoint_dir, tmp_path):
  out = tmp_path / 'ckpt'
  shutil.copytree(checkpoint_dir, out)            # the earlier output an interrupted run must not lose
  before = contents(tmp_path)
  command = ('tools.convert', '--release', str(release_dir), '--out', str(out), '--overwrite')

  run = Run(*command)
  _assert_stopped(run, run.stop_when(logged(run, 'converting'), signal.SIGTERM), signal.SIGTERM, tmp_path, before)
  assert hidden(tmp_path) == []
  run = Run(*command)
  _assert_stopped(run, run.stop_when(staged(out), signal.SIGINT), signal.SIGINT, tmp_path, before)

  run = Run(*command)
  assert run.stop_when(staged(out), signal.SIGKILL) == -signal.SIGKILL
  assert contents(tmp_path) == before and hidden(tmp_path), 'a killed run leaves only its hidden staging'
  assert Run(*command).wait() == 0
  assert hidden(tmp_path) == [], "the next run removes the killed run's staging"
  assert contents(tmp_path)['ckpt/config.json'] != before['ckpt/config.json'], 'replaced by the new conversion'
  new, old = (checkpoint.load(folder, ['pose_net'])[0]['pose_net'] for folder in (out, checkpoint_dir))
  assert jax.tree.all(jax.tree.map(np.array_equal, new, old)), 'the same weights'


@pytest.fixture(scope='module')
def animation(tmp_path_factory, micro_checkpoint):
  """A complete animation made in this process, so the default persistent compilation cache holds
  its programs (the subprocesses inherit this environment): `(command, folder, output)`; the
  command's arguments after the module name are those of an in-process rerun."""
  folder = tmp_path_factory.mktemp('animation')
  out = folder / 'demo.mp4'
  # 0 x 0: the sample's own size (--input alone would generate at 512 x 512).
  args = ('--checkpoint', str(micro_checkpoint), '--input', str(animate.SAMPLE_DIR), '--width', '0', '--height', '0',
          '--out', str(out), '--steps', '2')
  animate_tool.main(list(args))
  return ('tools.animate', *args, '--overwrite'), folder, out


def test_animation_interrupted_while_compiling(animation, tmp_path):
  command, folder, _ = animation
  before = contents(folder)
  run = Run(*command, f'--config.io.compile_cache_dir={tmp_path / "cold"}')
  _assert_stopped(run, run.stop_when(logged(run, 'Compiling jit('), signal.SIGINT), signal.SIGINT, folder, before)


def _signal_after(function, signum):
  def call_then_signal(*args, **kwargs):
    result = function(*args, **kwargs)
    os.kill(os.getpid(), signum)
    return result
  return call_then_signal


@pytest.mark.parametrize('stage, signum', [('denoise', signal.SIGINT), ('decode', signal.SIGTERM),
                                           ('write', signal.SIGINT)])
def test_animation_interrupted_while_denoising_decoding_or_writing(animation, stage, signum, monkeypatch, capsys):
  """In this process (its programs are compiled): the signal comes right after the stage's program
  is dispatched, so it arrives while that program runs; or, writing, after the first frame PNG is
  written into the staging folder (the video and GIF are there already)."""
  command, folder, out = animation
  before = contents(folder)
  if stage == 'write':
    monkeypatch.setattr(frame_io, 'save_rgb', _signal_after(frame_io.save_rgb, signum))
  else:
    compiled = pipeline.Animator.programs

    def signalling(self, *args):
      programs = dict(zip(('prepare', 'denoise', 'decode'), compiled(self, *args)))
      programs[stage] = _signal_after(programs[stage], signum)
      return tuple(programs.values())

    monkeypatch.setattr(pipeline.Animator, 'programs', signalling)
  with pytest.raises(SystemExit) as stop:
    animate_tool.main(list(command[1:]))
  assert stop.value.code == tools.SIGNAL_EXIT + signum
  assert f'stopped by {signal.Signals(signum).name}' in capsys.readouterr().err
  assert contents(folder) == before and hidden(folder) == [], 'nothing replaced, no staging left'


def test_animation_killed_then_replaced_and_nothing_compiled(animation):
  command, folder, out = animation
  before = contents(folder)
  run = Run(*command)
  assert run.stop_when(staged(out), signal.SIGKILL) == -signal.SIGKILL
  assert contents(folder) == before and hidden(folder), 'a killed run leaves only its hidden staging'
  run = Run(*command)
  assert run.wait() == 0, run.stderr[-3000:]
  assert hidden(folder) == [], "the next run removes the killed run's staging"
  after = contents(folder)
  assert after.keys() == before.keys() and all(after[k] != before[k] for k in before), 'every file replaced'
  assert "cache hit for 'jit_denoise'" in run.stderr
  assert 'PERSISTENT COMPILATION CACHE MISS' not in run.stderr, [
      line for line in run.stderr.splitlines() if 'MISS' in line][:5]


def test_finalizers_cut_short_by_a_stop_are_not_reported(monkeypatch):
  """A signal can land inside a constructor (orbax's asyncio loop, left without `_signal_handlers`):
  once a run was stopped, that object's finalizer fails at exit with an AttributeError, which is not
  reported; before any stop it is."""
  reported = []
  monkeypatch.setattr(sys, '__unraisablehook__', reported.append)
  report = types.SimpleNamespace(exc_type=AttributeError, exc_value=AttributeError('_signal_handlers'),
                                 exc_traceback=None, err_msg='Exception ignored in', object=None)
  monkeypatch.setattr(tools, '_STOPPED', [])
  tools._unraisable(report)
  assert reported == [report]
  monkeypatch.setattr(tools, '_STOPPED', [signal.SIGINT])
  tools._unraisable(report)
  assert reported == [report], 'not reported after a stop'
