"""`sa-animate`: read reference photos, poses and masks, animate them B at a time, write MP4, GIF and PNGs.

The input folder layout is the one `sa-prep` writes (`reference.png`, `poses/`, `faces/`,
`reference_face_mask.png`, `face_embedding.npy`); each part can also be given on its own. Run
settings are the ConfigDict of `configs/animate.py`. Every case is read and validated before
anything compiles; cases of one size run together in one compiled program (`batch_size` videos
per call, spread over the mesh's batch axes), and a case that fails is reported by its path while
the others go on. Outputs are written next to their final names and renamed into place at the
end: a failed run leaves nothing half-written.
"""

import dataclasses
import functools
import logging
import os
import re
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh
from PIL import Image

from sa_jax import checkpoint, diffusion, errors, outputs, program_cache, sharding
from sa_jax.checkpoint import CheckpointConfig
from sa_jax.models import random_init, stable_animator
from sa_jax.models.stable_animator import ModelConfigs
from sa_jax.prep import frames as frame_io
from sa_jax.sampling import hjb, pipeline, sampler

logger = logging.getLogger(__name__)

SAMPLE_DIR = Path(__file__).resolve().parent / 'assets' / 'sample'
# The demo model (configs/svd_xt.py:demo trained by configs/train.py:demo): what runs without a checkpoint
DEMO_MODEL = Path(__file__).resolve().parent / 'assets' / 'demo_model'
RESOLUTION_MULTIPLE = 64
TINY_SEED = 0
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
CASE_MARKER = 'reference.png'


@dataclasses.dataclass(frozen=True)
class Inputs:
  """Input files of one case. `folder` (an sa-prep output) supplies whatever is not given explicitly."""
  folder: Path | None = None
  reference: Path | None = None
  poses: Path | None = None
  face_masks: Path | None = None
  reference_face_mask: Path | None = None
  face_embedding: Path | None = None
  insightface_root: Path | None = None

  def resolved(self) -> 'Inputs':
    if self.folder is None:
      return self
    folder = Path(self.folder)
    if not folder.is_dir():
      raise FileNotFoundError(f'input folder not found: {folder}')
    pick = lambda given, name: given if given is not None else (
        folder / name if (folder / name).exists() else None)
    return dataclasses.replace(
        self, reference=pick(self.reference, CASE_MARKER), poses=pick(self.poses, 'poses'),
        face_masks=pick(self.face_masks, 'faces'),
        reference_face_mask=pick(self.reference_face_mask, 'reference_face_mask.png'),
        face_embedding=pick(self.face_embedding, 'face_embedding.npy'))

  @property
  def name(self) -> str:
    """The case's name: its folder's, else its reference photo's stem."""
    return Path(self.folder).resolve().name if self.folder is not None else Path(self.reference).stem


def find_cases(paths: Sequence[str | os.PathLike]) -> list[Path]:
  """Case folders: each path is a case (it holds `reference.png`) or a folder of case folders."""
  cases = []
  for path in map(Path, paths):
    if (path / CASE_MARKER).is_file():
      cases.append(path)
      continue
    if not path.is_dir():
      raise FileNotFoundError(f'input folder not found: {path}')
    inner = sorted(p for p in path.iterdir() if (p / CASE_MARKER).is_file())
    if not inner:
      raise ValueError(f'{path} is neither a case folder (with {CASE_MARKER}) nor a folder of case folders')
    cases.extend(inner)
  names = [c.resolve().name for c in cases]
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise ValueError(f'case folders share names {repeated}: their outputs would collide')
  return cases


def _resize(image: np.ndarray, width: int, height: int, resample: int) -> np.ndarray:
  if image.shape[:2] == (height, width):
    return image
  return np.array(Image.fromarray(image).resize((width, height), resample))


