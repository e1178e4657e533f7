r"""`sa-animate`: animate reference photos with pose sequences.

  sa-animate --checkpoint ckpt/ --input case/ --out out/case.mp4          # an sa-prep folder
  sa-animate --checkpoint ckpt/ --reference ref.png --poses poses/ --face-embedding face.npy \
      --out out.mp4 --width 512 --height 512 --hjb --face-masks faces/ --reference-face-mask mask.png
  sa-animate --checkpoint ckpt/ --input cases/ --out out/ --batch-size 4 --mesh data=4   # many cases
  sa-animate --out outputs/sample.mp4 --config.sampler.num_steps=10      # bundled sample, demo model

Run settings come from `--config` (default `configs/animate.py`), its fields overridden with
`--config.<section>.<field>=VALUE`; the short flags below override the same fields.
"""

import argparse
import dataclasses
import importlib.util
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import ml_collections
from absl import flags
from ml_collections import config_flags
from tqdm import tqdm

import configs
from sa_jax import animate, errors, outputs
from sa_jax.sampling import pipeline
from tools import run_main, setup_logging

logger = logging.getLogger('sa-animate')
DEFAULT_CONFIG = str(Path(configs.__file__).resolve().parent / 'animate.py')
# --out suffixes of a file sa-animate does not write (other suffixes name an output folder).
NOT_FOLDERS = ('.gif', '.png', '.jpg', '.jpeg', '.webp', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg', '.mpeg')
# Short flag -> (config field, type, help).
SHORT_FLAGS = {
    'width': ('io.width', int, 'generation width, a multiple of 64 (0: the reference\'s)'),
    'height': ('io.height', int, 'generation height, a multiple of 64 (0: the reference\'s)'),
    'num_frames': ('io.num_frames', int, 'use the first N poses (0: all)'),
    'seed': ('io.seed', int, 'seed of each video\'s initial noise and noise augmentation'),
    'batch_size': ('io.batch_size', int, 'videos per compiled call (cases of one size are batched)'),
    'mesh': ('mesh.shape', str, 'device mesh, e.g. data=2,fsdp=4 (empty: one device)'),
    'steps': ('sampler.num_steps', int, 'Euler denoising steps'),
    'guidance': ('sampler.guidance', float, 'guidance at the last frame'),
    'min_guidance': ('sampler.min_guidance', float, 'guidance at the first frame (unset: --guidance)'),
    'tile_size': ('sampler.tile_size', int, 'frames per UNet tile (shrunk to a shorter clip)'),
    'tile_overlap': ('sampler.tile_overlap', int, 'frames shared by neighbouring tiles'),
    'decode_chunk_size': ('sampler.decode_chunk_size', int, 'frames per VAE decoder call'),
    'unet_batch_size': ('sampler.unet_batch_size', int, 'UNet rows per call (bounds memory)'),
    'query_chunk_size': ('sampler.query_chunk_size', int, 'spatial attention query chunk (bounds memory)'),
    'dtype': ('sampler.dtype', str, 'compute dtype: float32 or bfloat16'),
    'fps': ('conditioning.fps', int, 'conditioning fps and output frame rate'),
    'motion_bucket_id': ('conditioning.motion_bucket_id', float, 'SVD motion conditioning'),
    'noise_aug_strength': ('conditioning.noise_aug_strength', float, 'noise added to the reference latents'),
    'hjb_start': ('hjb.start', int, 'first HJB refine step (0-based)'),
    'hjb_end': ('hjb.end', int, 'last HJB refine step (inclusive)'),
    'hjb_iterations': ('hjb.iterations', int, 'Adam iterations per refine step'),
    'hjb_eta': ('hjb.eta', float, 'learning rate scale: step i uses eta * (1 - i / steps)'),
}


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='sa-animate', description=__doc__.split('\n')[0].replace('`', ''),
                              epilog='Run settings: --config FILE (default configs/animate.py) and '
                              '--config.<section>.<field>=VALUE overrides (e.g. --config.sampler.num_steps=30).')
  p.add_argument('--config', default=DEFAULT_CONFIG, help='run settings file (a get_config() module)')
  p.add_argument('--checkpoint', help='sa-convert output; omit for the bundled demo model and sample')
  p.add_argument('--input', nargs='+', help='sa-prep folders, or folders of them (each one a case)')
  p.add_argument('--reference', help='reference photo (one case)')
  p.add_argument('--poses', help='folder of pose skeleton frames frame_<i>.png')
  p.add_argument('--face-masks', help='folder of per-frame face masks (HJB), at the generation size')
  p.add_argument('--reference-face-mask', help='face mask of the reference photo (HJB)')
  p.add_argument('--face-embedding', help='512-d reference face embedding .npy (sa-prep writes one)')
  p.add_argument('--insightface-root', help='ROOT with models/antelopev2 to compute the embedding')
  p.add_argument('--out', required=True, help='output .mp4 for one case (OUT.gif, OUT_frames/ too), or a '
                 'folder that gets <case>.mp4 for each case')
  p.add_argument('--overwrite', action='store_true', help='replace existing outputs')
  p.add_argument('--hjb', action='store_const', const=True, help='HJB face correction (needs face masks)')
  p.add_argument('--no-compile-cache', action='store_true', help="don't use JAX's persistent compilation cache")
  p.add_argument('--debug', action='store_true', help='show the traceback of an error')
  for name, (field, kind, text) in SHORT_FLAGS.items():
    p.add_argument('--' + name.replace('_', '-'), type=kind, help=f'{text} [{field}]')
  return p


