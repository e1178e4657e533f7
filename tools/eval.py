r"""`sa-eval`: score generated videos against their ground truth (docs/evaluation.md).

  sa-eval --clips test/ --generated out/ --out eval/                    # sa-animate outputs, one per clip
  sa-eval --clips test/ --checkpoint ckpt/ --out eval/ --steps 25 --width 512 --height 512   # animate, then score
  sa-eval --clips test/ --demo --out eval/ --width 0 --height 0         # the bundled demo model
      [--face-embedder glintr100_torch.pth | --insightface-root ROOT] [--dwpose-dir checkpoints/DWPose]
  sa-eval --clips data/eval --checkpoint runs/demo/model --out eval/ --width 0 --height 0 \
      --face-embedder runs/demo/model --pose-estimator data/pose_estimator.npz   # sa-make-dataset characters

Test clips are sa-prep folders holding their ground-truth frames in `images/` (a folder of them, or
several). With `--checkpoint`/`--demo` every clip is animated first, batched as `sa-animate` does
(any other option is an sa-animate option: `--steps`, `--hjb`, `--batch-size`, `--config.*`), and the
videos are kept in `OUT/generated/`. OUT gets `metrics.json`, `metrics.md` and `clips/<clip>.png`.
"""

import argparse
import dataclasses
import json
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from convert import iresnet as convert_iresnet
from convert import release, state_dict
from sa_jax import animate, checkpoint, outputs
from sa_jax.eval import clips as clip_io
from sa_jax.eval import evaluate, fvd, report
from sa_jax.models import iresnet
from sa_jax.prep import frames as frame_io
from tools import animate as animate_tool
from tools import run_main, setup_logging

logger = logging.getLogger('sa-eval')
GENERATED = 'generated'
METRICS_FILE = 'metrics.json'
TOOL = 'sa-eval'


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=TOOL, description='Score generated videos against their ground truth: '
                              'L1, PSNR, SSIM, LPIPS, FVD, face similarity and pose error.',
                              epilog='With --checkpoint or --demo, other options go to sa-animate (--steps, '
                              '--width, --height, --hjb, --batch-size, --config.<section>.<field>=VALUE, ...).')
  p.add_argument('--clips', nargs='+', required=True, help='sa-prep folders with images/ (ground truth), or '
                 'folders of them')
  source = p.add_mutually_exclusive_group(required=True)
  source.add_argument('--generated', help='folder of sa-animate outputs: <clip>_frames/, <clip>.mp4 or <clip>/')
  source.add_argument('--checkpoint', help='sa-convert or sa-train checkpoint: animate every clip, then score')
  source.add_argument('--demo', action='store_true', help='animate every clip with the bundled demo model')
  p.add_argument('--out', required=True, help='output folder (metrics.json, metrics.md, clips/, generated/)')
  p.add_argument('--num-frames', type=int, default=0, help='score the first N frames (0: all; generated and '
                 'ground-truth counts must then match)')
  p.add_argument('--metrics', default=','.join(evaluate.METRICS),
                 help=f'comma-separated subset of {",".join(evaluate.METRICS)}')
  p.add_argument('--lpips-net', default='alexnet', choices=('alexnet', 'vgg16'), help='LPIPS backbone')
  p.add_argument('--face-embedder', help='CSIM: glintr100_torch.pth of the release, or an sa-jax checkpoint '
                 'holding the face embedder')
  p.add_argument('--insightface-root', help='CSIM with insightface: ROOT with models/antelopev2')
  p.add_argument('--dwpose-dir', help='pose error: folder with yolox_l.onnx and dw-ll_ucoco_384.onnx')
  p.add_argument('--pose-estimator', help="pose error on sa-make-dataset's characters: its pose_estimator.npz")
  p.add_argument('--overwrite', action='store_true', help='replace an earlier sa-eval output at --out')
  p.add_argument('--debug', action='store_true', help='show the traceback of an error')
  return p