def read_face_embedding(path: str | os.PathLike, dim: int) -> np.ndarray:
  """A face embedding `.npy` file as float32 `[dim]`, refused (one line naming it) unless it is one
  finite floating-point array of `dim` values, never unpickled."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'face embedding not found: {path}')
  try:
    embedding = np.load(path, allow_pickle=False)
  except (ValueError, EOFError, OSError) as err:     # pickled, empty, truncated, not numpy
    raise ValueError(f'{path}: not a numpy .npy array ({errors.first_line(err)})') from err
  if not isinstance(embedding, np.ndarray):
    embedding.close()
    raise ValueError(f'{path}: a numpy .npz archive, expected one .npy array')
  if not np.issubdtype(embedding.dtype, np.floating):
    raise ValueError(f'{path}: face embedding has dtype {embedding.dtype}, expected floating point')
  embedding = np.asarray(embedding, np.float32).reshape(-1)
  if embedding.shape != (dim,):
    raise ValueError(f'{path}: face embedding has {embedding.size} values, the face encoder needs {dim}')
  if not np.isfinite(embedding).all():
    raise ValueError(f'{path}: face embedding holds {int(np.sum(~np.isfinite(embedding)))} NaN or infinite '
                     'values, expected finite numbers')
  return embedding


def _face_embedding(inputs: Inputs, reference: np.ndarray, dim: int) -> np.ndarray:
  if inputs.face_embedding is not None:
    return read_face_embedding(inputs.face_embedding, dim)
  if inputs.insightface_root is not None:
    from sa_jax.prep import faces
    _, embedding = faces.reference_faces(faces.load_face_analysis(inputs.insightface_root), reference)
    return embedding
  raise ValueError('no face embedding: give --face-embedding FILE.npy (sa-prep writes one) or '
                   '--insightface-root DIR (antelopev2 models)')


def generation_size(run: Any, reference: np.ndarray) -> tuple[int, int]:
  """`(width, height)` of a run's videos: `run.io.width` x `run.io.height`, 0 taking the reference
  photo's (`[H0, W0, 3]`) size; refused unless multiples of 64."""
  width = run.io.width or reference.shape[1]
  height = run.io.height or reference.shape[0]
  if width % RESOLUTION_MULTIPLE or height % RESOLUTION_MULTIPLE:
    raise ValueError(f'resolution {width}x{height} is not a multiple of {RESOLUTION_MULTIPLE} '
                     '(the VAE and UNet halve it six times); e.g. 512x512 or 576x1024')
  return width, height


def load_request(inputs: Inputs, run: Any, embedding_dim: int) -> pipeline.Request:
  """Reads and checks one case's files for the run settings `run` (`configs/animate.py`).

  Returns a single-video request (no batch axis) at the generation size: `run.io.width` x
  `run.io.height`, 0 taking the reference photo's size; the first `run.io.num_frames` poses (0: all).
  """
  inputs = inputs.resolved()
  if inputs.reference is None or inputs.poses is None:
    raise ValueError('need a reference image and a pose folder (--reference and --poses, or --input)')
  reference = frame_io.load_rgb(inputs.reference)
  width, height = generation_size(run, reference)
  pose_files = frame_io.list_images(inputs.poses)
  if run.io.num_frames > len(pose_files):
    raise ValueError(f'num_frames {run.io.num_frames} but {inputs.poses} holds {len(pose_files)} poses')
  n = run.io.num_frames or len(pose_files)
  pose_files = pose_files[:n]
  poses = np.stack([_resize(frame_io.load_rgb(p), width, height, Image.BICUBIC) for p in pose_files])
  boxes = np.zeros((n, 4), np.int32)
  reference_box = np.zeros((4,), np.int32)
  if run.hjb.enabled:
    if inputs.face_masks is None or inputs.reference_face_mask is None:
      raise ValueError('the HJB face correction needs per-frame face masks (--face-masks) and the '
                       'reference face mask (--reference-face-mask)')
    mask_files = frame_io.list_images(inputs.face_masks)
    if len(mask_files) < n or (not run.io.num_frames and len(mask_files) != n):
      raise ValueError(f'{len(mask_files)} face masks in {inputs.face_masks} but {n} poses in '
                       f'{inputs.poses}: need one mask per pose frame')
    for i, path in enumerate(mask_files[:n]):
      mask = frame_io.load_mask(path)
      if mask.shape != (height, width):
        raise ValueError(f'face mask {path} is {mask.shape[1]}x{mask.shape[0]}; masks must be at the '
                         f'generation size {width}x{height} (sa-prep --width/--height)')
      boxes[i] = hjb.face_box(mask, str(path))
    mask = frame_io.load_mask(inputs.reference_face_mask)
    if mask.shape != reference.shape[:2]:
      raise ValueError(f'reference face mask {inputs.reference_face_mask} is {mask.shape[1]}x{mask.shape[0]}, '
                       f'the reference image {reference.shape[1]}x{reference.shape[0]}: they must match')
    reference_box = hjb.face_box(mask, str(inputs.reference_face_mask))
  return pipeline.Request(
      reference=reference, reference_resized=_resize(reference, width, height, Image.LANCZOS),
      poses=poses, face_embedding=_face_embedding(inputs, reference, embedding_dim),
      face_boxes=boxes, reference_face_box=reference_box)


