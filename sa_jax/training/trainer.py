"""Training assembled: settings checked, the mesh, shardings, the jitted step, data, checkpoints, metrics.

`train(config, workdir)` runs `configs/train.py` settings to `config.num_steps`, resuming from the
workdir's latest complete checkpoint. The pure step (`step.py`) is jitted here with NamedShardings
from the logical rules for the state and the batch (`sharding.py`: parameters over `fsdp`, the
batch over `data` x `fsdp`, a video's frames over `context`) and a donated state. Every process
reads its own slice of the data and the global batch is assembled from the process-local pieces,
so the same code runs on one CPU and on a multi-host pod.
"""

import copy
import dataclasses
import json
import logging
import os
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from sa_jax import animate, checkpoint, outputs, sharding
from sa_jax.data import clips
from sa_jax.eval import clips as eval_clips
from sa_jax.eval import metrics as eval_metrics
from sa_jax.prep import frames as frame_io
from sa_jax.training import checkpoints as run_checkpoints
from sa_jax.training import lora as lora_lib
from sa_jax.training import loss as loss_lib
from sa_jax.training import optimizer as optimizer_lib
from sa_jax.training import step as step_lib
from sa_jax.training.metrics import MetricWriter

logger = logging.getLogger(__name__)

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


class TrainingError(RuntimeError):
  """A run that cannot go on (a non-finite loss or gradient, or no readable clip for
  `data.max_skipped_steps` steps in a row); the message names the step."""


# ------------------------------------------------------------------------------------- settings

def size_multiple(models: Any) -> int:
  """Training sizes are multiples of this: the VAE's factor times the UNet's downsampling."""
  return models.vae.spatial_factor * 2 ** (len(models.unet.block_out_channels) - 1)


