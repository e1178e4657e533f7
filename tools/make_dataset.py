r"""`sa-make-dataset`: procedural clips of an articulated character for training and evaluating the
demo model (sa_jax/data/character.py).

  sa-make-dataset data/ --clips 256 --eval-clips 16 --identities 32 --motions 64 --size 64
  sa-train --config configs/train.py:tiny --workdir runs/demo --config.data.roots=data/train

OUT/train/<5-digit id>/ and OUT/eval/<5-digit id>/ are clips in sa-prep's training layout (images/,
poses/, faces/, keypoints.json, face_embeddings.npy); OUT/dataset.json lists each clip's identity and
motion. Evaluation clips combine held-out identities with held-out motions and are also sa-animate
cases (reference.png: the first frame). The face embeddings come from a small IResNet (the demo
config's face embedder) trained on the training clips' faces, saved as OUT/face_embedder.npz
(--face-embedder-steps 0: a random vector per identity instead), and a keypoint estimator trained on
the training clips' frames as OUT/pose_estimator.npz, for the pose error of generated frames
(sa-eval --pose-estimator). The same arguments give the same bytes on the same machine.
"""

import argparse
import dataclasses
from collections.abc import Sequence

from sa_jax.data import character
from tools import run_main, setup_logging

TOOL = 'sa-make-dataset'


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog=TOOL, description='Procedural clips of an articulated character in '
                                   "sa-prep's training layout, with held-out identities and motions.")
  parser.add_argument('out', metavar='OUT', help='output folder (absent or empty)')
  parser.add_argument('--clips', type=int, default=256, help='training clips')
  parser.add_argument('--eval-clips', type=int, default=16, help='evaluation clips (held-out identities and motions)')
  parser.add_argument('--identities', type=int, default=32, help='identities of the training clips')
  parser.add_argument('--motions', type=int, default=64, help='motions of the training clips')
  parser.add_argument('--held-out-identities', type=int, default=4, help='identities of the evaluation clips')
  parser.add_argument('--held-out-motions', type=int, default=8, help='motions of the evaluation clips')
  parser.add_argument('--frames', type=int, default=16, help='frames per clip')
  parser.add_argument('--size', type=int, default=64, help='frame width and height (64 to 128 for the demo)')
  parser.add_argument('--face-embedder-steps', type=int,
                      help="steps of the face embedder trained on the training clips' identities (the demo "
                      "config's IResNet; default: face_embedder.TrainingConfig's); 0: a random embedding per identity")
  parser.add_argument('--pose-estimator-steps', type=int,
                      help="steps of the keypoint estimator trained on the training clips' frames, for sa-eval's "
                      "pose error (default: keypoint_net.TrainingConfig's); 0: none")
  parser.add_argument('--seed', type=int, default=0, help='seed of every draw')
  parser.add_argument('--overwrite', action='store_true', help='replace an earlier sa-make-dataset output')
  parser.add_argument('--debug', action='store_true', help='show the traceback of an error')
  return parser


def main(argv: Sequence[str] | None = None) -> None:
  run_main(TOOL, _main, argv)


def _main(argv: list[str]) -> None:
  parser = _parser()
  args = parser.parse_args(argv)
  for flag in ('clips', 'identities', 'motions', 'held_out_identities', 'held_out_motions', 'frames', 'size'):
    if getattr(args, flag) < 1:
      parser.error(f'--{flag.replace("_", "-")} is {getattr(args, flag)}, expected >= 1')
  for flag in ('eval_clips', 'face_embedder_steps', 'pose_estimator_steps'):
    if (getattr(args, flag) or 0) < 0:
      parser.error(f'--{flag.replace("_", "-")} is {getattr(args, flag)}, expected >= 0')
  character.check_dataset_target(args.out, args.overwrite)
  setup_logging()
  embedder = None
  if args.face_embedder_steps != 0:
    from configs import svd_xt
    from sa_jax.models import iresnet
    from sa_jax.training import face_embedder
    config = iresnet.IResNetConfig.from_dict(svd_xt.get_config('demo').face_embedder.to_dict())
    training = face_embedder.TrainingConfig(seed=args.seed)
    if args.face_embedder_steps is not None:
      training = dataclasses.replace(training, steps=args.face_embedder_steps)
    embedder = face_embedder.Trainer(config, training)
  estimator = None
  if args.pose_estimator_steps != 0:
    from sa_jax.training import keypoint_net
    training = keypoint_net.TrainingConfig(seed=args.seed)
    if args.pose_estimator_steps is not None:
      training = dataclasses.replace(training, steps=args.pose_estimator_steps)
    estimator = keypoint_net.Trainer(training)
  character.write_dataset(args.out, clips=args.clips, eval_clips=args.eval_clips, identities=args.identities,
                          motions=args.motions, held_out_identities=args.held_out_identities,
                          held_out_motions=args.held_out_motions, num_frames=args.frames, width=args.size,
                          height=args.size, seed=args.seed, overwrite=args.overwrite, face_embedder=embedder,
                          pose_estimator=estimator)


if __name__ == '__main__':
  main()