def _parameter_avals(name: str, config: Any) -> dict[str, list]:
  """`'path/to/kernel' -> [shape, dtype]` of a network's float32 parameters (traces its init)."""
  abstract = stable_animator.BY_NAME[name].param_shapes(config)
  return {path: [list(x.shape), str(x.dtype)] for path, x in traverse_util.flatten_dict(abstract, sep='/').items()}


def abstract_parameters(name: str, config: Any, folder: Path | None = None) -> dict[str, jax.ShapeDtypeStruct]:
  """`'path/to/kernel' -> ShapeDtypeStruct` of a network's float32 parameters under `config`, in
  the order of its init; kept in `folder` (`program_cache.stored_json`), as tracing the UNet's
  init takes seconds."""
  avals = program_cache.stored_json(folder, ('parameter shapes', name, config),
                                    functools.partial(_parameter_avals, name, config))
  return {path: jax.ShapeDtypeStruct(tuple(shape), dtype) for path, (shape, dtype) in avals.items()}


def check_params(params: Mapping[str, Any], models: ModelConfigs, folder: Path | None = None) -> None:
  """Every network's parameter shapes fit its config (shapes kept in `folder`: `abstract_parameters`);
  lists every mismatch."""
  problems = []
  for name, tree in params.items():
    want = abstract_parameters(name, getattr(models, name), folder)
    have = traverse_util.flatten_dict(tree, sep='/')
    for path in sorted(set(want) | set(have)):
      shape_w = tuple(want[path].shape) if path in want else None
      shape_h = tuple(np.shape(have[path])) if path in have else None
      if shape_w != shape_h:
        problems.append(f'{name}/{path}: checkpoint {shape_h}, config {shape_w}')
  if problems:
    raise ValueError(f'checkpoint parameters do not fit its config ({len(problems)}):\n  '
                     + '\n  '.join(problems[:50]))


def tiny_config() -> CheckpointConfig:
  """The config of the tiny model with random weights (tests, benchmarks, `sa-train` without a model)."""
  from configs import svd_xt
  return CheckpointConfig(models=ModelConfigs.from_dict(svd_xt.get_config('tiny').to_dict()),
                          scheduler=diffusion.ScheduleConfig(), source='tiny config, random weights')


def tiny_model() -> tuple[dict[str, Any], CheckpointConfig]:
  """The tiny config with seeded random weights (not a trained model)."""
  config = tiny_config()
  models = config.models
  params = {name: random_init.random_params(
      traverse_util.unflatten_dict(abstract_parameters(name, getattr(models, name)), sep='/'),
      TINY_SEED + i) for i, name in enumerate(models.names)}
  return params, config


def _dtype(name: str) -> Any:
  if name not in DTYPES:
    raise ValueError(f'dtype {name!r}: expected one of {sorted(DTYPES)}')
  return DTYPES[name]


@functools.lru_cache(maxsize=8)
def make_animator(config: CheckpointConfig, sampler_config: sampler.SamplerConfig,
                  conditioning: pipeline.ConditioningConfig, dtype: str, query_chunk_size: int | None,
                  mesh: Mesh | None, rules: tuple[tuple[str, Any], ...], program_folder: Path | None
                  ) -> pipeline.Animator:
  """The animator of these settings, built once per process (its programs compile once per shape)."""
  return pipeline.Animator(config, sampler_config, conditioning, _dtype(dtype), query_chunk_size, mesh, rules,
                           step_progress=program_folder is None, program_folder=program_folder)