@dataclasses.dataclass(frozen=True)
class Job:
  """A checked sa-eval run: clips, their frame counts, what generates them, the metrics and their networks.

  Attributes:
    clips: the clips (generated frames set when read from `--generated`).
    counts: frames to score per clip.
    animation: the checked sa-animate job when this run animates the clips, else None.
    metrics: the metrics to compute.
    networks: where each metric network comes from (`evaluate.NetworkFiles`).
    skipped: metrics not computed and why.
    out: the output folder.
    staging: the hidden folder it is built in, renamed to `out` when complete.
    overwrite: the user's `--overwrite`.
  """
  clips: list[clip_io.Clip]
  counts: list[int]
  animation: animate_tool.Job | None
  metrics: tuple[str, ...]
  networks: evaluate.NetworkFiles
  skipped: dict[str, str]
  out: Path
  staging: Path
  overwrite: bool


def is_output(folder: Path) -> bool:
  """Whether `folder` is an earlier sa-eval output: a folder whose `metrics.json` it signed."""
  try:
    manifest = json.loads((folder / METRICS_FILE).read_text())
  except (OSError, ValueError):
    return False
  return isinstance(manifest, dict) and manifest.get('written_by') == f'{TOOL} ({outputs.SIGNATURE})'


def validate(argv: Sequence[str]) -> Job:
  """Parses and checks a whole sa-eval command line before any model is loaded or compiled: options,
  every clip's ground truth and generated frames (counts and sizes), the metric networks' files, and
  the output folder. Usage errors exit with status 2; the rest raise one-line errors naming the clip
  or path."""
  parser = _parser()
  args, rest = parser.parse_known_args(argv)
  animating = args.checkpoint is not None or args.demo
  if rest and not animating:
    parser.error(f'unrecognized arguments: {" ".join(rest)} (sa-animate options need --checkpoint or --demo)')
  if args.num_frames < 0:
    parser.error(f'--num-frames is {args.num_frames}; expected >= 0')
  metrics = tuple(m for m in args.metrics.split(',') if m)
  unknown = sorted(set(metrics) - set(evaluate.METRICS))
  if unknown or not metrics:
    parser.error(f'--metrics {args.metrics}: unknown {unknown}; choose from {",".join(evaluate.METRICS)}')
  if args.face_embedder and args.insightface_root:
    parser.error('give --face-embedder or --insightface-root, not both')
  if args.dwpose_dir and args.pose_estimator:
    parser.error('give --dwpose-dir or --pose-estimator, not both')
  clips = clip_io.clip_set(animate.find_cases(args.clips))
  out = Path(args.out)
  staging = outputs.staging_path(out)
  animation = None
  if animating:
    animation = _check_animation(clips, args, rest, staging / GENERATED)
    poses = [animation.requests[i].poses for i in range(len(clips))]     # [F, H, W, 3] each
    counts = [clip_io.check_clip(c, args.num_frames, p.shape[0], p.shape[2:0:-1]) for c, p in zip(clips, poses)]
  else:
    clips = [dataclasses.replace(c, generated=clip_io.find_generated(args.generated, c.name)) for c in clips]
    counts = [clip_io.check_clip(c, args.num_frames, *clip_io.describe(c.generated)) for c in clips]
  skipped = {}
  if 'fvd' in metrics and min(counts) < fvd.WINDOW:
    short = min(range(len(clips)), key=lambda i: counts[i])
    skipped['fvd'] = f'clip {clips[short].name} has {counts[short]} frames to score; FVD needs {fvd.WINDOW} per clip'
    metrics = tuple(m for m in metrics if m != 'fvd')
  networks, missing = evaluate.check_networks(
      metrics, lpips_net=args.lpips_net, face_embedder=args.face_embedder,
      insightface_root=args.insightface_root, dwpose_dir=args.dwpose_dir, pose_estimator=args.pose_estimator)
  outputs.check_target(out, overwrite=args.overwrite, ours=is_output,
                       inputs=[*(c.folder for c in clips), args.generated, args.checkpoint, *networks.paths()],
                       what='an sa-eval output (a folder with its metrics.json)')
  if networks.face_embedder is not None and networks.face_embedder.is_dir():
    if checkpoint.load_config(networks.face_embedder).models.face_embedder is None:
      raise ValueError(f'--face-embedder {networks.face_embedder}: the checkpoint holds no face embedder (convert '
                       'the release with sa-convert --face-embedder glintr100_torch.pth)')
  for clip, count in zip(clips, counts):
    evaluate.check_clip_files(clip, networks, count)
  outputs.check_space(out.parent, sum(evaluate.output_bytes(c, n) for c, n in zip(clips, counts)), 'the scores')
  return Job(clips=clips, counts=counts, animation=animation, metrics=metrics, networks=networks,
             skipped={**skipped, **missing}, out=out, staging=staging, overwrite=args.overwrite)


