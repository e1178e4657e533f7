r"""`sa-web`: a web page for animation (Gradio), on this machine only unless told otherwise.

  sa-web                                               # the demo model, http://127.0.0.1:7860
  sa-web --checkpoint ckpt/ --dwpose-dir checkpoints/DWPose --insightface-root .   # videos too
  sa-web --checkpoint ckpt/ --port 8080 --config.sampler.dtype=bfloat16

Run settings come from `--config` (default `configs/animate.py`) and `--config.<section>.<field>=VALUE`
overrides, as for sa-animate; each request's options (size, steps, guidance, tiles, seed, HJB) start
from them. docs/web.md: usage and what is written where.
"""

import argparse
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from sa_jax import animate, serve
from tools import animate as animate_tool
from tools import run_main, setup_logging

logger = logging.getLogger('sa-web')
LOCAL_HOSTS = ('127.0.0.1', 'localhost', '::1')


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='sa-web', description=__doc__.split('\n')[0].replace('`', ''))
  p.add_argument('--checkpoint', help='sa-convert output; omit for the demo model (trained on synthetic 64x64 characters)')
  p.add_argument('--host', default='127.0.0.1', help='address to listen on (default: this machine only)')
  p.add_argument('--port', type=int, default=7860, help='port to listen on')
  p.add_argument('--dwpose-dir', help='DWPose models (yolox_l.onnx, dw-ll_ucoco_384.onnx): driving videos')
  p.add_argument('--insightface-root', help='ROOT with models/antelopev2: face embeddings of videos and '
                 'of pose-frame zips')
  p.add_argument('--config', default=animate_tool.DEFAULT_CONFIG, help='run settings file (get_config())')
  p.add_argument('--compile-cache', action='store_true', help="JAX's persistent compilation cache: a restart "
                 'compiles less, but progress then comes once per request instead of per step')
  p.add_argument('--debug', action='store_true', help='show the traceback of an error')
  return p


def validate(argv: Sequence[str]) -> tuple[argparse.Namespace, object]:
  """The flags and the run settings, checked before anything is loaded."""
  parser = _parser()
  args, rest = parser.parse_known_args(argv)
  stray = [a for a in rest if not a.startswith('--config.')]
  if stray:
    parser.error(f'unrecognized arguments: {" ".join(stray)}')
  if args.dwpose_dir and not args.insightface_root:
    parser.error('--dwpose-dir needs --insightface-root too (sa-prep computes the reference face embedding)')
  if not 0 < args.port < 65536:
    parser.error(f'--port {args.port}: expected 1..65535')
  try:
    run = animate_tool.run_config(args.config, rest)
  except ValueError as err:
    parser.error(str(err))
  run.io.compile_cache = args.compile_cache
  if args.checkpoint is None and not any(a.startswith(('--config.io.width', '--config.io.height')) for a in rest):
    run.io.width = run.io.height = 0          # the demo at the bundled sample's own size
  return args, run


def main(argv: Sequence[str] | None = None) -> None:
  run_main('sa-web', _main, argv)


def _main(argv: Sequence[str]) -> None:
  setup_logging()
  args, run = validate(argv)
  model = serve.load_model(args.checkpoint, run, args.dwpose_dir, args.insightface_root)
  if args.checkpoint is None:
    logger.info('no --checkpoint: using the DEMO model (trained on synthetic 64x64 characters)')
  if args.host not in LOCAL_HOSTS:
    logger.warning('listening on %s: anyone who reaches this address can use the page (no login)', args.host)
  animate.enable_compile_cache(run.io.compile_cache, run.io.compile_cache_dir)
  workdir = Path(tempfile.mkdtemp(prefix='sa-web-'))
  os.environ['GRADIO_TEMP_DIR'] = str(workdir / 'gradio')      # Gradio's cache, read when the app is built
  try:
    from sa_jax import web
    app = web.make_app(model, workdir)
    logger.info('serving on %s (Ctrl-C stops)', web.launch(app, args.host, args.port))
    try:
      while app.is_running:
        time.sleep(0.5)
    finally:
      app.close()
  finally:
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == '__main__':
  main()
