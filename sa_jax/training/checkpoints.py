"""Training checkpoints of a workdir, with orbax `CheckpointManager`s (atomic, async, multi-host).

    WORKDIR/checkpoints/<step>/state    step, trainable params, optimiser state (and EMA)
                              /data     the data iterator's position (grain, one file per process)
                              /config   the training config of the run (JSON)
    WORKDIR/frozen/0/frozen             the frozen parameters, written once at the start

A step folder appears under its final name only once every item is written (orbax commits
atomically), so a run killed at any moment resumes from its latest complete step; `max_to_keep`
drops the oldest. The frozen networks (VAE, CLIP, most of the UNet) never change, so they are not
rewritten with every step.
"""

import os
from typing import Any

import orbax.checkpoint as ocp

from sa_jax.data import clips

STATE, DATA, CONFIG, FROZEN = 'state', 'data', 'config', 'frozen'


class RunCheckpoints:
  """The checkpoints of one workdir.

  Attributes:
    directory: `WORKDIR/checkpoints`.
  """

  def __init__(self, workdir: str | os.PathLike, *, max_to_keep: int, async_save: bool):
    workdir = os.path.abspath(os.fspath(workdir))
    self.directory = os.path.join(workdir, 'checkpoints')
    # cleanup_tmp_directories: the half-written step of a killed or interrupted run goes at the next start.
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
                                           create=True, cleanup_tmp_directories=True)
    self._steps = ocp.CheckpointManager(self.directory, options=options, item_names=(STATE, DATA, CONFIG))
    self._frozen = ocp.CheckpointManager(
        os.path.join(workdir, FROZEN), item_names=(FROZEN,),
        options=ocp.CheckpointManagerOptions(create=True, cleanup_tmp_directories=True))

  def latest_step(self) -> int | None:
    """The latest complete step, None for a fresh workdir."""
    return self._steps.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._steps.all_steps())

  def save(self, step: int, state: dict[str, Any], data_iterator: Any, config: dict[str, Any]) -> None:
    """Saves a step (in the background when async): `state` without its frozen parameters."""
    trained = {k: v for k, v in state.items() if k != 'frozen'}
    self._steps.save(step, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardSave(trained), DATA: clips.save_args(data_iterator),
        CONFIG: ocp.args.JsonSave(config)}))

  def save_frozen(self, frozen: dict[str, Any]) -> None:
    """Writes the frozen parameters of a fresh run, replacing those an earlier attempt that never
    reached a step checkpoint may have left (it may have started from other weights)."""
    if self._frozen.latest_step() is not None:
      self._frozen.delete(0)
    self._frozen.save(0, args=ocp.args.Composite(**{FROZEN: ocp.args.StandardSave(frozen)}))
    self._frozen.wait_until_finished()

  def restore(self, step: int, abstract_state: dict[str, Any], data_iterator: Any | None = None
              ) -> dict[str, Any]:
    """The state of `step` (frozen parameters included) restored into the shardings of
    `abstract_state` (a tree of `jax.ShapeDtypeStruct` with shardings); `data_iterator` is moved
    to the saved position in place."""
    trained = {k: v for k, v in abstract_state.items() if k != 'frozen'}
    items = {STATE: ocp.args.StandardRestore(trained)}
    if data_iterator is not None:
      items[DATA] = clips.restore_args(data_iterator)
    restored = self._steps.restore(step, args=ocp.args.Composite(**items))
    frozen = self._frozen.restore(0, args=ocp.args.Composite(**{
        FROZEN: ocp.args.StandardRestore(abstract_state['frozen'])}))[FROZEN]
    return dict(restored[STATE], frozen=frozen)

  def restore_config(self, step: int) -> dict[str, Any]:
    """The training config saved with `step`."""
    return dict(self._steps.restore(step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))[CONFIG])

  def wait(self) -> None:
    """Blocks until background writes are committed."""
    self._steps.wait_until_finished()

  def close(self) -> None:
    self._steps.close()
    self._frozen.close()