def check_config(config: Any, workdir: str | os.PathLike) -> None:
  """Everything a run cannot start with, before any model is loaded or compiled (one-line errors).

  Reads the model's `config.json` (not its weights) for the size rule.
  """
  problems = []
  for name, minimum in (('num_steps', 1), ('log_every', 1), ('checkpoint.every', 1), ('query_chunk_size', 0),
                        ('checkpoint.max_to_keep', 1), ('data.per_device_batch_size', 1),
                        ('data.num_frames', 1), ('data.stride', 1), ('data.worker_count', 0),
                        ('validation.every', 0)):
    value = config
    for part in name.split('.'):
      value = value[part]
    if value < minimum:
      problems.append(f'{name} is {value}, expected >= {minimum}')
  if config.trained not in optimizer_lib.SUBSETS:
    problems.append(f'trained {config.trained!r}, expected one of {optimizer_lib.SUBSETS}')
  elif config.trained != 'release' and config.lora.rank:
    problems.append(f'trained {config.trained!r} with lora.rank {config.lora.rank}: LoRA adapts the release\'s '
                    "subset; expected trained='release'")
  if config.dtype not in DTYPES:
    problems.append(f'dtype {config.dtype!r}, expected one of {sorted(DTYPES)}')
  if not 0.0 <= config.ema_decay < 1.0:
    problems.append(f'ema_decay is {config.ema_decay}, expected 0 <= ema_decay < 1')
  for name in ('noise_d_low', 'noise_d_high'):
    if not config.loss[name] > 0:                     # `not >` also refuses NaN
      problems.append(f'loss.{name} is {config.loss[name]}, expected > 0')
  if not config.data.roots:
    problems.append('data.roots is empty: give clip folders, folders of clips, clip-list files or packed '
                    'datasets (sa-pack-clips)')
  problems += clips.check_roots(_roots(config))
  if config.model.init:
    if not os.path.isfile(os.path.join(config.model.init, checkpoint.CONFIG)):
      problems.append(f'model.init {config.model.init} is not an sa-jax checkpoint (no {checkpoint.CONFIG}; '
                      'make one with sa-convert)')
  elif not config.model.tiny:
    problems.append('model.init is empty: give a converted release checkpoint (sa-convert), or set '
                    'model.tiny=True for the tiny model with random weights')
  if config.checkpoint.every % config.log_every:
    problems.append(f'checkpoint.every {config.checkpoint.every} is not a multiple of log_every '
                    f'{config.log_every} (a resumed run would log other averages)')
  if config.data.max_skipped_steps < 0:
    problems.append(f'data.max_skipped_steps is {config.data.max_skipped_steps}, expected >= 0')
  if config.validation.every and not config.validation.case:
    problems.append('validation.every is set but validation.case is empty (an sa-prep folder)')
  workdir = Path(workdir)
  if workdir.exists() and not workdir.is_dir():
    problems.append(f'workdir {workdir} exists and is not a folder')
  if problems:
    raise ValueError('; '.join(problems))
  models = model_config(config).models
  multiple = size_multiple(models)
  for side in ('width', 'height'):
    value = config.data[side]
    if value < multiple or value % multiple:
      problems.append(f'data.{side} is {value}, expected a positive multiple of {multiple}')
  for root in _roots(config):
    size, _ = clips.split_root(root)
    if size and any(side % multiple for side in size):
      problems.append(f'data root {root}: size {size[0]}x{size[1]}, expected multiples of {multiple}')
  if problems:
    raise ValueError('; '.join(problems))
  optimizer_lib.OptimizerConfig.from_config(config.optimizer)
  lora = lora_lib.LoraConfig.from_config(config.lora, config.seed)
  if lora.enabled:
    lora_lib.target_paths(models.abstract_params(), lora)
  sharding.rules_from_config(config.mesh.rules)
  context = sharding.parse_mesh_shape(config.mesh.shape).get(sharding.CONTEXT, 1) if config.mesh.shape else 1
  if context > 1 and config.data.num_frames % context:
    raise ValueError(f'data.num_frames {config.data.num_frames} does not split over mesh axis context={context}; '
                     'expected a multiple of it')
  chunk = config.encode_chunk_size
  if chunk < 0 or (chunk and (config.data.num_frames % chunk or chunk % context)):
    raise ValueError(f'encode_chunk_size {chunk} with data.num_frames {config.data.num_frames} and mesh axis '
                     f'context={context}: expected 0 (all frames at once) or a divisor of num_frames that is a '
                     'multiple of context')
  # A lower bound of one saved step: the frozen networks and the trained ones at least once.
  init_bytes = _folder_bytes(Path(config.model.init) / checkpoint.PARAMS) if config.model.init else 0
  outputs.check_space(workdir, init_bytes, 'the training checkpoints')


def _folder_bytes(folder: Path) -> int:
  return sum(f.stat().st_size for f in folder.rglob('*') if f.is_file())


def _roots(config: Any) -> list[str]:
  return [r.strip() for r in config.data.roots.split(',') if r.strip()]


def step_config(config: Any, ckpt: checkpoint.CheckpointConfig) -> step_lib.StepConfig:
  return step_lib.StepConfig(
      models=ckpt.models, loss=loss_lib.LossConfig.from_config(config.loss),
      optimizer=optimizer_lib.OptimizerConfig.from_config(config.optimizer), ema_decay=float(config.ema_decay),
      remat=bool(config.remat), query_chunk_size=config.query_chunk_size or None,
      encode_chunk_size=config.encode_chunk_size or None, dtype=DTYPES[config.dtype],
      image_mean=ckpt.image_mean, image_std=ckpt.image_std,
      lora=lora_lib.LoraConfig.from_config(config.lora, config.seed % 2**32), trained=config.trained)


def data_config(config: Any) -> clips.DataConfig:
  return clips.DataConfig(roots=tuple(_roots(config)), width=config.data.width, height=config.data.height,
                          num_frames=config.data.num_frames, stride=config.data.stride,
                          seed=config.seed % 2**32)


# ------------------------------------------------------------------------------------- assembly