def animator_for(config: CheckpointConfig, run: Any, num_frames: int, mesh: Mesh | None = None) -> pipeline.Animator:
  """The (cached) animator of a run config for clips of `num_frames` frames.

  With `run.io.compile_cache` its programs are kept in `program_folder(run)` and progress is
  reported once per batch (a stored program cannot call back into Python); without it they are
  traced in each process and report each step.
  """
  sampler_config = sampler.SamplerConfig.from_config(run, config.scheduler, num_frames)
  return make_animator(config, sampler_config, pipeline.ConditioningConfig.from_config(run), run.sampler.dtype,
                       run.sampler.query_chunk_size, mesh, sharding.rules_from_config(run.mesh.rules),
                       program_folder(run))


def make_mesh(run: Any) -> Mesh | None:
  """The mesh of `run.mesh.shape` ('data=2,fsdp=4'), or None for one device ('')."""
  if not run.mesh.shape:
    return None
  return sharding.make_mesh(sharding.parse_mesh_shape(run.mesh.shape))


def compile_cache_folder(folder: str = '') -> Path:
  """The compilation cache's folder: `folder`, '' taking $XDG_CACHE_HOME/sa-jax/jax."""
  return Path(folder or Path(os.environ.get('XDG_CACHE_HOME', Path.home() / '.cache')) / 'sa-jax' / 'jax'
              ).expanduser()


def program_folder(run: Any) -> Path | None:
  """Where a run keeps its traced programs and parameter shapes (`program_cache`): `programs/` in
  the compilation cache's folder; None without `run.io.compile_cache`."""
  return compile_cache_folder(run.io.compile_cache_dir) / 'programs' if run.io.compile_cache else None


def enable_compile_cache(enabled: bool, folder: str = '') -> Path | None:
  """Turns on JAX's persistent compilation cache in `compile_cache_folder(folder)`; returns the
  folder, None when not `enabled`."""
  if not enabled:
    return None
  folder = compile_cache_folder(folder)
  folder.mkdir(parents=True, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', str(folder))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  return folder


def check_run(run: Any) -> None:
  """Run settings a run cannot start with, each named with the value received and the one expected
  (before anything is read or compiled)."""
  at_least = {'sampler.num_steps': 1, 'sampler.tile_size': 1, 'sampler.tile_overlap': 0,
              'sampler.decode_chunk_size': 1, 'sampler.unet_batch_size': 1, 'sampler.query_chunk_size': 1,
              'conditioning.fps': 1, 'conditioning.motion_bucket_id': 0, 'conditioning.noise_aug_strength': 0,
              'io.width': 0, 'io.height': 0, 'io.num_frames': 0, 'io.batch_size': 1,
              'hjb.start': 0, 'hjb.iterations': 1}
  for field, low in at_least.items():
    section, key = field.split('.')
    value = run[section][key]
    if value is not None and not value >= low:       # `not >=` also refuses NaN
      raise ValueError(f'{field} is {value}; expected >= {low}')
  s, h = run.sampler, run.hjb
  if s.tile_overlap >= s.tile_size:
    raise ValueError(f'sampler.tile_overlap {s.tile_overlap} must be below sampler.tile_size {s.tile_size}')
  for field, value in (('sampler.guidance', s.guidance), ('sampler.min_guidance', s.min_guidance)):
    if value is not None and not np.isfinite(value):
      raise ValueError(f'{field} is {value}; expected a finite number')
  if h.enabled:
    if h.end < h.start:
      raise ValueError(f'hjb.end {h.end} is before hjb.start {h.start}: no step would be refined')
    if h.start >= s.num_steps:
      raise ValueError(f'hjb.start {h.start} but only {s.num_steps} steps (0-based): no step would be refined')
    if not h.eta > 0:
      raise ValueError(f'hjb.eta is {h.eta}; expected > 0')
  if run.mesh.shape and sharding.parse_mesh_shape(run.mesh.shape).get(sharding.CONTEXT, 1) != 1:
    raise ValueError(f'mesh.shape {run.mesh.shape!r} splits frames over context; sa-animate splits the '
                     'videos over data and fsdp only (context is for sa-train)')
  _dtype(s.dtype)


def model_folder(checkpoint_dir: str | os.PathLike | None) -> str | os.PathLike:
  """The checkpoint a run reads: `checkpoint_dir`, or the bundled demo model without one."""
  return DEMO_MODEL if checkpoint_dir is None else checkpoint_dir


def check_checkpoint(checkpoint_dir: str | os.PathLike | None, run: Any) -> CheckpointConfig:
  """The config of the model a run will use (the bundled demo model without `checkpoint_dir`),
  checked against the run before any parameter is read."""
  checkpoint_dir = model_folder(checkpoint_dir)
  config = checkpoint.load_config(checkpoint_dir)
  if run.hjb.enabled and config.models.face_embedder is None:
    raise ValueError(f'the HJB face correction needs the face embedder, which {checkpoint_dir} lacks: convert '
                     'the release with sa-convert --face-embedder glintr100_torch.pth')
  return config


def check_model(params: Mapping[str, Any], config: CheckpointConfig, run: Any) -> None:
  """The parameters fit the config and hold what the run needs."""
  check_params(params, config.models, program_folder(run))
  if run.hjb.enabled and 'face_embedder' not in params:
    raise ValueError('the HJB face correction needs the face embedder: convert the release with '
                     'sa-convert --face-embedder glintr100_torch.pth')


def _on_device(params: Mapping[str, Any], dtype: str, shardings: Mapping[str, Any] | None) -> dict[str, Any]:
  """Params in the compute dtype, on their shardings when given (a no-op for arrays already there)."""
  cast = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, _dtype(dtype)), tree)
  return {n: jax.device_put(cast(t), None if shardings is None else shardings[n]) for n, t in params.items()}


