"""Metric writers for training: TensorBoard event files and a JSON-lines log of the same scalars.

    WORKDIR/metrics.jsonl     one object per `write_scalars` call: {"step": 12, "loss": 0.31, ...},
                              appended and flushed at once, so a killed run keeps every line written
    WORKDIR/tensorboard/      tensorboardX event files (scalars; videos when moviepy is installed)

On resume, `truncate_after(step)` drops what a killed run wrote past the restored step: the JSON
lines are rewritten without them (to a temporary file renamed into place), and TensorBoard gets a
purge marker that hides the later events. In multi-host runs only process 0 writes: pass
`enabled=jax.process_index() == 0`; a disabled writer touches no file and every method is a no-op.
"""

import importlib.util
import json
import logging
import os
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tensorboardX import SummaryWriter

logger = logging.getLogger(__name__)

JSONL = 'metrics.jsonl'
TENSORBOARD = 'tensorboard'


def log_progress(name: str, done: int, total: int, scalars: Mapping[str, Any]) -> None:
  """Logs `scalars` at each tenth of `total` steps and at the last: the progress of a loop whose tqdm
  bar is off (stderr not a terminal, as in a run logged to a file)."""
  if done % max(total // 10, 1) == 0 or done == total:
    logger.info('%s: step %d/%d, %s', name, done, total,
                ', '.join(f'{k} {_scalar(k, v):.4g}' for k, v in scalars.items()))


def _scalar(name: str, value: Any) -> float:
  """A Python float from a number, numpy scalar or 0-d jax/numpy array."""
  if np.ndim(value) != 0:
    raise ValueError(f'metric {name!r} has shape {np.shape(value)}, expected a scalar')
  return float(value)


class MetricWriter:
  """Writes per-step scalars to TensorBoard and `metrics.jsonl`; a context manager.

  Attributes:
    workdir: the run folder (see the module docstring for its layout).
    enabled: False on every process but 0 of a multi-host run: then nothing is written.
  """

  def __init__(self, workdir: str | os.PathLike, *, enabled: bool = True):
    self.workdir = Path(workdir)
    self.enabled = enabled
    self._tb: SummaryWriter | None = None
    self._purge_step: int | None = None
    self._jsonl = None
    self._warned_video = False
    self._closed = False
    if enabled:
      self.workdir.mkdir(parents=True, exist_ok=True)
      self._jsonl = open(self.jsonl_path, 'a', encoding='utf-8')

  @property
  def jsonl_path(self) -> Path:
    return self.workdir / JSONL

  def _check_open(self) -> None:
    if self._closed:
      raise ValueError(f'the metric writer of {self.workdir} is closed')

  def _board(self) -> SummaryWriter:
    """The TensorBoard writer, opened on first use (after a truncation: with its purge marker)."""
    if self._tb is None:
      # tensorboardX names files by the second; the nanosecond suffix keeps files opened within
      # one second distinct and in order (TensorBoard reads them sorted by name).
      suffix = f'.{time.time_ns():020d}.{os.getpid()}'
      self._tb = SummaryWriter(str(self.workdir / TENSORBOARD), purge_step=self._purge_step,
                               filename_suffix=suffix)
    return self._tb

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Writes `scalars` (name -> number or 0-d array) at `step`: one JSON line, one TB scalar each."""
    if not self.enabled or not scalars:
      return
    self._check_open()
    step = int(step)
    if step < 0:
      raise ValueError(f'step is {step}, expected >= 0')
    if 'step' in scalars:
      raise ValueError(f'metric name "step" is reserved for the step; got metrics {sorted(scalars)}')
    values = {name: _scalar(name, value) for name, value in scalars.items()}
    self._jsonl.write(json.dumps({'step': step, **values}) + '\n')
    self._jsonl.flush()
    board = self._board()
    for name, value in values.items():
      board.add_scalar(name, value, step)

  def write_video(self, step: int, name: str, frames: Any, fps: float = 4) -> None:
    """Writes a video to TensorBoard; skipped (logged once) when moviepy is not installed.

    Args:
      step: the training step.
      name: the TensorBoard tag.
      frames: `[F, H, W, 3]` uint8.
      fps: playback frame rate.
    """
    if not self.enabled:
      return
    self._check_open()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
      raise ValueError(f'video {name!r} is {frames.dtype}{list(frames.shape)}, expected uint8 [F, H, W, 3]')
    if importlib.util.find_spec('moviepy') is None:
      if not self._warned_video:
        logger.warning('moviepy is not installed: videos are not written to TensorBoard')
        self._warned_video = True
      return
    video = frames.transpose(0, 3, 1, 2)[None]  # [F, H, W, C] -> [1, F, C, H, W] (tensorboardX NTCHW)
    self._board().add_video(name, video, int(step), fps=fps)

  def truncate_after(self, step: int) -> None:
    """Drops everything written past `step` (call on resume, before writing again).

    `metrics.jsonl` keeps the lines with step <= `step` (a killed run's unreadable last line goes
    too); TensorBoard hides the events past `step` from the next event file on.
    """
    if not self.enabled:
      return
    self._check_open()
    step = int(step)
    self._jsonl.close()
    tmp = self.workdir / f'.{JSONL}.{uuid.uuid4().hex}.tmp'
    try:
      kept, dropped = [], 0
      with open(self.jsonl_path, encoding='utf-8') as f:
        for line in f:
          try:
            keep = int(json.loads(line)['step']) <= step
          except (ValueError, KeyError, TypeError):
            keep = False
          if keep:
            kept.append(line if line.endswith('\n') else line + '\n')
          else:
            dropped += 1
      with open(tmp, 'w', encoding='utf-8') as f:
        f.writelines(kept)
      os.replace(tmp, self.jsonl_path)
      if dropped:
        logger.info('%s: dropped %d lines past step %d (kept %d)', self.jsonl_path, dropped, step, len(kept))
    finally:
      tmp.unlink(missing_ok=True)
      self._jsonl = open(self.jsonl_path, 'a', encoding='utf-8')
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    self._purge_step = step + 1  # TensorBoard purges events with step >= purge_step

  def flush(self) -> None:
    if self.enabled and not self._closed:
      self._jsonl.flush()
      if self._tb is not None:
        self._tb.flush()

  def close(self) -> None:
    """Flushes and closes both files; closing again is a no-op, writing again a ValueError."""
    if not self.enabled or self._closed:
      return
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    self._jsonl.close()
    self._closed = True

  def __enter__(self) -> 'MetricWriter':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