def run_config(path: str, overrides: Sequence[str]) -> ml_collections.ConfigDict:
  """The `get_config()` of the file `path` with `--config.<field>=VALUE` overrides (unknown fields
  refused), parsed by ml_collections' config flags."""
  spec = importlib.util.spec_from_file_location('sa_animate_run_config', path)
  if spec is None or not Path(path).is_file():
    raise ValueError(f'run settings {path}: not a Python file with get_config()')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  values = flags.FlagValues()
  argv = ['sa-animate', *overrides]
  try:
    config_flags.DEFINE_config_dict('config', module.get_config(), flag_values=values, lock_config=True,
                                    sys_argv=argv)
    values(argv)
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as err:
    raise ValueError(f'run settings {path}: {err}') from err
  return values.config


@dataclasses.dataclass(frozen=True)
class Job:
  """A checked sa-animate run: every option, output and input verified, nothing loaded or compiled.

  Attributes:
    run: the run settings (`configs/animate.py` with the flags applied).
    checkpoint: the checkpoint folder, None for the demo model.
    cases: each case's input files.
    outs: each case's output `.mp4` (its `.gif` and `_frames/` beside it).
    requests: the read inputs of every readable case, by case index.
    failures: the cases whose inputs cannot be used, by case index.
    inputs: every input path of the run (no output may be or hold one).
    mesh: the device mesh, None for one device.
    overwrite: the user's `--overwrite`.
  """
  run: ml_collections.ConfigDict
  checkpoint: str | None
  cases: list[animate.Inputs]
  outs: list[Path]
  requests: dict[int, pipeline.Request]
  failures: dict[int, Exception]
  inputs: list[Any]
  mesh: Any
  overwrite: bool