def animate(params: Mapping[str, Any], config: CheckpointConfig, inputs: Inputs, run: Any,
            progress: Callable[[int], None] | None = None, noise: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Animates one case: `(frames [F, H, W, 3] uint8, decoded [F, H, W, 3] float32, final latents
  [F, h, w, 4])`; `noise` `[T, h, w, 4]` replaces the seed's initial noise."""
  check_model(params, config, run)
  request = load_request(inputs, run, config.models.face_encoder.id_embeddings_dim)
  animator = animator_for(config, run, request.poses.shape[0])
  frames, decoded, latents, _ = animator.run(
      _on_device({n: params[n] for n in animator.needs}, run.sampler.dtype, None),
      pipeline.Request.stack([request]), [run.io.seed], None if noise is None else np.asarray(noise)[None],
      progress)
  return frames[0], decoded[0], latents[0]


def read_cases(cases: Sequence[Inputs], run: Any, embedding_dim: int
               ) -> tuple[dict[int, pipeline.Request], dict[int, Exception]]:
  """Every case's inputs read and checked (`load_request`): `(requests, failures)` by case index."""
  requests, failures = {}, {}
  for index, inputs in enumerate(cases):
    try:
      requests[index] = load_request(inputs, run, embedding_dim)
    except (OSError, ValueError) as err:
      failures[index] = err
  return requests, failures


def output_bytes(request: pipeline.Request) -> int:
  """A lower bound of the bytes `write_outputs` writes for one video (its GIF alone holds about a
  byte per pixel and frame)."""
  return int(np.prod(request.poses.shape[:3]))


def animate_cases(params: Mapping[str, Any], config: CheckpointConfig, cases: Sequence[Inputs], run: Any,
                  mesh: Mesh | None = None, progress: Callable[[int], None] | None = None
                  ) -> Iterator[tuple[int, np.ndarray | Exception]]:
  """Animates many cases (`read_cases`, then `animate_requests`); a case whose inputs fail yields
  its exception first."""
  check_model(params, config, run)
  check_run(run)
  requests, failures = read_cases(cases, run, config.models.face_encoder.id_embeddings_dim)
  yield from failures.items()
  yield from animate_requests(params, config, requests, run, mesh, progress)


def animate_requests(params: Mapping[str, Any], config: CheckpointConfig, requests: Mapping[int, pipeline.Request],
                     run: Any, mesh: Mesh | None = None, progress: Callable[[int], None] | None = None
                     ) -> Iterator[tuple[int, np.ndarray | Exception]]:
  """Animates read cases (`read_cases`), `run.io.batch_size` of one size per compiled call.

  Yields `(case index, frames [F, H, W, 3] uint8 or the exception)` as each batch finishes; a
  batch that fails yields its exception for each of its cases and the others go on. Params are
  placed on the mesh's shardings (when there is one) unless they already are.
  """
  check_model(params, config, run)
  batch_size = run.io.batch_size
  groups: dict[tuple, list[int]] = {}
  for index, request in requests.items():
    groups.setdefault(tuple(np.shape(x) for x in request), []).append(index)
  on_device = None
  for shape, indices in groups.items():
    animator = animator_for(config, run, shape[2][0], mesh)
    if on_device is None:
      on_device = _on_device({n: params[n] for n in animator.needs}, run.sampler.dtype, animator.param_shardings())
    for start in range(0, len(indices), batch_size):
      outputs.check_interrupted()
      chunk = indices[start:start + batch_size]
      padded = chunk + [chunk[-1]] * (batch_size - len(chunk))        # one program for every batch
      batch = pipeline.Request.stack([requests[i] for i in padded])
      try:
        result = animator.run(on_device, batch, [run.io.seed] * batch_size, progress=progress)
      except (ValueError, RuntimeError) as err:
        for index in chunk:
          yield index, err
        continue
      finite = np.isfinite(np.asarray(result.decoded)).reshape(batch_size, -1).all(axis=1)
      for row, index in enumerate(chunk):
        yield index, result.frames[row] if finite[row] else ValueError(
            'the run produced NaN or infinite values (no video written): check the checkpoint and the '
            'face embedding')


def output_targets(out: str | os.PathLike) -> list[Path]:
  """What `write_outputs` writes for `OUT.mp4`: the video, `OUT.gif` and `OUT_frames/`."""
  out = Path(out)
  if out.suffix.lower() != '.mp4':
    raise ValueError(f'--out must end in .mp4, got {out}')
  return [out, out.with_suffix('.gif'), out.parent / f'{out.stem}_frames']


_FRAME_FILE = re.compile(r'frame_\d+\.png')
TOOL = 'sa-animate'
MP4_COMMENT = f'written by {TOOL} ({outputs.SIGNATURE})'
_MP4_TAIL_BYTES = 1 << 22   # the moov box of even a long clip (its sample tables) fits


def _is_output(target: Path) -> bool:
  """Whether an existing output path is one `write_outputs` wrote: an .mp4 or .gif file carrying
  its comment, or a `_frames/` folder of `frame_<i>.png` files only, each signed as sa-animate's (the
  pose frames sa-prep and sa-make-dataset write carry sa-jax's signature without that name)."""
  if target.is_symlink():
    return False
  if target.suffix.lower() == '.mp4':
    return target.is_file() and _has_mp4_comment(target)
  if target.suffix.lower() == '.gif':
    try:
      with Image.open(target) as image:
        return image.format == 'GIF' and image.info.get('comment') == outputs.SIGNATURE.encode()
    except (OSError, ValueError):
      return False
  return target.is_dir() and all(p.is_file() and _FRAME_FILE.fullmatch(p.name) and frame_io.is_signed(p, TOOL)
                                 for p in target.iterdir())


def _has_mp4_comment(path: Path) -> bool:
  """Whether the MP4's metadata (in its `moov` box, which ffmpeg writes at the end) holds our comment."""
  with open(path, 'rb') as f:
    f.seek(max(0, path.stat().st_size - _MP4_TAIL_BYTES))
    return MP4_COMMENT.encode() in f.read()


def check_outputs(outs: Sequence[str | os.PathLike], overwrite: bool,
                  inputs: Sequence[str | os.PathLike | None] = ()) -> None:
  """Before any work: every output name is valid; an existing one is replaced only with `overwrite`
  and only if it is what `write_outputs` writes; none is or holds an input."""
  existing = [str(t) for out in outs for t in output_targets(out) if os.path.lexists(t)]
  if existing and not overwrite:
    raise FileExistsError(f'outputs exist: {", ".join(existing)}; pass --overwrite to replace them')
  for out in outs:
    for target in output_targets(out):
      outputs.check_target(target, overwrite=overwrite, ours=_is_output, inputs=inputs,
                           what='an sa-animate output (a video file, or a folder of frame_<i>.png only)')


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int) -> None:
  """Writes frames `[F, H, W, 3]` uint8 to `path` as H.264 MP4 (yuv420p, which browsers play),
  carrying sa-animate's comment."""
  _, h, w, _ = frames.shape
  writer = imageio_ffmpeg.write_frames(str(path), (w, h), fps=fps, codec='libx264', pix_fmt_out='yuv420p',
                                       macro_block_size=1, output_params=['-metadata', f'comment={MP4_COMMENT}'])
  with warnings.catch_warnings():
    # ffmpeg is started with fork+exec, which is safe; JAX warns about any fork.
    warnings.filterwarnings('ignore', message='os.fork', category=RuntimeWarning)
    writer.send(None)
  for frame in frames:
    writer.send(np.ascontiguousarray(frame))
  writer.close()


