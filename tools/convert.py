r"""`sa-convert`: the released PyTorch weights -> one sa-jax checkpoint directory.

  sa-convert --release checkpoints/ --out ckpt/                      # the release layout
  sa-convert --svd stable-video-diffusion-img2vid-xt --animation checkpoints/Animation \
      --face-embedder checkpoints/Animation/glintr100_torch.pth --out ckpt/ --dtype bfloat16
"""

import argparse
import dataclasses
import logging
from collections.abc import Sequence

import ml_dtypes
import numpy as np
from tqdm import tqdm

from convert import release
from sa_jax import checkpoint
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


def main(argv: Sequence[str] | None = None) -> None:
  run_main('sa-convert', _main, argv)


def _main(argv: Sequence[str]) -> None:
  parser = _parser()
  args = parser.parse_args(argv)
  setup_logging()
  if args.svd and not args.animation:
    parser.error('--svd needs --animation')
  if args.release:
    paths = release.ReleasePaths.from_checkpoints_dir(args.release, args.face_embedder)
  else:
    paths = release.ReleasePaths.from_svd(args.svd, args.animation, args.face_embedder)
  inputs = [v for v in dataclasses.astuple(paths) if v is not None] + [args.release, args.svd, args.animation]
  checkpoint.check_target(args.out, args.overwrite, inputs)
  total = 6 if paths.face_embedder is not None else 5
  if paths.face_embedder is None:
    logger.info('no face embedder found or given: the checkpoint will not support --hjb')
  with tqdm(total=total, desc='converting', unit='network') as bar:
    params, config = release.convert_release(
        paths, DTYPES[args.dtype], progress=lambda name: (bar.set_postfix_str(name), bar.update(1)))
  checkpoint.save(args.out, params, config, overwrite=args.overwrite, inputs=inputs)
  for name, tree in params.items():
    logger.info('%-14s %15s parameters', name, f'{checkpoint.count_params(tree):,}')
  logger.info('%-14s %15s parameters -> %s (%s)', 'total', f'{checkpoint.count_params(params):,}',
              args.out, args.dtype)


if __name__ == '__main__':
  main()
