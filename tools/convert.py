r"""`sa-convert`: the released PyTorch weights -> one sa-jax checkpoint directory.

  sa-convert --release checkpoints/ --out ckpt/                      # the release layout
  sa-convert --svd stable-video-diffusion-img2vid-xt --animation checkpoints/Animation \
      --face-embedder checkpoints/Animation/glintr100_torch.pth --out ckpt/ --dtype bfloat16
"""

import argparse
import dataclasses
import logging
import os
from collections.abc import Sequence
from typing import Any

import ml_dtypes
import numpy as np
from tqdm import tqdm

from convert import release
from sa_jax import checkpoint, outputs
from tools import run_main, setup_logging

logger = logging.getLogger('sa-convert')
DTYPES = {'float32': np.float32, 'bfloat16': ml_dtypes.bfloat16}


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='sa-convert', description='Convert the StableAnimator release to an '
                              'sa-jax checkpoint (strict: every tensor is checked).')
  source = p.add_mutually_exclusive_group(required=True)
  source.add_argument('--release', help='release checkpoints/ folder (SVD/ and Animation/ inside)')
  source.add_argument('--svd', help='SVD diffusers folder (unet/config.json, vae/, image_encoder/, ...)')
  p.add_argument('--animation', help='folder with pose_net.pth, face_encoder.pth, unet.pth (with --svd)')
  p.add_argument('--face-embedder', help='IResNet .pth for the HJB face correction (glintr100_torch.pth)')
  p.add_argument('--out', required=True, help='checkpoint directory to write')
  p.add_argument('--dtype', choices=sorted(DTYPES), default='float32')
  p.add_argument('--overwrite', action='store_true', help='replace an existing --out (only an sa-jax checkpoint)')
  p.add_argument('--debug', action='store_true', help='show the traceback of an error')
  return p


@dataclasses.dataclass(frozen=True)
class Job:
  """A checked conversion: the release parts found and readable, the output replaceable and with room."""
  paths: release.ReleasePaths
  out: str
  dtype: str
  overwrite: bool
  inputs: list[Any]


def validate(argv: Sequence[str]) -> Job:
  """Parses and checks a whole sa-convert command line before any weights are read: the options,
  every release part (present, readable, JSON configs valid), the output (absent, or with
  `--overwrite` an sa-jax checkpoint that holds no input) and the free space it needs. Usage errors
  exit with status 2; the rest raise one-line errors naming the path."""
  parser = _parser()
  args = parser.parse_args(argv)
  if args.svd and not args.animation:
    parser.error('--svd needs --animation')
  if args.animation and not args.svd:
    parser.error('--animation goes with --svd (--release finds the Animation/ folder itself)')
  if args.release:
    paths = release.ReleasePaths.from_checkpoints_dir(args.release, args.face_embedder)
  else:
    paths = release.ReleasePaths.from_svd(args.svd, args.animation, args.face_embedder)
  paths.check()
  inputs = [v for v in dataclasses.astuple(paths) if v is not None] + [args.release, args.svd, args.animation]
  checkpoint.check_target(args.out, args.overwrite, inputs)
  # A lower bound of the checkpoint's size: float32 sources hold 4 bytes per parameter (fp16 ones 2).
  source_bytes = sum(os.path.getsize(f) for f in paths.weight_files())
  outputs.check_space(os.path.dirname(os.path.abspath(args.out)),
                      source_bytes * np.dtype(DTYPES[args.dtype]).itemsize // 4, 'the checkpoint')
  return Job(paths=paths, out=args.out, dtype=args.dtype, overwrite=args.overwrite, inputs=inputs)


def main(argv: Sequence[str] | None = None) -> None:
  run_main('sa-convert', _main, argv)


def _main(argv: Sequence[str]) -> None:
  setup_logging()
  job = validate(argv)
  paths = job.paths
  total = 6 if paths.face_embedder is not None else 5
  if paths.face_embedder is None:
    logger.info('no face embedder found or given: the checkpoint will not support --hjb')

  def converted(name: str) -> None:
    outputs.check_interrupted()
    bar.set_postfix_str(name)
    bar.update(1)

  with tqdm(total=total, desc='converting', unit='network') as bar:
    params, config = release.convert_release(paths, DTYPES[job.dtype], progress=converted)
  checkpoint.save(job.out, params, config, overwrite=job.overwrite, inputs=job.inputs)
  for name, tree in params.items():
    logger.info('%-14s %15s parameters', name, f'{checkpoint.count_params(tree):,}')
  logger.info('%-14s %15s parameters -> %s (%s)', 'total', f'{checkpoint.count_params(params):,}',
              job.out, job.dtype)


if __name__ == '__main__':
  main()