def write_outputs(frames: np.ndarray, out: str | os.PathLike, fps: int, overwrite: bool = False,
                  inputs: Sequence[str | os.PathLike | None] = ()) -> list[Path]:
  """Writes `OUT.mp4` (H.264), `OUT.gif` and `OUT_frames/frame_<i>.png`, each renamed into place
  (an existing one, checked by `check_outputs`, is removed only after its replacement is there)."""
  out = Path(out)
  targets = output_targets(out)
  check_outputs([out], overwrite, inputs)
  out.parent.mkdir(parents=True, exist_ok=True)
  for target in targets[1:]:
    outputs.remove_stale(target)
  staging = outputs.staging_path(out)
  staging.mkdir()
  try:
    write_video(staging / out.name, frames, fps)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(staging / targets[1].name, save_all=True, append_images=images[1:],
                   duration=round(1000 / fps), loop=0, comment=outputs.SIGNATURE)
    (staging / targets[2].name).mkdir()
    for i, frame in enumerate(frames):
      frame_io.save_rgb(staging / targets[2].name / f'frame_{i}.png', frame, writer=TOOL)
    check_outputs([out], overwrite, inputs)
    outputs.commit([(staging / target.name, target) for target in targets])
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return targets


def load_model_for(checkpoint_dir: str | os.PathLike | None, run: Any, mesh: Mesh | None = None
                   ) -> tuple[dict[str, Any], CheckpointConfig]:
  """The parameters a run needs (the face embedder only for HJB), read once in the run's dtype and,
  with a mesh, straight into their shardings; the bundled demo model without `checkpoint_dir`."""
  names = pipeline.NEEDS + (('face_embedder',) if run.hjb.enabled else ())
  checkpoint_dir = model_folder(checkpoint_dir)
  config = check_checkpoint(checkpoint_dir, run)
  shardings = None
  if mesh is not None:
    shardings = pipeline.param_shardings(config.models, names, mesh, sharding.rules_from_config(run.mesh.rules))
  params, config = checkpoint.load(checkpoint_dir, names, shardings, _dtype(run.sampler.dtype))
  check_finite(params, checkpoint_dir)
  return params, config


def check_finite(params: Mapping[str, Any], source: Any) -> None:
  """Refuses parameters holding NaN or infinite values, naming the tensors.

  Checked on the host, shard by shard (each process its own shards): no program is compiled, so
  the check costs one read of the weights and never a sharded reduction.
  """
  def finite(x):
    shards = [s.data for s in x.addressable_shards] if isinstance(x, jax.Array) else [x]
    return all(np.isfinite(np.asarray(shard)).all() for shard in shards)

  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  bad = [jax.tree_util.keystr(path) for path, x in leaves if not finite(x)]
  if bad:
    raise ValueError(f'checkpoint {source}: {len(bad)} parameter tensors hold NaN or infinite values: '
                     f'{", ".join(bad[:5])}{" ..." if len(bad) > 5 else ""}')

