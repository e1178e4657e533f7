"""End to end against the original: `sa-animate` and the original StableAnimator pipeline
(`tools/original.py`), each run as a fresh process on the same weights and inputs, timed from outside
(wall seconds, peak resident memory from `wait4`). Part of `python -m tools.bench reference`.

The weights are the golden reference set's tiny `pipeline` case (tests/reference/README.md),
converted for sa-animate by our converter and loaded by the original as its release script loads
the release. The inputs are the bundled sample (its 5 poses repeated and every image resized for
larger cases). sa-animate runs cold (an empty compilation cache: every program traced, compiled
and stored, as a user's first run) and warm (the cache the last cold run filled).

Then the release networks one by one (`compare_components`, random weights at the release sizes):
the UNet's denoising step, one VAE decode chunk and IResNet-100 forward and backward, ours run by
`python -m tools.bench_original TASK` and the original's by `tools/original.py TASK`.
"""

import dataclasses
import json
import logging
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from convert import release
from sa_jax import animate, checkpoint
from tests.parity import reference

logger = logging.getLogger('bench')
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PYTHON = ROOT / '.venv-original' / 'bin' / 'python'


@dataclasses.dataclass(frozen=True)
class Case:
  """One end-to-end comparison: a clip of `frames` poses at `width` x `height`."""
  name: str
  width: int
  height: int
  frames: int
  steps: int
  guidance: float
  tile_size: int
  tile_overlap: int
  hjb: tuple[int, int, int] | None = None       # (first step, last step, Adam iterations)


CASES = (
    Case('64x128, 5 frames, 4 steps, guidance 2', 64, 128, 5, 4, 2.0, 5, 2),
    Case('same + HJB (steps 0-1, 3 Adam iterations)', 64, 128, 5, 4, 2.0, 5, 2, hjb=(0, 1, 3)),
    Case('256x512, 8 frames, 10 steps, tile 8 overlap 1', 256, 512, 8, 10, 2.0, 8, 1),
)


def write_inputs(case: Case, folder: Path) -> Path:
  """The bundled sample as a case of `case.frames` frames at its size (poses repeated in order,
  images resized: nearest for poses and masks, bilinear for the reference)."""
  sample = animate.SAMPLE_DIR
  size = (case.width, case.height)
  for sub in ('poses', 'faces'):
    (folder / sub).mkdir(parents=True)
    frames = sorted((sample / sub).glob('frame_*.png'), key=lambda p: int(p.stem.split('_')[1]))
    for i in range(case.frames):
      with Image.open(frames[i % len(frames)]) as image:
        image.resize(size, Image.NEAREST).save(folder / sub / f'frame_{i}.png')
  with Image.open(sample / 'reference.png') as image:
    image.resize(size, Image.BILINEAR).save(folder / 'reference.png')
  with Image.open(sample / 'reference_face_mask.png') as image:
    image.resize(size, Image.NEAREST).save(folder / 'reference_face_mask.png')
  np.save(folder / 'face_embedding.npy', np.load(sample / 'face_embedding.npy', allow_pickle=False))
  return folder


# Starts the measured command from a fresh small Python and reports its rusage: a child's ru_maxrss
# counts the pages it shared with its parent until exec (Linux keeps the old address space's high
# water mark), so a command forked by this large process would report at least our own size.
LAUNCHER = """
import json, os, subprocess, sys, time
start = time.perf_counter()
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
report = {'status': os.waitstatus_to_exitcode(status), 'wall_s': time.perf_counter() - start,
          'rss_mib': usage.ru_maxrss / 1024}
with open(sys.argv[1], 'w') as f:
  json.dump(report, f)
"""


def _measured(command: list[str], what: str = '') -> dict[str, Any]:
  """Runs `command` to the end: wall seconds, peak RSS (MiB) of that process alone, its last stdout
  line (logged as `what` when given)."""
  with tempfile.TemporaryDirectory(prefix='sa-bench-usage-') as folder:
    usage_file = Path(folder) / 'usage.json'
    done = subprocess.run([sys.executable, '-c', LAUNCHER, str(usage_file), *command], capture_output=True,
                          text=True, cwd=ROOT, check=False)
    usage = json.loads(usage_file.read_text()) if usage_file.is_file() else {'status': done.returncode}
  if usage['status'] or done.returncode:
    err = done.stderr.strip()
    raise RuntimeError(f'{" ".join(command[:3])} ... failed ({usage["status"] or done.returncode}): '
                       f'{err.splitlines()[-1] if err else "no message"}')
  lines = done.stdout.strip().splitlines()
  if what:
    logger.info('%s: %.1f s, peak RSS %.0f MiB', what, usage['wall_s'], usage['rss_mib'])
  return {'wall_s': usage['wall_s'], 'rss_mib': usage['rss_mib'], 'last_line': lines[-1] if lines else ''}


