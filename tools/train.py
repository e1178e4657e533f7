r"""`sa-train`: fine-tune StableAnimator (or train the tiny model) into a workdir; resumes by itself.

  sa-train --config configs/train.py --workdir runs/ft --init ckpt/ \
      --config.data.roots=animation_data/video_rec_path.txt [--config.mesh.shape=data=2,fsdp=4]
  sa-train --config configs/train.py:tiny --workdir runs/tiny --config.data.roots=clips/
  sa-train --workdir runs/tiny --export runs/tiny/release [--export_step 300] [--ema]
  sa-train --workdir runs/demo --export_checkpoint runs/demo/model [--ema] [--export_dtype bfloat16]
  sa-train --config configs/train.py --workdir /tmp/x --init ckpt/ --estimate_memory

Metrics go to WORKDIR/metrics.jsonl and TensorBoard files in WORKDIR/tensorboard/; checkpoints to
WORKDIR/checkpoints/. `--export DIR` writes unet.pth, pose_net.pth and face_encoder.pth of a
saved step in the release's format (PyTorch StableAnimator loads them), with an export.json manifest;
`--overwrite` replaces only files of an earlier export that the manifest lists unmodified. The export
folder may lie inside the workdir but may not be or hold it or the init checkpoint.
`--export_checkpoint DIR` writes the step as an sa-jax checkpoint instead (with the init checkpoint's
face embedder), which sa-animate, sa-eval and sa-web read; `--overwrite` replaces only a checkpoint.
"""

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from absl import flags
from ml_collections import config_flags

import configs
from tools import USER_ERRORS, run_main, setup_logging

logger = logging.getLogger('sa-train')
DEFAULT_CONFIG = str(Path(configs.__file__).resolve().parent / 'train.py')


def _flags(argv: Sequence[str]) -> flags.FlagValues:
  """absl flags on a private FlagValues (ml_collections registers the --config.* overrides it finds in argv)."""
  values = flags.FlagValues()
  argv = ['sa-train', *argv]
  config_flags.DEFINE_config_file('config', DEFAULT_CONFIG, 'training settings (configs/train.py[:tiny])',
                                  flag_values=values, lock_config=True, sys_argv=argv)
  flags.DEFINE_string('workdir', None, 'run folder: checkpoints, metrics, exports', flag_values=values)
  flags.DEFINE_string('init', None, 'sa-jax checkpoint to fine-tune (sets config.model.init)', flag_values=values)
  flags.DEFINE_string('export', None, 'write the release .pth files of a saved step to this folder and stop',
                      flag_values=values)
  flags.DEFINE_string('export_checkpoint', None, 'write an sa-jax checkpoint of a saved step (sa-animate '
                      '--checkpoint reads it) to this folder and stop', flag_values=values)
  flags.DEFINE_enum('export_dtype', 'float32', ['float32', 'bfloat16'], '--export_checkpoint: stored dtype',
                    flag_values=values)
  flags.DEFINE_integer('export_step', None, 'step to export (default: the latest)', flag_values=values)
  flags.DEFINE_bool('ema', False, 'export the EMA of the trained parameters', flag_values=values)
  flags.DEFINE_bool('overwrite', False, 'let --export replace existing .pth files (--export_checkpoint: a '
                    'checkpoint)', flag_values=values)
  flags.DEFINE_bool('estimate_memory', False, "print XLA's per-device memory of the step and stop",
                    flag_values=values)
  flags.DEFINE_bool('progress', True, 'show a progress bar', flag_values=values)
  flags.DEFINE_bool('debug', False, 'show the traceback of an error', flag_values=values)
  try:
    values(argv)
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as err:
    raise ValueError(str(err).splitlines()[0]) from err
  if not values.workdir:
    raise ValueError('--workdir is required')
  return values


def _export_source(values: flags.FlagValues) -> str:
  """What `--export` writes, in words, for the export's manifest."""
  step = 'the latest step' if values.export_step is None else f'step {values.export_step}'
  return f'sa-train --workdir {values.workdir}: {step}{" (EMA)" if values.ema else ""}'


def main(argv: Sequence[str] | None = None) -> None:
  run_main('sa-train', _main, argv, errors=(*USER_ERRORS, RuntimeError))


def _main(argv: Sequence[str]) -> None:
  values = _flags(argv)
  config = values.config
  if values.init:
    config.model.init = values.init
  setup_logging()
  from sa_jax.training import trainer
  trainer.distributed_init(config)
  if values.estimate_memory:
    trainer.check_config(config, values.workdir)
    estimate = trainer.memory_estimate(config, trainer.model_config(config).models)
    sys.stdout.write(json.dumps(estimate) + '\n')
    return
  if values.export and values.export_checkpoint:
    raise ValueError('--export and --export_checkpoint: give one')
  if values.export_checkpoint:
    out = trainer.export_checkpoint(values.workdir, values.export_checkpoint, values.export_step, values.ema,
                                    values.overwrite, values.export_dtype)
    logger.info('exported %s', out)
    return
  if values.export:
    from convert import release
    inputs = (values.workdir, config.model.init or None)
    release.check_export_target(values.export, values.overwrite, inputs)
    params = trainer.exported_params(values.workdir, values.export_step, values.ema)
    written = release.export_release(params, values.export, overwrite=values.overwrite, inputs=inputs,
                                     source=_export_source(values))
    logger.info('exported %s', ', '.join(map(str, written)))
    return
  metrics = trainer.train(config, values.workdir, progress=values.progress)
  logger.info('done: %s', ', '.join(f'{k} {v:.4g}' for k, v in sorted(metrics.items())))


if __name__ == '__main__':
  main()