def validate(argv: Sequence[str]) -> Job:
  """Parses and checks a whole sa-animate command line before any model is loaded or compiled:
  options and their combinations, the checkpoint's config, every output path (replaceable, writable,
  room for the videos) and every case's files (read here). Usage errors exit with status 2; the
  rest raise one-line `OSError`/`ValueError`s naming the path or option."""
  parser = _parser()
  args, rest = parser.parse_known_args(argv)
  stray = [a for a in rest if not a.startswith('--config.')]
  if stray:
    parser.error(f'unrecognized arguments: {" ".join(stray)} (config overrides take the form '
                 '--config.<section>.<field>=VALUE)')
  try:
    run = run_config(args.config, rest)
  except ValueError as err:
    parser.error(str(err))
  for name, (field, _, _) in SHORT_FLAGS.items():
    if getattr(args, name) is not None:
      section, key = field.split('.')
      run[section][key] = getattr(args, name)
  if args.hjb:
    run.hjb.enabled = True
  if args.no_compile_cache:
    run.io.compile_cache = False
  if args.input and (args.reference or args.poses):
    parser.error('give either --input or --reference/--poses, not both')
  if args.input:
    cases = [animate.Inputs(folder=c, insightface_root=args.insightface_root)
             for c in animate.find_cases(args.input)]
  elif args.reference or args.poses:
    cases = [animate.Inputs(reference=args.reference, poses=args.poses, face_masks=args.face_masks,
                            reference_face_mask=args.reference_face_mask, face_embedding=args.face_embedding,
                            insightface_root=args.insightface_root)]
  else:
    if args.checkpoint is not None:
      parser.error('give --input or --reference/--poses')
    cases = [animate.Inputs(folder=animate.SAMPLE_DIR)]
    if args.width is None and args.height is None:
      run.io.width = run.io.height = 0          # the sample's own size
  animate.check_run(run)
  out = Path(args.out)
  if out.suffix.lower() == '.mp4':
    if len(cases) > 1:
      parser.error(f'{len(cases)} cases need an output folder, not {out}')
    outs = [out]
  elif out.suffix.lower() in NOT_FOLDERS:
    raise ValueError(f'--out {out}: sa-animate writes .mp4 (with .gif and _frames/ beside it); give '
                     'OUT.mp4 for one case or a folder')
  else:
    outs = [out / f'{c.name}.mp4' for c in cases]
  inputs = [args.checkpoint, *(value for case in cases for value in dataclasses.astuple(case))]
  animate.check_outputs(outs, args.overwrite, inputs)
  try:
    imageio_ffmpeg.get_ffmpeg_exe()
  except RuntimeError as err:
    raise OSError(f'no ffmpeg to write the videos with ({errors.first_line(err)}); install imageio-ffmpeg') from err
  config = animate.check_checkpoint(args.checkpoint, run)
  mesh = animate.make_mesh(run)
  requests, failures = animate.read_cases(cases, run, config.models.face_encoder.id_embeddings_dim)
  if len(failures) == len(cases):
    if len(cases) == 1:
      raise failures[0]
    raise ValueError(f'none of the {len(cases)} cases can be read: '
                     + '; '.join(f'{_where(cases[i])}: {err}' for i, err in failures.items()))
  need: dict[Path, int] = {}
  for index, request in requests.items():
    need[outs[index].parent] = need.get(outs[index].parent, 0) + animate.output_bytes(request)
  for folder, size in need.items():
    outputs.check_space(folder, size, 'the videos')
  return Job(run=run, checkpoint=args.checkpoint, cases=cases, outs=outs, requests=requests, failures=failures,
             inputs=inputs, mesh=mesh, overwrite=args.overwrite)


def _where(case: animate.Inputs) -> Any:
  return case.folder or case.reference or case.poses


def main(argv: Sequence[str] | None = None) -> None:
  run_main('sa-animate', _main, argv)


def _main(argv: Sequence[str]) -> None:
  setup_logging()
  job = validate(argv)
  failed = animate_job(job)
  if failed:
    sys.exit(f'sa-animate: error: {len(failed)} of {len(job.cases)} cases failed (listed above)')


def animate_job(job: Job) -> list[int]:
  """Animates a validated job, writing each video as its batch finishes; returns the failed cases' indices
  (each logged with its path)."""
  run, cases = job.run, job.cases
  for index, err in job.failures.items():
    logger.error('%s: %s', _where(cases[index]), err)
  if job.checkpoint is None:
    logger.info('no --checkpoint: using the DEMO model (%s), trained on synthetic 64x64 characters; '
                'convert the release with sa-convert for real people.', animate.DEMO_MODEL)
  cache = animate.enable_compile_cache(run.io.compile_cache, run.io.compile_cache_dir)
  if cache:
    logger.info('compilation cache: %s', cache)
  params, config = animate.load_model_for(job.checkpoint, run, job.mesh)
  failed = sorted(job.failures)
  # Per step without the compilation cache (the sampler reports each step); per batch with it.
  per_step = not run.io.compile_cache
  batches = -(-len(job.requests) // run.io.batch_size)
  with tqdm(total=batches * run.sampler.num_steps if per_step else batches, desc='denoising',
            unit='step' if per_step else 'batch') as bar:
    for index, result in animate.animate_requests(params, config, job.requests, run, job.mesh,
                                                  progress=lambda _: bar.update(1)):
      if isinstance(result, Exception):
        failed.append(index)
        logger.error('%s: %s', _where(cases[index]), result)
        continue
      written = animate.write_outputs(result, job.outs[index], run.conditioning.fps, overwrite=job.overwrite,
                                      inputs=job.inputs)
      logger.info('%d frames at %dx%d -> %s', len(result), result.shape[2], result.shape[1],
                  ', '.join(map(str, written)))
  return failed


if __name__ == '__main__':
  main()
