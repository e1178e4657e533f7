r"""`sa-make-clips`: synthetic training clips in the sa-prep layout (sa_jax/data/synthetic.py).

  sa-make-clips OUT --clips 4 --frames 24 --width 64 --height 64 --seed 0
  python -m tools.make_clips OUT --clips 4 --frames 24 --width 64 --height 64 --seed 0

OUT/<5-digit id>/{images,poses,faces}/frame_<i>.png and face_embeddings.npy; OUT is a data root.
"""

import argparse
import sys
from collections.abc import Sequence

from sa_jax.data import synthetic
from tools import setup_logging


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='sa-make-clips', description='Synthetic training clips in the '
                                   'sa-prep layout: a stick figure walking, its skeleton and face box.')
  parser.add_argument('out', metavar='OUT', help='output folder (absent or empty)')
  parser.add_argument('--clips', type=int, default=4, help='number of clips')
  parser.add_argument('--frames', type=int, default=24, help='frames per clip')
  parser.add_argument('--width', type=int, default=64, help='frame width W')
  parser.add_argument('--height', type=int, default=64, help='frame height H')
  parser.add_argument('--seed', type=int, default=0, help='seed (clip i uses [seed, i])')
  return parser


def main(argv: Sequence[str] | None = None) -> None:
  parser = _parser()
  args = parser.parse_args(argv)
  for flag in ('clips', 'frames', 'width', 'height'):
    if getattr(args, flag) < 1:
      parser.error(f'--{flag} is {getattr(args, flag)}, expected >= 1')
  setup_logging()
  try:
    synthetic.write_clips(args.out, args.clips, num_frames=args.frames, width=args.width, height=args.height,
                          seed=args.seed)
  except ValueError as err:
    sys.exit(f'sa-make-clips: error: {err}')


if __name__ == '__main__':
  main()
