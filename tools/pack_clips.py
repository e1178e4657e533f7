r"""`sa-pack-clips`: training clips packed into ArrayRecord shards (sa_jax/data/packed.py, docs/training.md).

  sa-pack-clips animation_data/video_rec_path.txt --out packed/
  sa-train --config configs/train.py --workdir runs/ft --init ckpt/ --config.data.roots=packed/

ROOTS take what `data.roots` takes for clip folders: clip folders, folders of clips, clip-list files.
Each clip is checked over all its frames; a bad one is logged with the reason, left out, and listed
in OUT/pack.json. OUT must be absent or empty; --overwrite replaces only an earlier sa-pack-clips output.
"""

import argparse
from collections.abc import Sequence

from sa_jax.data import packed
from tools import run_main, setup_logging

TOOL = 'sa-pack-clips'


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog=TOOL, description='Pack training clips into ArrayRecord shards (a TFDS '
                                   'dataset) that sa-train reads as a data root.')
  parser.add_argument('roots', nargs='+', metavar='ROOT',
                      help='clip folder, folder of clip folders, or text file listing clip folders')
  parser.add_argument('--out', required=True, help='output folder (absent or empty)')
  parser.add_argument('--shard-size', type=int, default=1024,
                      help='MiB per ArrayRecord file: a new one starts once a file holds this much')
  parser.add_argument('--threads', type=int, default=4, help='clips read and checked at once')
  parser.add_argument('--overwrite', action='store_true', help='replace an earlier sa-pack-clips output')
  parser.add_argument('--debug', action='store_true', help='show the traceback of an error')
  return parser


def validate(argv: Sequence[str]) -> packed.PackJob:
  """Parses and checks a whole sa-pack-clips command line before any clip is read: options, roots and
  the output folder. Usage errors exit with status 2; the rest raise one-line errors naming the path."""
  parser = _parser()
  args = parser.parse_args(argv)
  if args.shard_size < 1:
    parser.error(f'--shard-size is {args.shard_size}, expected >= 1')
  if args.threads < 1:
    parser.error(f'--threads is {args.threads}, expected >= 1')
  return packed.check_pack(args.roots, args.out, shard_bytes=args.shard_size * 2**20, threads=args.threads,
                           overwrite=args.overwrite)


def main(argv: Sequence[str] | None = None) -> None:
  run_main(TOOL, _main, argv)


def _main(argv: list[str]) -> None:
  setup_logging()
  packed.pack(validate(argv))


if __name__ == '__main__':
  main()