@dataclasses.dataclass(frozen=True)
class Assembly:
  """The compiled pieces of a run.

  Attributes:
    mesh: the device mesh.
    state_shardings: NamedSharding per state leaf.
    batch_shardings: `loss.Batch` of NamedShardings (batch axis over the batch mesh axes).
    abstract_state: `jax.ShapeDtypeStruct` per state leaf, with its sharding (restore target).
    train_step: the jitted step `(state, batch, key) -> (state, metrics)`, state donated.
    tx: the optimiser.
    step_config: what the step computes with.
  """
  mesh: Mesh
  state_shardings: Any
  batch_shardings: loss_lib.Batch
  abstract_state: Any
  train_step: Any
  tx: Any
  step_config: step_lib.StepConfig


def make_mesh(config: Any) -> Mesh:
  return sharding.make_mesh(sharding.parse_mesh_shape(config.mesh.shape) if config.mesh.shape else {})


def assemble(step_config: step_lib.StepConfig, mesh: Mesh, rules: Any) -> Assembly:
  """Shardings from the logical axes of the boxed abstract state, and the jitted step."""
  train_step, tx = step_lib.make_train_step(step_config)
  boxed_state = jax.eval_shape(lambda p: step_lib.init_state(p, tx, step_config),
                               step_config.models.abstract_params(jnp.float32))
  state_shardings = sharding.param_shardings(boxed_state, mesh, rules)
  abstract_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                nn.unbox(boxed_state), state_shardings)
  videos = [sharding.video_sharding(mesh, 5, rules)] * 3                    # frames, poses, face_masks
  batch_shardings = loss_lib.Batch(*videos, *(sharding.batch_sharding(mesh, ndim, rules) for ndim in (4, 2, 1)))
  replicated = NamedSharding(mesh, PartitionSpec())

  def step_on_mesh(state, batch, key):
    # The activations' logical names (`nn.with_logical_constraint`) resolve while tracing.
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
      return train_step(state, batch, key)

  jitted = jax.jit(step_on_mesh, in_shardings=(state_shardings, batch_shardings, replicated),
                   out_shardings=(state_shardings, replicated), donate_argnums=0)
  return Assembly(mesh, state_shardings, batch_shardings, abstract_state, jitted, tx, step_config)


def initial_state(assembly: Assembly, params: dict[str, Any], donate: bool = False) -> dict[str, Any]:
  """Step-0 state from full params (host or device arrays), placed in the state shardings; with
  `donate` the state takes over the buffers of device `params` (deleted), holding one copy."""
  init = jax.jit(lambda p: step_lib.init_state(p, assembly.tx, assembly.step_config),
                 out_shardings=assembly.state_shardings, donate_argnums=(0,) if donate else ())
  return init(params)


def global_batch(local: dict[str, np.ndarray], shardings: loss_lib.Batch) -> loss_lib.Batch:
  """The global batch from this process's slice (`[B_local, ...]` numpy per field)."""
  return loss_lib.Batch(*(jax.make_array_from_process_local_data(s, np.asarray(local[name]))
                          for name, s in zip(loss_lib.Batch._fields, shardings)))


def abstract_batch(config: Any, shardings: loss_lib.Batch, global_batch_size: int, embedding_dim: int
                   ) -> loss_lib.Batch:
  """Shapes of a global batch (for compiling without data, e.g. the memory estimate)."""
  b, f, h, w = global_batch_size, config.data.num_frames, config.data.height, config.data.width
  shapes = ((b, f, h, w, 3), (b, f, h, w, 3), (b, f, h, w, 1), (b, h, w, 3), (b, embedding_dim), (b,))
  dtypes = (np.uint8, np.uint8, np.uint8, np.uint8, np.float32, np.bool_)
  return loss_lib.Batch(*(jax.ShapeDtypeStruct(s, d, sharding=sh) for s, d, sh in zip(shapes, dtypes, shardings)))


