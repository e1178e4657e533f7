r"""`sa-prep`: skeletons, face masks and the face embedding for sa-animate / sa-train (docs/prep.md).

  sa-prep --reference ref.png --video drive.mp4 --out case/ --width 512 --height 512 \
      --dwpose-dir checkpoints/DWPose --insightface-root .
  sa-prep --frames clip/images --out clip/ --no-align      # training data: no reference, no alignment
  sa-prep draw --keypoints case/keypoints.json --out case/poses_again
"""

import argparse
from collections.abc import Sequence

from sa_jax.prep import pipeline as prep
from sa_jax.prep import model_files
from tools import run_main, setup_logging


def _prepare_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='sa-prep', description='Skeletons, face masks and the face '
                                   'embedding for sa-animate / sa-train (docs/prep.md).',
                                   epilog='Redraw skeletons without the models: sa-prep draw --help')
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument('--video', help='driving video (mp4 or anything ffmpeg reads)')
  source.add_argument('--frames', help='folder of driving frames (png/jpg), natural name order')
  parser.add_argument('--reference', help='reference photo (required unless --no-align)')
  parser.add_argument('--out', required=True, help='output folder (absent or empty)')
  parser.add_argument('--width', type=int, default=512, help='generation width W (face masks)')
  parser.add_argument('--height', type=int, default=512, help='generation height H (face masks)')
  parser.add_argument('--dwpose-dir', default=model_files.DWPOSE_DIR,
                      help='folder with yolox_l.onnx and dw-ll_ucoco_384.onnx')
  parser.add_argument('--detector', help='YOLOX person detector .onnx (overrides --dwpose-dir)')
  parser.add_argument('--pose-model', help='DWPose whole-body .onnx (overrides --dwpose-dir)')
  parser.add_argument('--insightface-root', default='.', help='ROOT with models/antelopev2/*.onnx')
  parser.add_argument('--no-align', action='store_true',
                      help='keep the detected skeletons (training data) instead of aligning them')
  parser.add_argument('--aspect-correct', action='store_true',
                      help='correct the alignment for differing aspect ratios (not in the reference)')
  parser.add_argument('--max-frames', type=int, help='keep at most N frames')
  parser.add_argument('--stride', type=int, default=1, help='keep every K-th source frame')
  parser.add_argument('--whole-image-fallback', action='store_true',
                      help='without a person box, pose the whole frame (reference tools)')
  parser.add_argument('--overwrite', action='store_true', help='replace a non-empty --out (only an sa-prep output)')
  parser.add_argument('--debug', action='store_true', help='show the traceback of an error')
  return parser


def _draw_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='sa-prep draw',
                                   description='Redraw skeleton images from a keypoints.json.')
  parser.add_argument('--keypoints', required=True, help='keypoints.json written by sa-prep')
  parser.add_argument('--out', required=True, help='folder for frame_<i>.png (absent or empty)')
  parser.add_argument('--no-align', action='store_true', help='draw the detected, unaligned keypoints')
  parser.add_argument('--overwrite', action='store_true', help='replace a non-empty --out (only an sa-prep output)')
  parser.add_argument('--debug', action='store_true', help='show the traceback of an error')
  return parser


def validate(argv: Sequence[str]) -> argparse.Namespace | prep.Plan:
  """Parses and checks a whole sa-prep command line before any model is loaded: `sa-prep draw`'s
  parsed options, else the checked `prep.Plan` (options, model files, output folder, reference and
  driving source). Usage errors exit with status 2; the rest raise one-line errors naming the path."""
  if argv[:1] == ['draw']:
    return _draw_parser().parse_args(argv[1:])
  args = _prepare_parser().parse_args(argv)
  config = prep.PrepConfig(width=args.width, height=args.height, align=not args.no_align,
                           aspect_correct=args.aspect_correct, stride=args.stride,
                           max_frames=args.max_frames, whole_image_fallback=args.whole_image_fallback,
                           overwrite=args.overwrite)
  return prep.check_prepare(args.out, reference=args.reference, video=args.video, frame_dir=args.frames,
                            dwpose_dir=args.dwpose_dir, detector=args.detector, pose_model=args.pose_model,
                            insightface_root=args.insightface_root, config=config)


def main(argv: Sequence[str] | None = None) -> None:
  run_main('sa-prep', _main, argv)


def _main(argv: list[str]) -> None:
  setup_logging()
  job = validate(argv)
  if isinstance(job, prep.Plan):
    prep.run_plan(job)
  else:
    prep.redraw(job.keypoints, job.out, align=not job.no_align, overwrite=job.overwrite)


if __name__ == '__main__':
  main()
