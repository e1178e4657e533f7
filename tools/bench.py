r"""`python -m tools.bench`: timing and memory benchmarks, each against a baseline of the same run.

  python -m tools.bench                                  # all benchmarks but hjb_memory
  python -m tools.bench batch --batch-sizes 1 4          # videos per minute, B at a time in one program
  python -m tools.bench sampler --steps 25 --hjb         # one-scan sampler vs a Python loop of steps
  python -m tools.bench memory --full-size               # + the release config at 512x512, 16 frames
  python -m tools.bench hjb_memory --full-size           # one HJB refine step: memory vs frames
  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
  python -m tools.bench production                       # release at 576x1024: FLOPs, memory, compile time
  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
  python -m tools.bench train_memory                     # the release train step per device: the memory plan
  python -m tools.bench train_step                       # a release train step run here: time, FLOPs, MFU
  python -m tools.bench unet --unet-frames 8 --unet-size 32
  python -m tools.bench eval --eval-size 512              # sa-eval's metrics: seconds per 16-frame clip

Every table gives wall times as the median of `--repeats` runs after one warm-up run, the compile
time (trace + lower + XLA compile) apart, and a ratio to the table's baseline row measured in the
same process; absolute times depend on the machine, only the ratios travel. docs/performance.md
describes each benchmark and the numbers measured on the development machine.
"""

import argparse
import dataclasses
import importlib.util
import json
import logging
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.compilation_cache import compilation_cache
from PIL import Image

from configs import animate as animate_config
from configs import svd_xt
from configs import train as train_configs
from sa_jax import animate, diffusion, outputs, sharding
from sa_jax.checkpoint import CheckpointConfig
from sa_jax.eval import face, fvd, lpips, metrics
from sa_jax.models import iresnet, random_init, stable_animator, unet, vae
from sa_jax.models.stable_animator import ModelConfigs
from sa_jax.sampling import hjb, pipeline, sampler
from sa_jax.training import loss as loss_lib
from sa_jax.training import trainer
from tools import bench_original, setup_logging

logger = logging.getLogger('bench')
BENCHMARKS = ('sampler', 'hjb', 'memory', 'hjb_memory', 'production', 'train_memory', 'train_step', 'unet',
              'reference', 'batch', 'eval')
ON_REQUEST = ('hjb_memory', 'production', 'train_memory', 'train_step')   # compile-heavy (minutes each): by name only
# The production-scale figures (issue 13): the release config as a user of an accelerator runs it.
PRODUCTION = dict(height=576, width=1024, steps=25, dtype=jnp.bfloat16, query_chunk_size=1024)
# The memory plan (docs/training.md): overrides of configs/train.py's release settings, `;`-separated.
TRAIN_VARIANTS = (
    'mesh.shape=fsdp=1;dtype=bfloat16',                                   # one device
    'mesh.shape=fsdp=1;dtype=bfloat16;lora.rank=8;lora.alpha=8',
    'mesh.shape=fsdp=1;dtype=bfloat16;remat=False',
    'mesh.shape=fsdp=4;dtype=bfloat16',                                   # four
    'mesh.shape=fsdp=8;query_chunk_size=0;encode_chunk_size=0',           # eight: float32, as the original
    'mesh.shape=fsdp=8;dtype=bfloat16',
    'mesh.shape=fsdp=8;dtype=bfloat16;lora.rank=8;lora.alpha=8',
    'mesh.shape=fsdp=8;dtype=bfloat16;data.width=576;data.height=1024',
    'mesh.shape=context=8;dtype=bfloat16;data.num_frames=64;encode_chunk_size=8',
)
MIB = 2 ** 20
REFERENCE_DIR = Path(__file__).resolve().parents[1] / 'tests' / 'reference'
REPORT: dict[str, Any] = {'tables': []}      # what --json writes: every table, and raw results by benchmark


# ---------------------------------------------------------------------------------------- helpers