def global_batch_size(config: Any, mesh: Mesh) -> int:
  """Videos per step: `per_device_batch_size` per device, the `context` devices that share a video's
  frames counting as one."""
  return config.data.per_device_batch_size * mesh.devices.size // mesh.shape[sharding.CONTEXT]


def assemble_for_shapes(config: Any, models: Any, devices: Sequence[jax.Device] | None = None
                        ) -> tuple[Assembly, loss_lib.Batch, jax.ShapeDtypeStruct]:
  """The assembly of `config` for the networks `models` (no checkpoint read) on the config's mesh
  over `devices` (default: all), with the shapes of a global batch and of the step's key."""
  ckpt = checkpoint.CheckpointConfig(models=models, scheduler=None)
  shape = sharding.parse_mesh_shape(config.mesh.shape) if config.mesh.shape else {}
  mesh = sharding.make_mesh(shape, devices)
  assembly = assemble(step_config(config, ckpt), mesh, sharding.rules_from_config(config.mesh.rules))
  batch = abstract_batch(config, assembly.batch_shardings, global_batch_size(config, mesh),
                         models.face_encoder.id_embeddings_dim)
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=NamedSharding(mesh, PartitionSpec()))
  return assembly, batch, key


def model_flops(config: Any, models: Any, devices: Sequence[jax.Device] | None = None) -> float:
  """The FLOPs of one train step's maths over the whole mesh: XLA's count of the step lowered (not
  compiled) without remat, with whole attention and one VAE encoder pass, so that nothing is
  recomputed and no loop hides its trip count (XLA's cost analysis counts a loop's body once)."""
  plain = config.copy_and_resolve_references()
  plain.remat, plain.query_chunk_size, plain.encode_chunk_size = False, 0, 0
  assembly, batch, key = assemble_for_shapes(plain, models, devices)
  cost = assembly.train_step.lower(assembly.abstract_state, batch, key).cost_analysis()
  return float(cost['flops'])


def memory_estimate(config: Any, models: Any, devices: Sequence[jax.Device] | None = None) -> dict[str, float]:
  """XLA's per-device memory of the compiled step (GiB), compiled from shapes only (no weights), on
  the config's mesh over `devices` (default: all), the step's model FLOPs per device
  (`model_flops`) and the compile time in seconds."""
  assembly, batch, key = assemble_for_shapes(config, models, devices)
  start = time.perf_counter()
  compiled = assembly.train_step.lower(assembly.abstract_state, batch, key).compile()
  seconds = time.perf_counter() - start
  return dict(memory_gib(compiled), devices=assembly.mesh.devices.size, global_batch=batch.frames.shape[0],
              flops=model_flops(config, models, devices) / assembly.mesh.devices.size, compile_seconds=seconds)


def memory_gib(compiled: Any) -> dict[str, float]:
  """A compiled program's per-device memory from XLA (GiB): arguments, outputs, aliased (donated)
  outputs, temporaries, code, and their total (`arguments + outputs - aliased + temporaries`)."""
  analysis = compiled.memory_analysis()
  fields = ('argument_size_in_bytes', 'output_size_in_bytes', 'alias_size_in_bytes', 'temp_size_in_bytes',
            'generated_code_size_in_bytes')
  out = {f.removesuffix('_size_in_bytes'): getattr(analysis, f) / 2.0 ** 30 for f in fields}
  out['total'] = out['argument'] + out['output'] - out['alias'] + out['temp']
  return out


# ----------------------------------------------------------------------------------------- model

def model_config(config: Any) -> checkpoint.CheckpointConfig:
  """The checkpoint config of the model to train (`model.init`, or the tiny model), without
  the face embedder (it serves only the HJB correction) and without reading weights."""
  ckpt = checkpoint.load_config(config.model.init) if config.model.init else animate.tiny_config()
  return dataclasses.replace(ckpt, models=dataclasses.replace(ckpt.models, face_embedder=None))