def _median(runs: list[dict[str, Any]]) -> dict[str, float]:
  return {k: statistics.median(r[k] for r in runs) for k in ('wall_s', 'rss_mib')}


def ours_command(case: Case, ckpt: Path, inputs: Path, out: Path, cache: Path) -> list[str]:
  command = [sys.executable, '-m', 'tools.animate', '--checkpoint', str(ckpt), '--input', str(inputs),
             '--out', str(out), '--overwrite', '--width', str(case.width), '--height', str(case.height),
             '--steps', str(case.steps), '--guidance', str(case.guidance), '--tile-size', str(case.tile_size),
             '--tile-overlap', str(case.tile_overlap), '--decode-chunk-size', '4', '--noise-aug-strength', '0']
  if case.hjb:
    start, end, iterations = case.hjb
    command += ['--hjb', '--hjb-start', str(start), '--hjb-end', str(end), '--hjb-iterations', str(iterations)]
  return command + [f'--config.io.compile_cache_dir={cache}']


def original_command(case: Case, python: Path, checkout: Path, weights: Path, inputs: Path) -> list[str]:
  command = [str(python), str(ROOT / 'tools' / 'original.py'), '--stableanimator', str(checkout), 'pipeline',
             '--weights', str(weights), '--case', str(inputs), '--width', str(case.width),
             '--height', str(case.height), '--steps', str(case.steps), '--guidance', str(case.guidance),
             '--tile-size', str(case.tile_size), '--tile-overlap', str(case.tile_overlap)]
  if case.hjb:
    start, end, iterations = case.hjb
    command += ['--hjb-start', str(start), '--hjb-end', str(end), '--hjb-iterations', str(iterations)]
  return command


def compare(reference_dir: Path, checkout: Path, python: Path, repeats: int,
            cases: tuple[Case, ...] = CASES) -> list[dict[str, Any]]:
  """Per case: the medians over `repeats` fresh processes of sa-animate cold and warm and of the
  original, and the original's own pipeline seconds."""
  found = reference.cases_in(reference_dir, 'pipeline')
  if not found:
    raise FileNotFoundError(f'no pipeline case (case.json "case": "pipeline") under {reference_dir}')
  weights = found[0]
  results = []
  with tempfile.TemporaryDirectory(prefix='sa-bench-') as tmp:
    tmp = Path(tmp)
    ckpt = tmp / 'ckpt'
    checkpoint.save(ckpt, *release.convert_release(weights.release_paths()))
    for n, case in enumerate(cases):
      inputs = write_inputs(case, tmp / f'case{n}' / 'inputs')
      out = tmp / f'case{n}' / 'out.mp4'
      what = f'case {n + 1}/{len(cases)} ({case.name})'
      caches = [tmp / f'case{n}' / f'cache{i}' for i in range(repeats)]     # each cold run fills its own
      cold = [_measured(ours_command(case, ckpt, inputs, out, cache), f'{what}: sa-animate cold, run {i + 1}')
              for i, cache in enumerate(caches)]
      warm = [_measured(ours_command(case, ckpt, inputs, out, caches[-1]), f'{what}: sa-animate warm, run {i + 1}')
              for i in range(repeats)]
      runs = [_measured(original_command(case, python, checkout, weights.path, inputs),
                        f'{what}: the original, run {i + 1}') for i in range(repeats)]
      original = {**_median(runs), 'pipeline_s': statistics.median(json.loads(r['last_line'])['pipeline_s'] for r in runs)}
      results.append({'case': case.name, 'ours_cold': _median(cold), 'ours_warm': _median(warm), 'original': original,
                      'original_versions': json.loads(runs[0]['last_line'])['versions']})
  return results


COMPONENTS = ('unet', 'vae_decode', 'iresnet')


def release_configs() -> dict[str, dict[str, Any]]:
  """Constructor arguments of the original's UNet, VAE and IResNet at the release sizes
  (configs/svd_xt.py without our own keys)."""
  from configs import svd_xt
  release = svd_xt.get_config().to_dict()
  return {'unet': {k: v for k, v in release['unet'].items() if k != 'num_face_tokens'},
          'vae_decode': release['vae'],
          'iresnet': {k: release['face_embedder'][k] for k in ('layers', 'num_features')}}


def _on_device(params: dict[str, Any]) -> Any:
  """NumPy parameters on the device one leaf at a time, each host copy freed once its device copy
  is made: on a CPU `jax.device_put` copies, and the whole tree at once held both copies (the
  release UNet's peak 11,115 MiB instead of 9,043)."""
  import jax
  from flax import traverse_util
  flat = traverse_util.flatten_dict(params)
  params.clear()
  for path in list(flat):
    flat[path] = jax.block_until_ready(jax.device_put(flat[path]))
  return traverse_util.unflatten_dict(flat)


