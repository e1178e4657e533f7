"""Command-line programs: short mains over library functions."""

import logging
import sys
from collections.abc import Callable, Sequence


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


def run_main(tool: str, main: Callable[[list[str]], None], argv: Sequence[str] | None,
             errors: tuple[type[BaseException], ...] = USER_ERRORS) -> None:
  """Runs a tool's `main(argv)`; a user error ends as the one line `<tool>: error: <message>` with exit
  status 1, its traceback only with `--debug`."""
  args = list(sys.argv[1:] if argv is None else argv)
  try:
    main(args)
  except errors as err:
    if '--debug' in args:
      raise
    sys.exit(f'{tool}: error: {err}')