def load_model(config: Any) -> dict[str, Any]:
  """The params to train: those of `model.init`, or the tiny model's; no face embedder."""
  if config.model.init:
    return checkpoint.load(config.model.init, networks=model_config(config).models.names)[0]
  params, _ = animate.tiny_model()
  params.pop('face_embedder', None)
  return params


def trained_params(state: dict[str, Any], config: step_lib.StepConfig, ema: bool = False) -> dict[str, Any]:
  """The full parameter tree of a state (with the EMA of the trained parameters if asked; LoRA
  adapters merged into their kernels)."""
  return step_lib.full_params(state['ema'] if ema else state['params'], state['frozen'], config)


# ------------------------------------------------------------------------------------ validation

def validation_run(config: Any) -> Any:
  """`sa-animate` settings of the validation video: the training size and frame count, one tile of
  all frames, `validation.num_steps` steps at guidance `validation.guidance` (SPEC §5), its programs
  kept with the training's compilation cache."""
  from configs import animate as animate_configs
  run = animate_configs.get_config()
  run.sampler.update(num_steps=config.validation.num_steps, guidance=config.validation.guidance,
                     tile_size=config.data.num_frames, dtype=config.dtype)
  run.io.update(width=config.data.width, height=config.data.height, num_frames=config.data.num_frames,
                seed=config.seed % 2**32, compile_cache=config.compile_cache,
                compile_cache_dir=config.compile_cache_dir)
  return run


def validation_inputs(config: Any, models: Any) -> animate.Inputs | None:
  """The validation case, read and checked (None without validation)."""
  if not config.validation.every:
    return None
  inputs = animate.Inputs(folder=Path(config.validation.case))
  animate.load_request(inputs, validation_run(config), models.face_encoder.id_embeddings_dim)
  return inputs


def validation_scores(frames: np.ndarray, case: Path) -> dict[str, float]:
  """`validation/<metric>`: L1, PSNR and SSIM (and DisCo's, `sa_jax.eval.metrics`) of a validation
  video `[F, h, w, 3]` against the case's ground truth `images/` (its first F frames, at their size,
  as `sa-eval` scores); {} when the case has fewer ground-truth frames or another aspect ratio."""
  truth_files = frame_io.list_images(case / eval_clips.TRUTH) if (case / eval_clips.TRUTH).is_dir() else []
  if len(truth_files) < len(frames):
    return {}
  truth = np.stack([frame_io.load_rgb(p) for p in truth_files[:len(frames)]])
  if not eval_clips.same_aspect(frames.shape[2:0:-1], truth.shape[2:0:-1]):
    return {}
  generated = eval_clips.to_size(frames, truth.shape[2:0:-1])
  return {f'validation/{key}': value for key, value in eval_metrics.frame_means(generated, truth).items()}


def validate(state: dict[str, Any], ckpt: checkpoint.CheckpointConfig, config: Any, inputs: animate.Inputs,
             step: int, workdir: str, writer: MetricWriter) -> Path:
  """Samples the validation case with the current parameters into `workdir/validation/step_<n>.mp4`,
  with its scores against the case's ground truth where it has one (`validation_scores`)."""
  params = jax.device_get(trained_params(state, step_config(config, ckpt), ema='ema' in state))
  frames, _, _ = animate.animate(params, ckpt, inputs, validation_run(config))
  out = Path(workdir) / 'validation' / f'step_{step:06d}.mp4'
  animate.write_outputs(frames, out, config.loss.fps, overwrite=True)
  writer.write_video(step, 'validation', frames)
  writer.write_scalars(step, validation_scores(frames, Path(config.validation.case)))
  return out


# ------------------------------------------------------------------------------------------ loop

def distributed_init(config: Any) -> None:
  """`jax.distributed.initialize` when configured (before any other JAX call)."""
  d = config.distributed
  if not d.enabled:
    return
  kwargs = {}
  if d.coordinator_address:
    kwargs['coordinator_address'] = d.coordinator_address
  if d.num_processes:
    kwargs['num_processes'] = d.num_processes
  if d.process_id >= 0:
    kwargs['process_id'] = d.process_id
  jax.distributed.initialize(**kwargs)