def ours_component(task: str, frames: int, latent_size: int, repeats: int) -> dict[str, Any]:
  """One release-size component as sa-animate runs it, random weights: `unet` one denoising step's
  UNet work (both guidance branches in one batch-2 call, `frames` frames of `latent_size` latents),
  `vae_decode` one decoder call on `frames` latents, `iresnet` the HJB inner step's embedder work on
  `frames` faces (forward and backward to the faces). Compile seconds, median run seconds, XLA's
  memory analysis of the compiled program (MiB) and the parameter count."""
  import jax
  import jax.numpy as jnp
  from configs import svd_xt
  from sa_jax.models import iresnet, random_init, unet, vae
  from tools import bench                     # imported here: tools.bench imports this module
  release = svd_xt.get_config()
  draw = lambda *shape: jax.random.normal(jax.random.key(len(shape)), shape, jnp.float32)
  if task == 'unet':
    config = unet.UNetConfig.from_dict(release.unet.to_dict())
    params = random_init.random_params(unet.abstract_params(config), 0)
    fn, inputs = bench._unet_call(config, jnp.float32, None), bench._unet_inputs(config, 2, frames, latent_size,
                                                                                  jnp.float32)
  elif task == 'vae_decode':
    config = vae.VAEConfig.from_dict(release.vae.to_dict())
    params = random_init.random_params(vae.abstract_params(config), 0)
    fn = jax.jit(lambda p, z: vae.decode_frames(p, config, z, frames))
    inputs = (draw(frames, latent_size, latent_size, config.latent_channels),)
  elif task == 'iresnet':
    config = iresnet.IResNetConfig.from_dict(release.face_embedder.to_dict())
    params = random_init.random_params(iresnet.abstract_params(config), 0)
    model = iresnet.IResNet(config)
    embedding = lambda p, faces, reference: jnp.sum(model.apply({'params': p}, faces) * reference)
    fn = jax.jit(jax.grad(embedding, argnums=1))
    inputs = (draw(frames, iresnet.INPUT_SIZE, iresnet.INPUT_SIZE, 3), draw(1, config.num_features))
  else:
    raise ValueError(f'unknown component {task!r}; expected one of {COMPONENTS}')
  params = _on_device(params)
  compiled, compile_s = bench._compile(fn, params, *inputs)
  run_s, _ = bench._run_time(lambda: compiled(params, *inputs), repeats)
  memory = compiled.memory_analysis()
  return {'run_s': run_s, 'compile_s': compile_s, 'temp_mib': memory.temp_size_in_bytes / 2 ** 20,
          'parameters': sum(x.size for x in jax.tree.leaves(params))}


def component_commands(task: str, checkout: Path, python: Path, frames: int, latent_size: int, repeats: int
                       ) -> tuple[list[str], list[str]]:
  """The commands of one component's comparison: (ours, the original's)."""
  ours = [sys.executable, '-m', 'tools.bench_original', task, '--frames', str(frames), '--latent-size',
          str(latent_size), '--repeats', str(repeats)]
  size = ['--batch', str(frames)] if task == 'iresnet' else ['--frames', str(frames), '--latent-size', str(latent_size)]
  config_flag = {'unet': '--unet-config', 'vae_decode': '--vae-config', 'iresnet': '--iresnet-config'}[task]
  theirs = [str(python), str(ROOT / 'tools' / 'original.py'), '--stableanimator', str(checkout), task, config_flag,
            json.dumps(release_configs()[task]), *size, '--repeats', str(repeats)]
  return ours, theirs


def compare_components(checkout: Path, python: Path, frames: int, latent_size: int, repeats: int
                       ) -> dict[str, dict[str, Any]]:
  """Each of `COMPONENTS` at the release sizes, ours and the original's, each in a fresh process."""
  results = {}
  for task in COMPONENTS:
    what = f'release {task}, {frames} frames' + (f' of {latent_size}x{latent_size} latents' * (task != 'iresnet'))
    ours, theirs = component_commands(task, checkout, python, frames, latent_size, repeats)
    ours, theirs = _measured(ours, f'{what}: sa-jax'), _measured(theirs, f'{what}: the original')
    results[task] = {'ours': {**json.loads(ours['last_line']), 'rss_mib': ours['rss_mib']},
                     'original': {**json.loads(theirs['last_line']), 'rss_mib': theirs['rss_mib']}}
  return results


def main() -> None:
  """`python -m tools.bench_original TASK`: ours_component in this fresh process, printed as one JSON line."""
  import argparse
  p = argparse.ArgumentParser(description=main.__doc__.split(':')[1].strip())
  p.add_argument('task', choices=COMPONENTS)
  p.add_argument('--frames', type=int, required=True, help='frames (faces for iresnet)')
  p.add_argument('--latent-size', type=int, required=True, help='latent height = width (unet, vae_decode)')
  p.add_argument('--repeats', type=int, default=3)
  args = p.parse_args()
  print(json.dumps(ours_component(args.task, args.frames, args.latent_size, args.repeats)))


if __name__ == '__main__':
  main()
