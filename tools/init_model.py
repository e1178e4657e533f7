r"""`sa-init-model`: a checkpoint to train from scratch (the demo model's first step).

  sa-make-dataset data/
  sa-init-model --clips data/train --face-embedder data/face_embedder.npz --out runs/init
  sa-train --config configs/train.py:demo --init runs/init --workdir runs/demo

The networks of a model config (`configs/svd_xt.py`, default 'demo'): UNet, PoseNet, face encoder
and CLIP with random weights, the VAE trained on the clips' frames (--vae-steps) or taken from an
earlier sa-init-model checkpoint of the same VAE architecture (--vae), and the face embedder that
sa-make-dataset trained (sa_jax/training/scratch.py).
"""

import argparse
from collections.abc import Sequence
from pathlib import Path

from tools import run_main, setup_logging

TOOL = 'sa-init-model'


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog=TOOL, description='A checkpoint to train from scratch: random networks, '
                                   "a VAE trained on the clips' frames, a face embedder from sa-make-dataset.")
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument('--clips', help='folder of clip folders (each with images/) to train the VAE on')
  source.add_argument('--vae', help='an sa-jax checkpoint whose VAE to take instead of training one')
  parser.add_argument('--out', required=True, help='the new sa-jax checkpoint')
  parser.add_argument('--face-embedder', help="sa-make-dataset's face_embedder.npz (none: no face embedder, no HJB)")
  parser.add_argument('--config', default='demo', help="model config of configs/svd_xt.py ('demo', 'tiny')")
  parser.add_argument('--vae-steps', type=int, help='VAE training steps (default: autoencoder.TrainingConfig\'s)')
  parser.add_argument('--vae-frames', type=int, default=16, help='frames read per clip for the VAE')
  parser.add_argument('--vae-batch-size', type=int,
                      help="runs of frames per VAE step (default: autoencoder.TrainingConfig's)")
  parser.add_argument('--seed', type=int, default=0, help='seed of the random weights and the VAE training')
  parser.add_argument('--overwrite', action='store_true', help='replace an earlier sa-jax checkpoint at --out')
  parser.add_argument('--debug', action='store_true', help='show the traceback of an error')
  return parser


def main(argv: Sequence[str] | None = None) -> None:
  run_main(TOOL, _main, argv)


def _main(argv: list[str]) -> None:
  parser = _parser()
  args = parser.parse_args(argv)
  for flag in ('vae_steps', 'vae_frames', 'vae_batch_size'):
    if (getattr(args, flag) or 1) < 1:
      parser.error(f'--{flag.replace("_", "-")} is {getattr(args, flag)}, expected >= 1')
  for flag in ('vae_steps', 'vae_batch_size'):
    if args.vae and getattr(args, flag) is not None:
      parser.error(f'--{flag.replace("_", "-")} trains a VAE; --vae takes a trained one: give one of them')
  from configs import svd_xt
  from sa_jax import checkpoint
  from sa_jax.models.stable_animator import ModelConfigs
  from sa_jax.training import autoencoder, scratch
  models = ModelConfigs.from_dict(svd_xt.get_config(args.config).to_dict())
  inputs = [args.clips or args.vae] + ([args.face_embedder] if args.face_embedder else [])
  checkpoint.check_target(args.out, args.overwrite, inputs)
  if args.clips:
    folders = sorted(p for p in Path(args.clips).iterdir() if (p / scratch.CLIP_FRAMES).is_dir()) \
        if Path(args.clips).is_dir() else []
    if not folders:
      raise ValueError(f'--clips {args.clips}: no clip folder with {scratch.CLIP_FRAMES}/ in it')
  embedder = checkpoint.load_npz(args.face_embedder) if args.face_embedder else None
  from sa_jax import animate
  if embedder is not None:
    animate.check_params({'face_embedder': embedder}, models)
  setup_logging()
  if args.vae:
    trained = scratch.trained_vae(args.vae, models.vae)
  else:
    given = dict(steps=args.vae_steps, batch_size=args.vae_batch_size)
    training = autoencoder.TrainingConfig(seed=args.seed, **{k: v for k, v in given.items() if v is not None})
    trained = autoencoder.train(scratch.read_clip_frames(folders, args.vae_frames), models.vae, training)
  params, config = scratch.initial_params(models, trained, embedder, args.seed)
  animate.check_params(params, config.models)
  checkpoint.save(args.out, params, config, overwrite=args.overwrite, inputs=inputs)


if __name__ == '__main__':
  main()