def _table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]], notes: Sequence[str] = ()) -> None:
  """Writes one aligned text table (the tool's output) to stdout, and keeps it for --json."""
  REPORT['tables'].append({'title': title, 'header': list(header), 'rows': [list(r) for r in rows],
                           'notes': list(notes)})
  cells = [[str(c) for c in header]] + [[f'{c:.4g}' if isinstance(c, float) else str(c) for c in r] for r in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
  lines = [f'\n## {title}', '  '.join(c.ljust(w) for c, w in zip(cells[0], widths)),
           '  '.join('-' * w for w in widths)]
  lines += ['  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells[1:]]
  lines += [f'  {n}' for n in notes]
  sys.stdout.write('\n'.join(lines) + '\n')
  sys.stdout.flush()


def _compile(fn: Callable, *args) -> tuple[Any, float]:
  """AOT-compiles the jitted `fn` for `args` (arrays or ShapeDtypeStructs): (compiled, seconds)."""
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  seconds = time.perf_counter() - start
  logger.info('compiled in %.1f s', seconds)
  return compiled, seconds


def _run_time(run: Callable[[], Any], repeats: int) -> tuple[float, Any]:
  """(median wall time of `run()` over `repeats` runs after one warm-up run, the warm-up's result)."""
  result = jax.block_until_ready(run())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(run())
    times.append(time.perf_counter() - start)
  logger.info('runs: %s s', ', '.join(f'{t:.3g}' for t in times))
  return statistics.median(times), result


def _flops(compiled: Any) -> float:
  """FLOPs of one call of an AOT-compiled program by XLA's cost analysis (a loop's body counts once)."""
  return float(compiled.cost_analysis()['flops'])


def _ratio(value: float, baseline: float) -> str:
  return f'{value / baseline:.3f}' if baseline else 'n/a'


def _sample_size(args: argparse.Namespace) -> tuple[int, int, int]:
  """(frames, height, width) in pixels: the flags, or the bundled sample's."""
  frames = args.frames or len(list((animate.SAMPLE_DIR / 'poses').glob('*.png')))
  with Image.open(animate.SAMPLE_DIR / 'reference.png') as image:
    width, height = image.size
  return frames, args.height or height, args.width or width


def _run_settings(steps: int, with_hjb: bool) -> Any:
  """sa-animate's run settings (`configs/animate.py`) with `steps` and HJB on or off."""
  run = animate_config.get_config()
  run.sampler.num_steps = steps
  run.hjb.enabled = with_hjb
  return run


def _sampler_config(frames: int, steps: int, with_hjb: bool) -> sampler.SamplerConfig:
  """sa-animate's sampler settings for clips of `frames` frames."""
  return sampler.SamplerConfig.from_config(_run_settings(steps, with_hjb), diffusion.ScheduleConfig(), frames)


def _sampler_inputs(configs: ModelConfigs, frames: int, height: int, width: int,
                    abstract: bool = False) -> tuple[Any, sampler.SamplerInputs]:
  """Seeded random (latents, inputs) of one video of the right shapes (values do not change the
  timing), or their shapes."""
  h, w = height // configs.vae.spatial_factor, width // configs.vae.spatial_factor
  u = configs.unet
  embedding = configs.face_embedder.num_features if configs.face_embedder else 1
  latents = (1, frames, h, w, configs.vae.latent_channels)
  shapes = sampler.SamplerInputs(
      context=(1, u.num_face_tokens + 1, u.cross_attention_dim),
      image_latents=(1, h, w, configs.vae.latent_channels), added_time_ids=(1, 3),
      pose_latents=(1, frames, h, w, u.block_out_channels[0]), face_boxes=(1, frames, 4),
      reference_embedding=(1, embedding))
  dtypes = sampler.SamplerInputs(*[jnp.float32] * 4, jnp.int32, jnp.float32)
  if abstract:
    return (jax.ShapeDtypeStruct(latents, jnp.float32),
            sampler.SamplerInputs(*map(jax.ShapeDtypeStruct, shapes, dtypes)))
  rng = np.random.default_rng(0)
  arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
  arrays[2] = np.array([[6.0, 127.0, 0.02]], np.float32)
  arrays[4] = np.tile(np.array([height // 4, 3 * height // 4, width // 4, 3 * width // 4], np.int32), (1, frames, 1))
  initial = 700.0 * rng.standard_normal(latents).astype(np.float32)     # noise x sigma_max
  return jnp.asarray(initial), sampler.SamplerInputs(*map(jnp.asarray, arrays))


def _denoiser(networks: stable_animator.Networks, config: sampler.SamplerConfig) -> Callable:
  """The sampler jitted as `Animator` assembles it (initial latents donated)."""
  return jax.jit(sampler.make_denoiser(networks, config), donate_argnums=1)


# ------------------------------------------------------------------------------------- benchmarks

def bench_sampler(args: argparse.Namespace) -> None:
  """The one-`lax.scan` sampler vs a Python loop over a jitted single step (same step computation)."""
  params, config = animate.tiny_model()
  configs = config.models
  frames, height, width = _sample_size(args)
  latents, inputs = _sampler_inputs(configs, frames, height, width)
  for with_hjb in (False, True) if args.hjb else (False,):
    sampler_config = _sampler_config(frames, args.steps, with_hjb)
    networks = stable_animator.make_networks(configs, remat=with_hjb)
    used = jax.device_put({k: v for k, v in params.items() if k in ('unet', 'vae', 'face_embedder')
                           and (with_hjb or k == 'unet')})
    scan, scan_compile = _compile(_denoiser(networks, sampler_config), used, latents, inputs)
    step_fn = sampler.make_step(networks, sampler_config)
    step, step_compile = _compile(jax.jit(lambda *a: step_fn(*a)[0]), used, inputs, latents, jnp.int32(0))
    indices = [jnp.int32(i) for i in range(args.steps)]               # on the device before timing

    def loop():
      x = latents
      for i in indices:
        x = step(used, inputs, x, i)
      return x

    loop_time, loop_latents = _run_time(loop, args.repeats)
    # The scan consumes (donates) its initial latents: each run gets a fresh copy.
    scan_time, (scan_latents, _) = _run_time(lambda: scan(used, jnp.copy(latents), inputs), args.repeats)
    diff = float(jnp.max(jnp.abs(loop_latents - scan_latents)))
    scale = float(jnp.max(jnp.abs(scan_latents)))
    _table(f'sampler: demo model, {frames} frames at {height}x{width}, {args.steps} steps, '
           f'HJB {"on" if with_hjb else "off"}',
           ('variant', 'compile s', f'run s (median of {args.repeats})', 'ratio to loop'),
           [('Python loop of a jitted step (baseline)', step_compile, loop_time, '1.000'),
            ('one lax.scan (make_denoiser)', scan_compile, scan_time, _ratio(scan_time, loop_time))],
           [f'loop/scan = {loop_time / scan_time:.3f}; compile: loop compiles one step, scan the whole loop',
            f'final latents loop vs scan: max |diff| {diff:.3g} (max |latents| {scale:.3g})'])


def bench_hjb(args: argparse.Namespace) -> None:
  """The HJB face-loss gradient alone (baseline) vs inside a one-iteration loop, as the sampler runs it."""
  params, config = animate.tiny_model()
  configs = config.models
  frames, height, width = _sample_size(args)
  latents, inputs = _sampler_inputs(configs, frames, height, width)
  z0 = latents / 700.0
  networks = stable_animator.make_networks(configs, remat=True)
  used = jax.device_put({k: params[k] for k in ('vae', 'face_embedder')})
  chunk = _sampler_config(frames, args.steps, True).decode_chunk_size
  grad = lambda p, z: hjb.face_loss_grad(
      z, inputs.face_boxes, inputs.reference_embedding, lambda lat: networks.decode(p['vae'], lat, chunk),
      lambda faces: networks.embed_faces(p['face_embedder'], faces), chunk)[1]
  variants = [('gradient (baseline)', grad),
              ('gradient inside a 1-iteration lax.fori_loop', lambda p, z: jax.lax.fori_loop(
                  0, 1, lambda _, y: grad(p, y), z))]
  rows, base = [], None
  for label, fn in variants:
    compiled, seconds = _compile(jax.jit(fn), used, z0)
    run, _ = _run_time(lambda: compiled(used, z0), args.repeats)
    base = base or run
    rows.append((label, seconds, run, _ratio(run, base)))
  _table(f'hjb: face-loss gradient of the demo model, {frames} frames at {height}x{width}',
         ('variant', 'compile s', f'run s (median of {args.repeats})', 'ratio to gradient'), rows,
         ['a loop body must cost what the same gradient costs outside it (sa_jax.nn.linear.conv_general_dilated '
          'keeps the input-gradient convolutions in the fast layout)'])


def _memory_row(label: str, fn: Callable, *args) -> tuple:
  """(label, temp, argument, output, code MiB, compile s, temp bytes) of the jitted `fn` compiled for `args`."""
  compiled, seconds = _compile(fn, *args)
  stats = compiled.memory_analysis()
  fields = ('temp_size_in_bytes', 'argument_size_in_bytes', 'output_size_in_bytes',
            'generated_code_size_in_bytes')
  values = [getattr(stats, f, None) if stats is not None else None for f in fields]
  return (label, *['n/a' if v is None else f'{v / MIB:,.2f}' for v in values], seconds, values[0])


def bench_memory(args: argparse.Namespace) -> None:
  """Compiled sampler memory (XLA's estimate) with HJB off/on and remat off/on, from shapes only."""
  sizes = [('demo (tiny config)', svd_xt.get_config('tiny'), *_sample_size(args), args.steps)]
  if args.full_size:
    sizes.append(('release config', svd_xt.get_config(), 16, 512, 512, 25))
  variants = [('remat off', False, None, None), ('remat on', True, None, None)]
  if args.query_chunk_size or args.unet_batch_size:
    extra = [f'query chunk {args.query_chunk_size}'] * bool(args.query_chunk_size) + \
        [f'UNet rows/call {args.unet_batch_size}'] * bool(args.unet_batch_size)
    variants.append((', '.join(['remat on'] + extra), True, args.query_chunk_size, args.unet_batch_size))
  for name, sections, frames, height, width, steps in sizes:
    configs = ModelConfigs.from_dict(sections.to_dict())
    latents, inputs = _sampler_inputs(configs, frames, height, width, abstract=True)
    rows = []
    for with_hjb in (False, True):
      params = {k: stable_animator.BY_NAME[k].param_shapes(getattr(configs, k))
                for k in (('unet', 'vae', 'face_embedder') if with_hjb else ('unet',))}
      base = None
      for label, remat, chunk, rows_per_call in variants:
        config = dataclasses.replace(_sampler_config(frames, steps, with_hjb), unet_batch_size=rows_per_call)
        networks = stable_animator.make_networks(configs, remat=remat, query_chunk_size=chunk)
        row = _memory_row(f'HJB {"on " if with_hjb else "off"}, {label}', _denoiser(networks, config), params,
                          latents, inputs)
        base = row[-1] if base is None else base
        rows.append(row[:-1] + (_ratio(row[-1], base) if row[-1] is not None and base else 'n/a',))
    _table(f'memory: sampler, {name}, {frames} frames at {height}x{width}, {steps} steps, float32',
           ('variant', 'temp MiB', 'argument MiB', 'output MiB', 'code MiB', 'compile s', 'temp / remat off'),
           rows, ['compiled.memory_analysis() of the CPU backend: an XLA estimate, not a measured peak; '
                  'n/a where the backend reports nothing'])


def _abstract_params(models: ModelConfigs, dtype: Any, names: Sequence[str]) -> dict[str, Any]:
  """Network name -> the shapes of its parameters, every leaf in `dtype` (as sa-animate casts them)."""
  return {name: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype),
                             stable_animator.BY_NAME[name].param_shapes(getattr(models, name)))
          for name in names}


def _hjb_step(configs: ModelConfigs, chunk: int, iterations: int, chunked: bool, dtype: Any) -> Callable:
  """One sampler step's HJB refinement, jitted: `iterations` Adam steps on the face loss of x0.

  `chunked`: the sampler's gradient (`hjb.face_loss_grad`, one decode chunk at a time). Otherwise
  the baseline, reverse mode through the whole clip at once (`jax.grad` of `hjb.face_loss`), the
  sampler's gradient before: every decode chunk keeps only its latents (`checkpoint_chunks`), but
  the frames, face crops and embedder activations of all frames are alive together.
  """
  networks = stable_animator.make_networks(configs, dtype=dtype, remat=True)

  def step(params, z0, boxes, reference, learning_rate):
    embed = lambda faces: networks.embed_faces(params['face_embedder'], faces)
    if chunked:
      decode = lambda lat: networks.decode(params['vae'], lat, chunk)
      grad = lambda z: hjb.face_loss_grad(z, boxes, reference, decode, embed, chunk)[1]
    else:
      decode = lambda lat: vae.decode(params['vae'], configs.vae, lat, chunk, remat=True, checkpoint_chunks=True,
                                      dtype=dtype)
      grad = jax.grad(lambda z: hjb.face_loss(z, boxes, reference, decode, embed)[0])
    return hjb.refine(z0, learning_rate, iterations, grad)

  return jax.jit(step)


def bench_hjb_memory(args: argparse.Namespace) -> None:
  """XLA's memory estimate of one HJB refine step (decode, crop, embed, gradient and the Adam
  iterations of one sampler step) against the frame count, from shapes only: the whole-clip
  gradient (baseline) vs the chunked one the sampler takes."""
  sizes = [('tiny config', svd_xt.get_config('tiny'), args.hjb_frames, *_sample_size(args)[1:], jnp.float32)]
  if args.full_size:
    sizes.append(('release config', svd_xt.get_config(), (16, 64), 576, 1024, jnp.bfloat16))
  run = _run_settings(args.steps, True)
  chunk, iterations = run.sampler.decode_chunk_size, run.hjb.iterations
  ratio = lambda a, b: _ratio(a, b) if a and b else 'n/a'
  for name, sections, frame_counts, height, width, dtype in sizes:
    configs = ModelConfigs.from_dict(sections.to_dict())
    params = _abstract_params(configs, dtype, ('vae', 'face_embedder'))
    rows, first = [], {}
    for frames in frame_counts:
      z0, inputs = _sampler_inputs(configs, frames, height, width, abstract=True)
      shapes = (params, z0, inputs.face_boxes, inputs.reference_embedding, jax.ShapeDtypeStruct((), jnp.float32))
      base = None
      for label, chunked in (('whole clip (baseline)', False), ('chunked (sampler)', True)):
        step = _hjb_step(configs, chunk, iterations, chunked, dtype)
        label, temp_mib, _, _, _, seconds, temp = _memory_row(f'{frames} frames, {label}', step, *shapes)
        base = temp if base is None else base
        first.setdefault(chunked, temp)
        rows.append((label, temp_mib, seconds, ratio(temp, base), ratio(temp, first[chunked])))
    _table(f'hjb_memory: one HJB refine step ({iterations} Adam iterations, decode chunks of {chunk}), {name} '
           f'at {height}x{width}, {jnp.dtype(dtype).name}',
           ('variant', 'temp MiB', 'compile s', 'temp / baseline', f'temp / {frame_counts[0]} frames'), rows,
           [('compiled.memory_analysis() of the backend: an XLA estimate, not a measured peak; parameters '
             'and inputs (the argument bytes) come on top')])


def production_config() -> CheckpointConfig:
  """The model of the production figures: the release config (shapes only)."""
  return CheckpointConfig(models=ModelConfigs.from_dict(svd_xt.get_config().to_dict()),
                          scheduler=diffusion.ScheduleConfig(), source='release config, shapes only')


def _production_programs(config: CheckpointConfig, frames: int, with_hjb: bool, mesh: Any,
                         folder: Path | None, query_chunk_size: int | None = PRODUCTION['query_chunk_size']
                         ) -> tuple[Any, Any, tuple]:
  """The release Animator's (prepare, denoise, decode) at the production settings for one video of
  `frames` frames, with the shapes of their arguments: (animator, programs, (params, request, seeds))."""
  run = _run_settings(PRODUCTION['steps'], with_hjb)
  height, width = PRODUCTION['height'], PRODUCTION['width']
  animator = pipeline.Animator(
      config, sampler.SamplerConfig.from_config(run, config.scheduler, frames),
      pipeline.ConditioningConfig.from_config(run), PRODUCTION['dtype'], query_chunk_size, mesh,
      step_progress=False, program_folder=folder)
  dtype = PRODUCTION['dtype']
  params = _abstract_params(config.models, dtype, animator.needs)
  shape = jax.ShapeDtypeStruct
  request = pipeline.Request(
      reference=shape((1, height, width, 3), jnp.uint8), reference_resized=shape((1, height, width, 3), jnp.uint8),
      poses=shape((1, frames, height, width, 3), jnp.uint8), face_embedding=shape((1, 512), jnp.float32),
      face_boxes=shape((1, frames, 4), jnp.int32), reference_face_box=shape((1, 4), jnp.int32))
  programs = animator.programs(animator.latent_shape(request), request)
  return animator, programs, (params, request, shape((1,), jnp.uint32))


def _lower_all(animator: Any, programs: tuple, params: Any, request: Any, seeds: Any) -> list:
  """The three programs lowered from shapes, each from the previous one's output shapes."""
  prepare, denoise, decode = programs
  as_shapes = lambda info: jax.tree.map(lambda o: jax.ShapeDtypeStruct(o.shape, o.dtype), info)
  with animator.context():
    prepared = prepare.lower(params, request, seeds, None)
    inputs, latents = as_shapes(prepared.out_info)
    denoised = denoise.lower({n: params[n] for n in animator.networks}, latents, inputs)
    return [prepared, denoised, decode.lower(params['vae'], latents)]


def _loop_free_flops(fn: Callable, *args) -> float:
  """XLA's FLOP count of the jitted `fn` for `args`; refused if the compiled program loops (XLA
  counts a loop body once), but for loops that carry no floating-point values (the random-bit
  generator's rounds: integer work, no FLOPs)."""
  compiled, _ = _compile(fn, *args)
  loops = [line for line in compiled.as_text().splitlines()
           if ' while(' in line and re.search(r'\b(f16|bf16|f32|f64)\[', line.split(' while(')[0])]
  if loops:
    raise RuntimeError(f'{fn} compiles to a loop: its FLOP count would take the body once ({loops[0][:200]})')
  return _flops(compiled)


def _flops_per_video(config: CheckpointConfig, frames: int, run: Any) -> dict[str, float]:
  """FLOPs of one video at the production settings, from loop-free pieces: the prepare program,
  one denoising step (every tile of both guidance branches), one decode chunk and one HJB gradient
  of a decode chunk (decode, crop, embed, backward), each counted by XLA and multiplied by how
  often the pipeline runs it."""
  models, dtype = config.models, PRODUCTION['dtype']
  height, width = PRODUCTION['height'], PRODUCTION['width']
  f = models.vae.spatial_factor
  sampler_config = sampler.SamplerConfig.from_config(run, config.scheduler, frames)
  chunk = sampler_config.decode_chunk_size
  params = _abstract_params(models, dtype, models.names)
  networks = stable_animator.make_networks(models, dtype, remat=False)
  latents, inputs = _sampler_inputs(models, frames, height, width, abstract=True)
  step = sampler.make_step(networks, dataclasses.replace(sampler_config, hjb=None))
  step_flops = _loop_free_flops(jax.jit(step), {'unet': params['unet']}, inputs, latents,
                                jax.ShapeDtypeStruct((), jnp.int32))
  z = jax.ShapeDtypeStruct((1, chunk, height // f, width // f, models.vae.latent_channels), jnp.float32)
  decode_flops = _loop_free_flops(jax.jit(lambda p, z: pipeline.decode_video(p, models.vae, z, chunk, dtype)),
                                  params['vae'], z)
  hjb_networks = stable_animator.make_networks(models, dtype, remat=True)
  grad = lambda p, z, boxes, reference: hjb.face_loss_grad(
      z, boxes, reference, lambda lat: hjb_networks.decode(p['vae'], lat, chunk),
      lambda faces: hjb_networks.embed_faces(p['face_embedder'], faces), chunk)[1]
  grad_flops = _loop_free_flops(jax.jit(grad), {k: params[k] for k in ('vae', 'face_embedder')}, z,
                                jax.ShapeDtypeStruct((1, chunk, 4), jnp.int32), inputs.reference_embedding)
  _, (prepare, _, _), shapes = _production_programs(config, frames, False, None, None, query_chunk_size=None)
  prepare_flops = _loop_free_flops(prepare, *shapes, None)
  chunks = -(-frames // chunk)
  h, steps = run.hjb, run.sampler.num_steps
  refine_steps = len(range(h.start, min(h.end, steps - 1) + 1))
  return {'prepare': prepare_flops, 'step': step_flops, 'steps': steps * step_flops, 'decode': chunks * decode_flops,
          'hjb': refine_steps * h.iterations * chunks * grad_flops}


def bench_production(args: argparse.Namespace) -> None:
  """The release config at 576x1024, bfloat16, 25 steps with guidance, compiled from shapes (nothing
  runs): FLOPs per video, XLA's per-device memory of the sampler without and with HJB on one device
  and on all of them (fsdp), and the compile time of the release programs with an empty cache and
  with a warm one (programs stored by `program_cache`, executables by JAX's cache)."""
  config = production_config()
  run = _run_settings(PRODUCTION['steps'], True)
  frame_counts = args.production_frames
  devices = jax.device_count()
  flops = {frames: _flops_per_video(config, frames, run) for frames in frame_counts}
  _table(f'production: FLOPs per video, release config at {PRODUCTION["height"]}x{PRODUCTION["width"]}, '
         f'{run.sampler.num_steps} steps with guidance, {jnp.dtype(PRODUCTION["dtype"]).name}',
         ('frames', 'prepare TFLOP', 'one step TFLOP', f'{run.sampler.num_steps} steps TFLOP', 'decode TFLOP',
          f'HJB TFLOP (steps {run.hjb.start}-{run.hjb.end}, {run.hjb.iterations} iterations)', 'video TFLOP',
          'video TFLOP with HJB'),
         [(frames, f['prepare'] / 1e12, f['step'] / 1e12, f['steps'] / 1e12, f['decode'] / 1e12, f['hjb'] / 1e12,
           (f['prepare'] + f['steps'] + f['decode']) / 1e12,
           (f['prepare'] + f['steps'] + f['decode'] + f['hjb']) / 1e12) for frames, f in flops.items()],
         ['XLA cost analysis of loop-free pieces (the prepare program: CLIP, VAE encode, PoseNet; one denoising step '
          'with every tile of both guidance branches; one decode chunk; one HJB gradient of a decode chunk), '
          'times how often the pipeline runs each'])
  REPORT['production_flops'] = flops
  rows = []
  saved = {k: getattr(jax.config, k) for k in ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs',
                                               'jax_persistent_cache_min_entry_size_bytes')}
  with tempfile.TemporaryDirectory(prefix='sa-bench-production-') as cache:
    animate.enable_compile_cache(True, cache)
    compilation_cache.reset_cache()            # JAX reads the folder when it first compiles: from here on
    try:
      for mesh_devices in sorted({1, devices}):
        mesh = None if mesh_devices == 1 else sharding.make_mesh({sharding.FSDP: mesh_devices})
        for frames in frame_counts:
          for with_hjb in (h == 'on' for h in args.production_hjb):
            folder = Path(cache) / 'programs' if mesh is None else None
            animator, programs, shapes = _production_programs(config, frames, with_hjb, mesh, folder)
            start = time.perf_counter()
            compiled = [lowered.compile() for lowered in _lower_all(animator, programs, *shapes)]
            cold = time.perf_counter() - start
            warm = 'n/a'
            if folder is not None:            # a later process: programs loaded, executables from the cache
              jax.clear_caches()
              animator, programs, shapes = _production_programs(config, frames, with_hjb, mesh, folder)
              start = time.perf_counter()
              for lowered in _lower_all(animator, programs, *shapes):
                lowered.compile()
              warm = time.perf_counter() - start
            memory = compiled[1].memory_analysis()
            rows.append((mesh_devices, frames, 'on' if with_hjb else 'off', memory.temp_size_in_bytes / 2 ** 30,
                         memory.argument_size_in_bytes / 2 ** 30, cold, warm))
            logger.info('production: %s', rows[-1])
    finally:
      for k, v in saved.items():
        jax.config.update(k, v)
      compilation_cache.reset_cache()          # later compiles use the folder they used before
  _table(f'production: the release sampler program per device, {PRODUCTION["height"]}x{PRODUCTION["width"]}, '
         f'{jnp.dtype(PRODUCTION["dtype"]).name}, query chunk {PRODUCTION["query_chunk_size"]}',
         ('devices (fsdp)', 'frames', 'HJB', 'sampler temp GiB', 'arguments GiB', 'compile s, empty cache',
          'compile s, warm cache'), rows,
         ['memory: compiled.memory_analysis() of the denoising program (the sampler loop; with HJB its refine '
          'step) per device, an XLA estimate; compile: the three programs (prepare, denoise, decode), traced, '
          'lowered and compiled with empty caches, then loaded from the stored programs and JAX\'s cache as a '
          f'later process does (one device only); {devices} device(s) here'
          + ('' if devices > 1 else ': set XLA_FLAGS=--xla_force_host_platform_device_count=8 for 8')])


def _train_config(variant: str) -> Any:
  """configs/train.py's release settings with `field=value;...` overrides (typed as the field)."""
  config = train_configs.get_config()
  for item in filter(None, variant.split(';')):
    field, _, text = item.partition('=')
    *path, leaf = field.split('.')
    node = config
    for part in path:
      node = node[part]
    node[leaf] = type(node[leaf])(text) if not isinstance(node[leaf], bool) else text == 'True'
  return config


def bench_train_memory(args: argparse.Namespace) -> None:
  """XLA's per-device memory and FLOPs of one release train step compiled from shapes (no weights,
  nothing run), per variant of mesh, precision, LoRA, size and frames (`--train-variants`)."""
  models = dataclasses.replace(ModelConfigs.from_dict(svd_xt.get_config().to_dict()), face_embedder=None)
  rows = []
  for variant in args.train_variants:
    config = _train_config(variant)
    shape = config.mesh.shape
    needed = int(np.prod([int(v) for v in re.findall(r'=(\d+)', shape)])) if shape else 1
    if needed > jax.device_count():
      rows.append((variant, f'needs {needed} devices', *['n/a'] * 6))
      continue
    est = trainer.memory_estimate(config, models, jax.devices()[:needed])
    rows.append((variant, f'{est["devices"]} ({est["global_batch"]} videos)', f'{est["argument"]:.2f}',
                 f'{est["temp"]:.2f}', f'{est["total"]:.2f}', f'{est["flops"] / 1e12:.1f}',
                 f'{est["compile_seconds"]:.0f}', config.data.num_frames))
    logger.info('train_memory %s: %s', variant, rows[-1][1:])
  _table('train_memory: one release train step per device, 512x512 unless said, remat on',
         ('variant (configs/train.py overrides)', 'devices', 'arguments GiB', 'temporaries GiB', 'total GiB',
          'model TFLOP per device', 'compile s', 'frames'), rows,
         ['compiled.memory_analysis() of the CPU backend: an XLA estimate, not a measured peak; GPU and TPU '
          'schedulers place temporaries differently. FLOPs: trainer.model_flops (no recomputation)'])


def _matmul_rate(repeats: int) -> float:
  """This machine's float32 matmul rate in FLOP/s: a jitted 2048^3 product, median of `repeats`."""
  n = 2048
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  product, _ = _compile(jax.jit(jnp.matmul), a, a)
  seconds, _ = _run_time(lambda: product(a, a), repeats)
  return 2 * n ** 3 / seconds


def bench_train_step(args: argparse.Namespace) -> None:
  """One release train step run on this process's devices (`--train-step-variant`, a size this
  machine can run): its time, its model FLOPs (`trainer.model_flops`) and the utilisation they imply
  against this machine's float32 matmul rate measured in the same run. The weights are random
  (numpy, `random_init`): the time does not depend on their values."""
  config = _train_config(args.train_step_variant)
  models = dataclasses.replace(ModelConfigs.from_dict(svd_xt.get_config().to_dict()), face_embedder=None)
  assembly, shapes, _ = trainer.assemble_for_shapes(config, models)
  # One network at a time on the host, and the state made in the parameters' buffers: one copy.
  params = {name: jax.device_put(random_init.random_params(
      stable_animator.BY_NAME[name].abstract_params(getattr(models, name)), i)) for i, name in enumerate(models.names)}
  state = trainer.initial_state(assembly, params, donate=True)
  del params
  rng = np.random.default_rng(0)
  local = {name: (rng.integers(0, 256, s.shape, np.uint8) if s.dtype == np.uint8 else
                  np.ones(s.shape, s.dtype) if s.dtype == np.bool_ else rng.standard_normal(s.shape).astype(s.dtype))
           for name, s in zip(loss_lib.Batch._fields, shapes)}
  batch = trainer.global_batch(local, assembly.batch_shardings)
  key = jax.random.key(0)
  step, compile_seconds = _compile(assembly.train_step, state, batch, key)
  flops = trainer.model_flops(config, models) / jax.device_count()
  current = [state]

  def run():
    current[0], metrics = step(current[0], batch, key)
    return metrics

  seconds, _ = _run_time(run, args.repeats)
  rate = _matmul_rate(args.repeats)
  rows = [('release train step', compile_seconds, seconds, flops / 1e12, f'{flops / seconds / 1e9:.1f}',
           f'{rate / 1e9:.1f}', f'{flops / seconds / rate:.3f}')]
  _table(f'train_step: the release networks, {args.train_step_variant}, {jax.device_count()} '
         f'{jax.devices()[0].platform.upper()} device(s)',
         ('program', 'compile s', f'step s (median of {args.repeats})', 'model TFLOP', 'model GFLOP/s',
          'f32 matmul GFLOP/s', 'MFU'), rows,
         ['per device; model FLOPs without the recomputation of remat (trainer.model_flops); MFU = model '
          'FLOPs per second / the float32 matmul rate measured here (a 2048^3 product)'])


def _unet_call(config: unet.UNetConfig, dtype: Any, query_chunk_size: int | None) -> Callable:
  model = unet.UNet(config, query_chunk_size=query_chunk_size, dtype=dtype, param_dtype=dtype)
  return jax.jit(lambda p, *x: model.apply({'params': p}, *x))


def _unet_inputs(config: unet.UNetConfig, batch: int, frames: int, size: int, dtype: Any) -> tuple:
  rng = np.random.default_rng(0)
  draw = lambda *shape: jnp.asarray(rng.standard_normal(shape), dtype)
  return (draw(batch, frames, size, size, config.in_channels), jnp.asarray(-0.25, dtype),
          draw(batch, config.num_face_tokens + 1, config.cross_attention_dim),
          jnp.tile(jnp.asarray([[6.0, 127.0, 0.02]], dtype), (batch, 1)),
          draw(batch, frames, size, size, config.block_out_channels[0]))


def bench_unet(args: argparse.Namespace) -> None:
  """UNet forward: float32 vs bfloat16 params and compute, and spatial query chunking vs none; the
  forward's FLOPs (XLA's count of the float32 program, which has no loop) and the rate each variant
  achieves against this machine's float32 matmul rate measured in the same run."""
  config = unet.UNetConfig.from_dict(svd_xt.get_config('tiny').unet.to_dict())
  params = random_init.random_params(unet.abstract_params(config), 0)
  chunk = args.query_chunk_size or max(1, args.unet_size * args.unet_size // 4)
  variants = [('float32 (baseline)', jnp.float32, None), ('bfloat16', jnp.bfloat16, None),
              (f'float32, query_chunk_size {chunk}', jnp.float32, chunk)]
  measured, flops = [], None
  for label, dtype, chunk_size in variants:
    p = jax.device_put(jax.tree.map(lambda x: jnp.asarray(x, dtype), params))
    x = _unet_inputs(config, args.batch, args.unet_frames, args.unet_size, dtype)
    fn, seconds = _compile(_unet_call(config, dtype, chunk_size), p, *x)
    flops = flops or _flops(fn)
    run, _ = _run_time(lambda: fn(p, *x), args.repeats)
    measured.append((label, seconds, run))
  rate, base = _matmul_rate(args.repeats), measured[0][2]
  rows = [(label, seconds, run, _ratio(run, base), f'{flops / run / 1e9:.1f}', f'{flops / run / rate:.3f}')
          for label, seconds, run in measured]
  _table(f'unet: tiny config forward, batch {args.batch}, {args.unet_frames} frames, '
         f'{args.unet_size}x{args.unet_size} latents: {flops / 1e9:.3g} GFLOP',
         ('variant', 'compile s', f'run s (median of {args.repeats})', 'ratio to float32', 'GFLOP/s',
          'of f32 matmul rate'), rows,
         [f'{jax.devices()[0].platform.upper()}: bfloat16 speed depends on native support in the backend',
          f'GFLOP: XLA\'s cost analysis of the float32 forward; the f32 matmul rate, {rate / 1e9:.1f} GFLOP/s, '
          'is a 2048^3 product measured in this run'])


def bench_reference(args: argparse.Namespace) -> None:
  """The original StableAnimator pipeline against sa-animate end to end (fresh processes: wall and
  peak memory, `tools/bench_original.py`), and the PyTorch (diffusers) SVD UNet on the golden tiny
  weights as the baseline of our float32 UNet."""
  _original_pipeline(args)
  missing = [m for m in ('torch', 'diffusers') if importlib.util.find_spec(m) is None]
  if missing:
    _table('reference: PyTorch UNet', ('status',), [(f'skipped: {", ".join(missing)} not importable '
                                                     "(pip install -c constraints.txt -e '.[bench]')",)])
    return
  import torch
  from diffusers import UNetSpatioTemporalConditionModel

  from convert import state_dict
  from convert import unet as convert_unet
  found = [p.parent for p in sorted(Path(args.reference_dir).glob('*/case.json'))
           if state_dict.read_json(p, 'a reference case').get('case') == 'unet']
  if not found:
    raise FileNotFoundError(f'no UNet case (case.json "case": "unet") under {args.reference_dir}')
  case = found[0]
  config = convert_unet.read_config(case / 'unet')
  params = jax.device_put(convert_unet.load_unet(case / 'unet.pth', config))
  torch_unet = UNetSpatioTemporalConditionModel.from_config(
      state_dict.read_json(case / 'unet' / 'config.json', 'the UNet config')).eval()
  weights = state_dict.load_state_dict(state_dict.find_weights(case / 'unet', 'diffusion_pytorch_model'))
  torch_unet.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in weights.items()})
  x = _unet_inputs(config, args.batch, args.unet_frames, args.unet_size, jnp.float32)
  fn, seconds = _compile(_unet_call(config, jnp.float32, None), params, *x[:4])
  jax_time, _ = _run_time(lambda: fn(params, *x[:4]), args.repeats)
  sample = np.array(x[0]).transpose(0, 1, 4, 2, 3)                 # [B, F, h, w, C] -> [B, F, C, h, w]
  torch_args = [torch.from_numpy(np.array(a)) for a in (sample, x[1], x[2], x[3])]
  with torch.inference_mode():
    torch_time, _ = _run_time(lambda: torch_unet(*torch_args, return_dict=False)[0], args.repeats)
  _table(f'reference: UNet forward on the golden tiny weights, batch {args.batch}, '
         f'{args.unet_frames} frames, {args.unet_size}x{args.unet_size} latents, float32',
         ('variant', 'compile s', f'run s (median of {args.repeats})', 'ratio to PyTorch'),
         [(f'PyTorch {torch.__version__} diffusers UNet, {torch.get_num_threads()} threads (baseline)', 'n/a',
           torch_time, '1.000'), ('sa-jax UNet, jitted', seconds, jax_time, _ratio(jax_time, torch_time))],
         ['diffusers has no ID adapter: the sa-jax UNet also runs the face-token attention in every attn2'])


def _original_pipeline(args: argparse.Namespace) -> None:
  if not args.stableanimator:
    _table('reference: against the original StableAnimator', ('status',),
           [('skipped: no --stableanimator checkout given (docs/performance.md)',)])
    return
  checkout = Path(args.stableanimator)
  results = bench_original.compare(Path(args.reference_dir), checkout, Path(args.original_python), args.process_repeats)
  REPORT['end_to_end'] = results
  rows = []
  for r in results:
    original = r['original']
    for label, ours in (('cold', r['ours_cold']), ('warm', r['ours_warm'])):
      rows.append((f'{r["case"]}: sa-animate, {label} cache', ours['wall_s'], ours['rss_mib'],
                   _ratio(ours['wall_s'], original['wall_s']), _ratio(ours['rss_mib'], original['rss_mib'])))
    rows.append((f'{r["case"]}: original (baseline; its pipeline call {original["pipeline_s"]:.3g} s)',
                 original['wall_s'], original['rss_mib'], '1.000', '1.000'))
  versions = results[0]['original_versions']
  _table(f'reference: end to end, fresh processes (median of {args.process_repeats}), golden tiny pipeline weights',
         ('run', 'wall s', 'peak RSS MiB', 'wall ours/original', 'RSS ours/original'), rows,
         [f'the original: {", ".join(f"{k} {v}" for k, v in versions.items())}',
          'cold: an empty compilation cache (every program traced, compiled and stored); warm: the cache '
          'of the last cold run'])
  frames, size = args.release_frames, args.release_latent_size
  components = bench_original.compare_components(checkout, Path(args.original_python), frames, size,
                                                 args.process_repeats)
  REPORT['release_components'] = components
  work = {'unet': f'one denoising step of the UNet, {frames} frames of {size}x{size} latents, cond + uncond '
                  '(the original: two batch-1 calls, uncond without pose latents; ours: one batch-2 call)',
          'vae_decode': f'one VAE decoder call, a chunk of {frames} frames of {size}x{size} latents',
          'iresnet': f'IResNet forward and backward to its input, {frames} faces (the HJB inner step)'}
  rows = []
  for task, result in components.items():
    ours, theirs = result['ours'], result['original']
    rows.append((f'{work[task]}; {ours["parameters"] / 1e6:,.1f} M parameters', theirs['run_s'], ours['run_s'],
                 _ratio(ours['run_s'], theirs['run_s']), ours['compile_s'], theirs['rss_mib'], ours['rss_mib'],
                 _ratio(ours['rss_mib'], theirs['rss_mib']), ours['temp_mib']))
  _table('reference: the release networks (random weights), float32, each side in a fresh process',
         ('work', f'original s (median of {args.process_repeats})', 'sa-jax s', 'ours/original', 'sa-jax compile s',
          'original peak RSS MiB', 'sa-jax peak RSS MiB', 'RSS ours/original', 'sa-jax XLA temp MiB'), rows,
         ['run seconds after a warm-up call, compile apart; peak RSS of each whole process (weights, inputs, '
          'warm-up); XLA temp: compiled.memory_analysis() of our program (an estimate, without its arguments)'])


def bench_batch(args: argparse.Namespace) -> None:
  """Batched inference: videos per minute of the demo model on the bundled sample, B videos per
  compiled call vs one at a time (the whole pipeline: conditioning, sampler, decode)."""
  params, config = animate.tiny_model()
  run = _run_settings(args.steps, False)
  run.io.width = run.io.height = 0
  request = animate.load_request(animate.Inputs(folder=animate.SAMPLE_DIR), run,
                                 config.models.face_encoder.id_embeddings_dim)
  frames = request.poses.shape[0]
  animator = animate.animator_for(config, run, frames)
  on_device = jax.device_put({n: params[n] for n in animator.needs})
  rows, base = [], None
  for b in args.batch_sizes:
    batch = pipeline.Request.stack([request] * b)
    start = time.perf_counter()
    animator.run(on_device, batch, [run.io.seed] * b)
    first = time.perf_counter() - start
    run_time, _ = _run_time(lambda: animator.run(on_device, batch, [run.io.seed] * b).frames, args.repeats)
    per_minute = 60.0 * b / run_time
    base = base or per_minute
    rows.append((f'B={b}' + (' (baseline)' if len(rows) == 0 else ''), first, run_time, per_minute,
                 _ratio(per_minute, base)))
  _table(f'batch: demo model, {frames} frames at {request.poses.shape[1]}x{request.poses.shape[2]}, '
         f'{args.steps} steps, whole pipeline',
         ('videos per call', 'first call s (compile)', f'run s (median of {args.repeats})', 'videos / min',
          'throughput ratio'), rows,
         ['one compiled program per batch size; every video of a batch gives the frames it gives alone'])


def bench_eval(args: argparse.Namespace) -> None:
  """sa-eval's metrics: seconds to score one clip of 16 frames (one FVD window) at `--eval-size`
  square, each metric's network compiled and loaded apart, against L1 as the baseline. CSIM runs the
  release-size IResNet (r100) with random weights; the pose error's DWPose models are not bundled and
  are left out."""
  rng = np.random.default_rng(0)
  size, frames = args.eval_size, fvd.WINDOW
  truth = rng.integers(0, 256, (frames, size, size, 3), np.uint8)
  made = np.clip(truth.astype(np.int32) + rng.integers(-20, 21, truth.shape), 0, 255).astype(np.uint8)
  masks = np.zeros((frames, size, size), np.uint8)
  masks[:, size // 4:3 * size // 4, size // 4:3 * size // 4] = 255
  embedder = iresnet.IResNetConfig()
  embedder_params = jax.device_put(random_init.random_params(iresnet.abstract_params(embedder), 0))
  reference = face.iresnet_reference_embedding(embedder_params, embedder, truth[0], masks[0])
  i3d = fvd.make_i3d()
  scorers = {key: (lambda fn=fn: metrics.per_frame(fn, made, truth))
             for name in ('l1', 'psnr', 'ssim') for key, fn in metrics.FRAME_METRICS[name].items()}
  lpips_fn = lpips.make_lpips('alexnet')
  scorers['lpips (AlexNet)'] = lambda: metrics.per_frame(lpips_fn, made, truth)
  scorers['fvd features (I3D, both videos)'] = lambda: (i3d(fvd.clip_windows(made)), i3d(fvd.clip_windows(truth)))
  scorers['csim (IResNet r100)'] = lambda: face.iresnet_similarity(embedder_params, embedder, made, masks,
                                                                   reference).per_frame
  rows, base = [], None
  for name, score in scorers.items():
    start = time.perf_counter()
    jax.block_until_ready(score())
    first = time.perf_counter() - start
    run_time, _ = _run_time(score, args.repeats)
    base = base or run_time
    rows.append((name + (' (baseline)' if len(rows) == 0 else ''), first, run_time, _ratio(run_time, base)))
  _table(f'eval: seconds per clip of {frames} frames at {size}x{size}',
         ('metric', 'first call s (compile)', f'run s (median of {args.repeats})', 'ratio to L1'), rows,
         ['pose error (DWPose, ONNX) not included: its models are not bundled'])


# ------------------------------------------------------------------------------------------- main

def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m tools.bench', description=__doc__.split('\n')[0].replace('`', ''),
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  # No `choices`: argparse (3.11) checks a `nargs='*'` default against them as one value and refuses it.
  p.add_argument('benchmarks', nargs='*', default=[b for b in BENCHMARKS if b not in ON_REQUEST],
                 help=f'which of {", ".join(BENCHMARKS)} to run (default: all but {", ".join(ON_REQUEST)})')
  p.add_argument('--repeats', type=int, default=5, help='timed runs per variant (median reported)')
  p.add_argument('--steps', type=int, default=25, help='sampler steps (sampler, memory)')
  p.add_argument('--frames', type=int, help='frames (None: the bundled sample\'s)')
  p.add_argument('--height', type=int, help='pixel height (None: the bundled sample\'s)')
  p.add_argument('--width', type=int, help='pixel width (None: the bundled sample\'s)')
  p.add_argument('--hjb', action='store_true', help='sampler: also time the HJB face correction')
  p.add_argument('--full-size', action='store_true',
                 help='memory: also compile the release config at 512x512, 16 frames; hjb_memory: at 576x1024, '
                      'bfloat16, 16 and 64 frames (a few minutes each)')
  p.add_argument('--hjb-frames', type=int, nargs='+', default=[8, 16, 32],
                 help='hjb_memory: frame counts of the tiny config')
  p.add_argument('--production-frames', type=int, nargs='+', default=[16, 64], help='production: frame counts')
  p.add_argument('--production-hjb', nargs='+', choices=('off', 'on'), default=['off', 'on'],
                 help='production: the sampler without and/or with HJB')
  p.add_argument('--batch', type=int, default=2, help='unet/reference: batch (2 = both guidance branches)')
  p.add_argument('--unet-frames', type=int, default=8, help='unet/reference: frames')
  p.add_argument('--unet-size', type=int, default=32, help='unet/reference: latent height = width')
  p.add_argument('--query-chunk-size', type=int,
                 help='unet: query chunk (None: a quarter of the tokens); memory: adds a row with it')
  p.add_argument('--unet-batch-size', type=int, help='memory: adds a row with this many UNet rows per call')
  p.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 4], help='batch: videos per compiled call')
  p.add_argument('--eval-size', type=int, default=256, help='eval: frame height = width')
  p.add_argument('--train-variants', nargs='+', default=list(TRAIN_VARIANTS),
                 help='train_memory: configs/train.py overrides per variant, field=value;field=value')
  p.add_argument('--train-step-variant', default='lora.rank=8;lora.alpha=8;data.width=256;data.height=256;'
                 'data.num_frames=4', help='train_step: configs/train.py overrides (a size this machine can run)')
  p.add_argument('--stableanimator', help='reference: a checkout of Francis-Rings/StableAnimator (the original '
                 'pipeline as the baseline end to end; none: that comparison is skipped)')
  p.add_argument('--original-python', default=str(bench_original.DEFAULT_PYTHON),
                 help='reference: the Python that runs the original (bash tools/install_original.sh)')
  p.add_argument('--release-frames', type=int, default=4,
                 help='reference: frames of the release UNet step and VAE decode chunk, faces of the IResNet step')
  p.add_argument('--release-latent-size', type=int, default=32, help='reference: their latent height = width')
  p.add_argument('--process-repeats', type=int, default=3, help='reference: fresh processes per end-to-end variant')
  p.add_argument('--json', help='also write every table to this JSON file')
  p.add_argument('--reference-dir', default=os.environ.get('SA_REFERENCE_DIR', str(REFERENCE_DIR)),
                 help='reference: golden set whose first UNet case gives config and weights')
  return p


def _is_report(path: Path) -> bool:
  try:
    report = json.loads(path.read_text())
  except (OSError, UnicodeDecodeError, ValueError):
    return False
  return isinstance(report, dict) and {'machine', 'tables'} <= set(report)


def main(argv: Sequence[str] | None = None) -> None:
  parser = _parser()
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  unknown = [b for b in args.benchmarks if b not in BENCHMARKS]
  if unknown:
    parser.error(f'unknown benchmarks {unknown}; choose from {", ".join(BENCHMARKS)}')
  for flag in ('repeats', 'process_repeats'):
    if getattr(args, flag) < 1:
      raise ValueError(f'--{flag.replace("_", "-")} must be >= 1, got {getattr(args, flag)}')
  if args.stableanimator and 'reference' in args.benchmarks:
    if not (Path(args.stableanimator) / 'animation' / 'pipelines').is_dir():
      raise FileNotFoundError(f'--stableanimator {args.stableanimator}: not a StableAnimator checkout '
                              '(no animation/pipelines/ in it)')
    if not Path(args.original_python).is_file():
      raise FileNotFoundError(f'--original-python {args.original_python}: no such file (make it with '
                              'bash tools/install_original.sh)')
  if args.json:     # replaces only an earlier report of this tool, checked before anything runs
    outputs.check_target(args.json, overwrite=True, ours=_is_report, what='a tools.bench --json report',
                         inputs=[args.reference_dir, args.stableanimator])
  setup_logging()
  REPORT.clear()
  REPORT['tables'] = []
  machine = f'jax {jax.__version__}, {jax.devices()[0].device_kind} x{jax.device_count()}, {os.cpu_count()} host cores'
  sys.stdout.write(f'# sa-jax benchmarks: {machine}\n')
  REPORT['machine'] = machine
  for name in dict.fromkeys(args.benchmarks):
    globals()[f'bench_{name}'](args)
  if args.json:
    staged = outputs.staging_path(args.json)
    staged.write_text(json.dumps(REPORT, indent=1, default=str))
    outputs.replace(staged, args.json)


if __name__ == '__main__':
  main()