def _check_animation(clips: list[clip_io.Clip], args: argparse.Namespace, options: Sequence[str],
                     out: Path) -> animate_tool.Job:
  """The checked sa-animate job that animates every clip into `out` (`options` are sa-animate's)."""
  argv = ['--input', *map(str, (c.folder for c in clips)), '--out', str(out), *options]
  if args.checkpoint:
    argv += ['--checkpoint', args.checkpoint]
  if args.num_frames:
    argv += ['--num-frames', str(args.num_frames)]
  animation = animate_tool.validate(argv)
  if animation.failures:
    raise ValueError('; '.join(f'clip {clips[i].name}: {err}' for i, err in animation.failures.items()))
  return animation


def main(argv: Sequence[str] | None = None) -> None:
  run_main(TOOL, _main, argv)


def _main(argv: Sequence[str]) -> None:
  setup_logging()
  job = validate(argv)
  staging = job.staging
  staging.mkdir(parents=True)
  try:
    clips, failed = job.clips, []
    if job.animation is not None:
      failed = animate_tool.animate_job(job.animation)
      clips = [dataclasses.replace(c, generated=o.parent / f'{o.stem}_frames')
               for c, o in zip(clips, job.animation.outs)]
    scored = [(c, n) for i, (c, n) in enumerate(zip(clips, job.counts)) if i not in failed]
    networks = evaluate.load_networks(job.networks, _face_embedder(job.networks.face_embedder))
    with tqdm(total=len(scored), desc='scoring', unit='clip') as bar:
      scores = evaluate.evaluate(scored, networks, job.metrics, progress=lambda: bar.update(1),
                                 picture=lambda name, image: _save_picture(staging, name, image))
    scores['skipped'] = {**job.skipped, **scores['skipped']}
    scores['failed'] = [clips[i].name for i in failed]
    scores['written_by'] = f'{TOOL} ({outputs.SIGNATURE})'
    (staging / METRICS_FILE).write_text(report.to_json(scores))
    (staging / 'metrics.md').write_text(report.markdown(scores))
    if job.overwrite:
      outputs.check_target(job.out, overwrite=True, ours=is_output, what='an sa-eval output')
    outputs.replace(staging, job.out)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  logger.info('scores in %s:\n%s', job.out, report.markdown(scores))
  if failed:
    sys.exit(f'{TOOL}: error: {len(failed)} of {len(job.clips)} clips could not be generated (listed above); '
             f'the others were scored into {job.out}')


def _face_embedder(path: Path | None) -> tuple[Any, iresnet.IResNetConfig] | None:
  """Our IResNet's `(params, config)` from the release's `.pth` (config read off its tensors) or a checkpoint."""
  if path is None:
    return None
  if path.is_dir():
    params, config = checkpoint.load(path, ['face_embedder'])
    return params['face_embedder'], config.models.face_embedder
  config = iresnet.IResNetConfig.from_dict(release.face_embedder_config(state_dict.load_state_dict(path)))
  return convert_iresnet.load_face_embedder(path, config), config


def _save_picture(folder: Path, name: str, image: Any) -> None:
  (folder / 'clips').mkdir(exist_ok=True)
  frame_io.save_rgb(folder / 'clips' / f'{name}.png', image)


if __name__ == '__main__':
  main()
