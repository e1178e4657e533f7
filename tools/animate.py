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

import ml_collections
from absl import flags
from ml_collections import config_flags
from tqdm import tqdm

import configs
from sa_jax import animate
from tools import run_main, setup_logging

logger = logging.getLogger('sa-animate')
DEFAULT_CONFIG = str(Path(configs.__file__).resolve().parent / 'animate.py')
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


def main(argv: Sequence[str] | None = None) -> None:
  run_main('sa-animate', _main, argv)


def _main(argv: Sequence[str]) -> None:
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
  setup_logging()

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
  if args.checkpoint is None:
    logger.info('no --checkpoint: using the DEMO model, the tiny config with seeded random weights. The '
                'output shows the pipeline running, not a trained model; convert the release with '
                'sa-convert for real results.')
  out = Path(args.out)
  if out.suffix.lower() == '.mp4':
    if len(cases) > 1:
      parser.error(f'{len(cases)} cases need an output folder, not {out}')
    outs = [out]
  else:
    outs = [out / f'{c.name}.mp4' for c in cases]
  inputs = [args.checkpoint, *(value for case in cases for value in dataclasses.astuple(case))]
  animate.check_outputs(outs, args.overwrite, inputs)
  animate.check_run(run)

  cache = animate.enable_compile_cache(run.io.compile_cache, run.io.compile_cache_dir)
  if cache:
    logger.info('compilation cache: %s', cache)
  mesh = animate.make_mesh(run)
  params, config = animate.load_model_for(args.checkpoint, run, mesh)
  failed = 0
  # Per step without the compilation cache (the sampler reports each step); per batch with it.
  per_step = not run.io.compile_cache
  batches = -(-len(cases) // run.io.batch_size)
  with tqdm(total=batches * run.sampler.num_steps if per_step else batches, desc='denoising',
            unit='step' if per_step else 'batch') as bar:
    for index, result in animate.animate_cases(params, config, cases, run, mesh, progress=lambda i: bar.update(1)):
      if isinstance(result, Exception):
        failed += 1
        logger.error('%s: %s', cases[index].folder or cases[index].reference, result)
        continue
      written = animate.write_outputs(result, outs[index], run.conditioning.fps, overwrite=args.overwrite,
                                      inputs=inputs)
      logger.info('%d frames at %dx%d -> %s', len(result), result.shape[2], result.shape[1],
                  ', '.join(map(str, written)))
  if failed:
    sys.exit(f'sa-animate: error: {failed} of {len(cases)} cases failed (listed above)')


if __name__ == '__main__':
  main()
