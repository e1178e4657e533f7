"""Causes of library failures (orbax, onnxruntime, PIL, torch) as the one line a tool's error shows."""


def first_line(err: BaseException) -> str:
  """The first line of `err`'s message; its type's name when the message is empty."""
  return next(iter(str(err).strip().splitlines()), type(err).__name__)


def one_line(err: BaseException) -> str:
  """A possibly multi-line message on one line: `head item; item`."""
  lines = [line.strip() for line in str(err).splitlines() if line.strip()]
  head, *items = lines or [type(err).__name__]
  return ' '.join([head, '; '.join(items)]) if items else head