def train(config: Any, workdir: str | os.PathLike, *, progress: bool = True) -> dict[str, float]:
  """Trains to `config.num_steps`, resuming from the latest complete checkpoint of `workdir`.

  Returns the last logged metrics. Raises TrainingError at a non-finite loss or gradient (the
  state of that step is not saved; the last good checkpoint stays) and when `data.max_skipped_steps`
  steps in a row had no readable clip.
  """
  check_config(config, workdir)
  workdir = os.path.abspath(os.fspath(workdir))
  os.makedirs(workdir, exist_ok=True)
  cache = animate.enable_compile_cache(config.compile_cache, config.compile_cache_dir)
  if cache:
    logger.info('compilation cache: %s', cache)
  ckpt_config = model_config(config)
  mesh = make_mesh(config)
  rules = sharding.rules_from_config(config.mesh.rules)
  batch_size = global_batch_size(config, mesh)
  if batch_size % jax.process_count():
    raise ValueError(f'global batch {batch_size} does not split over {jax.process_count()} processes')
  validation = validation_inputs(config, ckpt_config.models)
  if validation is not None and jax.process_count() > 1:
    logger.warning('validation videos are made in single-process runs only; skipping them')
    validation = None
  saved_config = dict(json.loads(config.to_json()), model_config=ckpt_config.to_json(),
                      runtime=dict(process_count=jax.process_count(), global_batch_size=batch_size))
  manager = run_checkpoints.RunCheckpoints(workdir, max_to_keep=config.checkpoint.max_to_keep,
                                           async_save=config.checkpoint.async_save)
  start = manager.latest_step()
  if start is not None:
    _check_resumable(saved_config, with_implicit_settings(manager.restore_config(start)), manager.directory)
    if start >= config.num_steps:
      logger.info('%s is already at step %d >= num_steps %d: nothing to do', workdir, start, config.num_steps)
      manager.close()
      return {}
  assembly = assemble(step_config(config, ckpt_config), mesh, rules)
  data = iter(clips.make_loader(data_config(config), batch_size=batch_size // jax.process_count(),
                                shard_index=jax.process_index(), shard_count=jax.process_count(),
                                worker_count=config.data.worker_count))
  writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
  try:
    if start is None:
      params = load_model(config)
      state = initial_state(assembly, params)
      del params
      manager.save_frozen(state['frozen'])   # replaces what an attempt without a checkpoint left
      writer.truncate_after(0)      # lines of an earlier attempt that never reached a checkpoint
      start = 0
      logger.info('training from step 0 (%s)', config.model.init or 'tiny model')
    else:
      state = manager.restore(start, assembly.abstract_state, data)
      writer.truncate_after(start)
      logger.info('resumed from step %d of %s', start, manager.directory)
    validate_at = None if validation is None else (
        lambda st, n: validate(st, ckpt_config, config, validation, n, workdir, writer))
    return _loop(config, assembly, state, start, data, manager, writer, saved_config, progress, validate_at)
  finally:
    manager.wait()
    manager.close()
    writer.close()
    if hasattr(data, 'close'):
      data.close()


# Settings a resumed run must share with the run it continues (num_steps, logging, checkpointing
# and the mesh may change as long as the process count and the global batch stay).
RESUME_FIXED = ('seed', 'trained', 'dtype', 'remat', 'ema_decay', 'model', 'loss', 'optimizer', 'lora', 'data.roots',
                'data.width', 'data.height', 'data.num_frames', 'data.stride', 'data.worker_count', 'model_config',
                'runtime.process_count', 'runtime.global_batch_size')


def _check_resumable(config: dict[str, Any], saved: dict[str, Any], directory: str) -> None:
  """Refuses to resume a run whose saved settings would give other data, draws or state."""
  def get(tree, dotted):
    for part in dotted.split('.'):
      tree = tree.get(part) if isinstance(tree, dict) else None
    return tree
  differ = [f'{k} ({get(saved, k)!r} -> {get(config, k)!r})' for k in RESUME_FIXED if get(saved, k) != get(config, k)]
  if differ:
    raise ValueError(f'{directory} was trained with other settings; differ: {", ".join(differ)} '
                     '(use another --workdir, or the same settings to resume)')


