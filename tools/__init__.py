"""Command-line programs: short mains over library functions."""

import logging


def setup_logging() -> None:
  """INFO messages on stderr, keeping handlers that are already installed.

  `orbax` calls `logging.basicConfig` when imported and pytest installs its capture handler, so
  the root level is raised instead of replacing handlers.
  """
  logging.basicConfig(format='%(levelname)s %(name)s: %(message)s')
  logging.root.setLevel(logging.INFO)
  for noisy in ('absl', 'jax._src.xla_bridge'):  # orbax's per-file chatter, JAX's backend probing
    logging.getLogger(noisy).setLevel(logging.WARNING)
