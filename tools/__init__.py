"""Command-line programs: short mains over library functions."""

import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from sa_jax import outputs


def setup_logging() -> None:
  """INFO messages on stderr, keeping handlers that are already installed.

  `orbax` calls `logging.basicConfig` when imported and pytest installs its capture handler, so
  the root level is raised instead of replacing handlers.
  """
  logging.basicConfig(format='%(levelname)s %(name)s: %(message)s')
  logging.root.setLevel(logging.INFO)
  for noisy in ('absl', 'jax._src.xla_bridge'):  # orbax's per-file chatter, JAX's backend probing
    logging.getLogger(noisy).setLevel(logging.WARNING)


USER_ERRORS = (OSError, ValueError, ImportError)
SIGNAL_EXIT = 128     # exit status of a run stopped by signal N: 128 + N (130 SIGINT, 143 SIGTERM)


def run_main(tool: str, main: Callable[[list[str]], None], argv: Sequence[str] | None,
             errors: tuple[type[BaseException], ...] = USER_ERRORS) -> None:
  """Runs a tool's `main(argv)`: a user error ends as the one line `<tool>: error: <message>` with
  exit status 1 (further lines of the message follow indented), its traceback only with `--debug`
  or `SA_DEBUG=1`; SIGINT/SIGTERM stop the run with exit status 130/143, nothing written under a
  final name (`outputs.stop_on_signals`)."""
  args = list(sys.argv[1:] if argv is None else argv)
  debug = '--debug' in args or os.environ.get('SA_DEBUG', '') not in ('', '0')
  hook, sys.unraisablehook = sys.unraisablehook, _unraisable
  try:
    with outputs.stop_on_signals():
      try:
        main(args)
      except KeyboardInterrupt:
        _stopped(tool, outputs.received_signal() or signal.SIGINT)
      except Exception as err:
        if outputs.received_signal():       # whatever failed because of it (ffmpeg died of the same Ctrl-C)
          _stopped(tool, outputs.received_signal())
        if debug or not isinstance(err, errors):
          raise
        first, *rest = str(err).strip().splitlines() or [type(err).__name__]
        sys.exit('\n'.join([f'{tool}: error: {first}', *('  ' + line.strip() for line in rest)]))
      if outputs.received_signal():
        _stopped(tool, outputs.received_signal())
  finally:
    if not _STOPPED:   # after a stop, objects the signal cut short are finalised until exit
      sys.unraisablehook = hook


_STOPPED: list[int] = []   # the signal that stopped a run of this process, if one did


def _unraisable(unraisable: Any) -> None:
  """Drops three kinds of "Exception ignored" reports: an `Interrupted` raised where Python cannot
  propagate it (a garbage-collection or fork callback: the signal is recorded and stops the run
  anyway); after a run was stopped by a signal, the finalizer of an object whose construction the
  signal cut short (an asyncio loop of orbax's async save without its `_signal_handlers`); and the
  "Event loop is closed" errors that tensorstore's pending reads and writes print (one per file)
  after an orbax save or restore failed (the tool reports the failure once)."""
  error = unraisable.exc_value
  if isinstance(error, outputs.Interrupted) or (_STOPPED and isinstance(error, AttributeError)):
    return
  if not (isinstance(error, RuntimeError) and 'Event loop is closed' in str(error)):
    sys.__unraisablehook__(unraisable)


def _stopped(tool: str, signum: int) -> None:
  _STOPPED.append(signum)
  sys.stderr.write(f'{tool}: stopped by {signal.Signals(signum).name}; outputs not yet in place were '
                   'discarded\n')
  sys.exit(SIGNAL_EXIT + signum)