def _loop(config, assembly, state, start, data: Iterator, manager, writer, saved_config, progress, validate_at):
  key = jax.random.key(config.seed)
  logged: dict[str, float] = {}
  pending: list[dict[str, Any]] = []
  skipped_in_a_row = 0
  tick = time.perf_counter()

  def flush(done):
    nonlocal pending, tick, logged
    if not pending:
      return
    host = jax.device_get(pending)
    logged = {k: float(np.mean([m[k] for m in host])) for k in host[-1]}
    logged['skipped_videos'] = float(sum(m['skipped_videos'] for m in host))
    logged['steps_per_second'] = len(host) / max(time.perf_counter() - tick, 1e-9)
    writer.write_scalars(done, logged)
    pending, tick = [], time.perf_counter()

  # A stop signal is taken between steps, where the state and the data position agree: the step
  # reached is saved first (a second signal stops at once).
  with outputs.defer_first_signal(), tqdm(total=config.num_steps, initial=start, desc='sa-train', unit='step',
                                          disable=not progress, dynamic_ncols=True) as bar:
    for step in range(start, config.num_steps):
      if outputs.received_signal() is not None:
        flush(step)
        _save_at_stop(manager, step, start, state, data, saved_config)
        outputs.check_interrupted()
      batch = global_batch(next(data), assembly.batch_shardings)
      state, metrics = assembly.train_step(state, batch, key)
      pending.append(metrics)
      done = step + 1
      if not bool(metrics['finite']):
        flush(done)
        manager.wait()
        raise TrainingError(f'step {done}: the loss or the gradients are not finite '
                            f'(loss {float(metrics["loss"])}, grad norm {float(metrics["grad_norm"])}); '
                            f'stopped, the last good checkpoint is step {manager.latest_step()}')
      skipped_in_a_row = skipped_in_a_row + 1 if float(metrics['valid_videos']) == 0 else 0
      if config.data.max_skipped_steps and skipped_in_a_row >= config.data.max_skipped_steps:
        flush(done)
        raise TrainingError(f'step {done}: {skipped_in_a_row} steps in a row had no readable clip '
                            '(the bad clips are listed above); check data.roots')
      if done % config.log_every == 0 or done == config.num_steps:
        flush(done)
        bar.set_postfix(loss=f'{logged["loss"]:.4g}', steps_s=f'{logged["steps_per_second"]:.2f}')
      bar.update(1)
      if done % config.checkpoint.every == 0 or done == config.num_steps:
        manager.save(done, state, data, saved_config)
      if validate_at is not None and done % config.validation.every == 0:
        logger.info('validation video: %s', validate_at(state, done))
  return logged


def _save_at_stop(manager, step: int, start: int, state, data, saved_config) -> None:
  """Saves step `step` (the state and data position a stop signal found) unless it is saved already
  or nothing was trained. Single-process runs only: the processes of a multi-process run receive
  the signal at different steps, so such a run keeps its last periodic checkpoint."""
  manager.wait()
  name = signal.Signals(outputs.received_signal()).name
  if step == start or manager.latest_step() == step:
    return
  if jax.process_count() > 1:
    logger.warning('stopped by %s at step %d: a multi-process run keeps its last periodic checkpoint (step %s)',
                   name, step, manager.latest_step())
    return
  manager.save(step, state, data, saved_config)
  manager.wait()
  logger.info('stopped by %s: saved step %d in %s (the same command resumes it)', name, step, manager.directory)


def exported_params(workdir: str | os.PathLike, step: int | None = None, ema: bool = False) -> dict[str, Any]:
  """The full parameters of a saved step of `workdir` (default: the latest), rebuilt from the settings
  and model config saved with it."""
  step, saved = saved_settings(workdir, step)
  config = ml_collections.ConfigDict({k: v for k, v in saved.items() if k not in ('model_config', 'runtime')})
  if ema and config.ema_decay <= 0:
    raise ValueError(f'--ema: the run of {workdir} has ema_decay {config.ema_decay}, no EMA to export')
  ckpt = checkpoint.CheckpointConfig.from_json(saved['model_config'])
  mesh = sharding.make_mesh({'fsdp': -1})
  assembly = assemble(step_config(config, ckpt), mesh, sharding.rules_from_config(config.mesh.rules))
  manager = run_checkpoints.RunCheckpoints(workdir, max_to_keep=1, async_save=False)
  try:
    return jax.device_get(trained_params(manager.restore(step, assembly.abstract_state), assembly.step_config, ema))
  finally:
    manager.close()


def saved_settings(workdir: str | os.PathLike, step: int | None = None) -> tuple[int, dict[str, Any]]:
  """The step (default: the latest) and the settings saved with it in `workdir`."""
  manager = run_checkpoints.RunCheckpoints(workdir, max_to_keep=1, async_save=False)
  try:
    steps = manager.all_steps()
    if not steps:
      raise ValueError(f'{manager.directory} holds no checkpoint')
    step = max(steps) if step is None else step
    if step not in steps:
      raise ValueError(f'{manager.directory} has no step {step}; it has {steps}')
    return step, with_implicit_settings(manager.restore_config(step))
  finally:
    manager.close()


# Settings added after runs had been saved without them, each with the value those runs had.
IMPLICIT_SETTINGS = {'trained': 'release', 'loss.noise_d_low': 32.0, 'loss.noise_d_high': 64.0}


def with_implicit_settings(saved: dict[str, Any]) -> dict[str, Any]:
  """A run's saved settings with those it predates (`IMPLICIT_SETTINGS`) filled in, so that an
  older run resumes and exports as it trained."""
  saved = copy.deepcopy(saved)
  for dotted, value in IMPLICIT_SETTINGS.items():
    *path, leaf = dotted.split('.')
    node = saved
    for part in path:
      node = node.setdefault(part, {})
    node.setdefault(leaf, value)
  return saved


def export_checkpoint(workdir: str | os.PathLike, out: str | os.PathLike, step: int | None = None,
                      ema: bool = False, overwrite: bool = False, dtype: str = 'float32') -> Path:
  """Writes the full parameters of a saved step as an sa-jax checkpoint (what `sa-animate
  --checkpoint` reads) stored in `dtype` ('float32' or 'bfloat16', as `sa-convert --dtype`), with
  the face embedder of the run's `model.init` when it has one (the HJB correction's; training
  leaves it out)."""
  if dtype not in DTYPES:
    raise ValueError(f'export dtype {dtype!r}, expected one of {sorted(DTYPES)}')
  step, saved = saved_settings(workdir, step)
  init = saved['model']['init']
  inputs = [workdir] + ([init] if init else [])
  checkpoint.check_target(out, overwrite, inputs)
  params = exported_params(workdir, step, ema)
  ckpt = checkpoint.CheckpointConfig.from_json(saved['model_config'])
  if init and checkpoint.load_config(init).models.face_embedder is not None:
    embedder, init_config = checkpoint.load(init, networks=('face_embedder',))
    params['face_embedder'] = embedder['face_embedder']
    ckpt = dataclasses.replace(ckpt, models=dataclasses.replace(ckpt.models,
                                                                face_embedder=init_config.models.face_embedder))
  source = f'sa-train --workdir {workdir}: step {step}{" (EMA)" if ema else ""}'
  params = jax.tree.map(lambda x: np.asarray(x).astype(DTYPES[dtype]), params)
  checkpoint.save(out, params, dataclasses.replace(ckpt, source=source, dtype=dtype), overwrite=overwrite,
                  inputs=inputs)
  return Path(out)
