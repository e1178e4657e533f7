"""`sa-animate`: read a reference photo, poses and masks, animate them, write MP4, GIF and PNGs.

The input folder layout is the one `sa-prep` writes (`reference.png`, `poses/`, `faces/`,
`reference_face_mask.png`, `face_embedding.npy`); each part can also be given on its own.
Everything is validated before any compilation starts, and outputs are written next to their
final names and renamed into place at the end: a failed run leaves nothing half-written.
"""

import dataclasses
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import imageio_ffmpeg
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from PIL import Image

from sa_jax import checkpoint
from sa_jax.models import clip, face_encoder, iresnet, pose_net, random_init, unet, vae
from sa_jax.prep import frames as frame_io
from sa_jax.sampling import hjb, pipeline, sampler, schedule

logger = logging.getLogger(__name__)

SAMPLE_DIR = Path(__file__).resolve().parent / 'assets' / 'sample'
RESOLUTION_MULTIPLE = 64
DEMO_SEED = 0
ABSTRACT_PARAMS = {'unet': unet.abstract_params, 'vae': vae.abstract_params,
                   'image_encoder': clip.abstract_params, 'pose_net': pose_net.abstract_params,
                   'face_encoder': face_encoder.abstract_params, 'face_embedder': iresnet.abstract_params}


@dataclasses.dataclass(frozen=True)
class Inputs:
  """Input files. `folder` (an sa-prep output) supplies whatever is not given explicitly."""
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
        self, reference=pick(self.reference, 'reference.png'), poses=pick(self.poses, 'poses'),
        face_masks=pick(self.face_masks, 'faces'),
        reference_face_mask=pick(self.reference_face_mask, 'reference_face_mask.png'),
        face_embedding=pick(self.face_embedding, 'face_embedding.npy'))


@dataclasses.dataclass(frozen=True)
class Options:
  """Generation settings (defaults: the release scripts, SPEC §4.6).

  `width`/`height` of None take the reference photo's size. `hjb` turns the face correction on.
  """
  width: int | None = 512
  height: int | None = 512
  steps: int = 25
  min_guidance: float = 3.0
  max_guidance: float = 3.0
  tile_size: int = 16
  tile_overlap: int = 4
  fps: int = 7
  motion_bucket_id: float = 127.0
  noise_aug_strength: float = 0.02
  decode_chunk_size: int = 4
  seed: int = 23123134
  hjb: bool = False
  hjb_start: int = 0
  hjb_end: int = 20
  hjb_iterations: int = 3
  hjb_eta: float = 0.1
  unet_batch_size: int | None = None
  query_chunk_size: int | None = None
  dtype: str = 'float32'


def _read_mask(path: Path) -> np.ndarray:
  if not path.is_file():
    raise FileNotFoundError(f'mask not found: {path}')
  try:
    with Image.open(path) as image:
      return np.array(image.convert('L'))
  except OSError as err:
    raise ValueError(f'cannot read mask {path}: {err}') from err


def _resize(image: np.ndarray, width: int, height: int, resample: int) -> np.ndarray:
  if image.shape[:2] == (height, width):
    return image
  return np.array(Image.fromarray(image).resize((width, height), resample))


def _face_embedding(inputs: Inputs, reference: np.ndarray, dim: int) -> np.ndarray:
  if inputs.face_embedding is not None:
    path = Path(inputs.face_embedding)
    if not path.is_file():
      raise FileNotFoundError(f'face embedding not found: {path}')
    try:
      embedding = np.load(path, allow_pickle=False)
    except ValueError as err:
      raise ValueError(f'{path}: not a numpy .npy array ({err})') from err
    embedding = np.asarray(embedding, np.float32).reshape(-1)
    if embedding.shape != (dim,):
      raise ValueError(f'{path}: face embedding has {embedding.size} values, the face encoder needs {dim}')
    return embedding
  if inputs.insightface_root is not None:
    from sa_jax.prep import faces
    _, embedding = faces.reference_faces(faces.load_face_analysis(inputs.insightface_root), reference)
    return embedding
  raise ValueError('no face embedding: give --face-embedding FILE.npy (sa-prep writes one) or '
                   '--insightface-root DIR (antelopev2 models)')


def load_request(inputs: Inputs, options: Options, embedding_dim: int) -> tuple[pipeline.Request, Options]:
  """Reads and checks every input file; returns the request and the options with the size resolved."""
  inputs = inputs.resolved()
  if inputs.reference is None or inputs.poses is None:
    raise ValueError('need a reference image and a pose folder (--reference and --poses, or --input)')
  reference = frame_io.load_rgb(inputs.reference)
  width = options.width or reference.shape[1]
  height = options.height or reference.shape[0]
  if width % RESOLUTION_MULTIPLE or height % RESOLUTION_MULTIPLE:
    raise ValueError(f'resolution {width}x{height} is not a multiple of {RESOLUTION_MULTIPLE} '
                     '(the VAE and UNet halve it six times); e.g. 512x512 or 576x1024')
  pose_files = frame_io.list_images(inputs.poses)
  poses = np.stack([_resize(frame_io.load_rgb(p), width, height, Image.BICUBIC) for p in pose_files])
  n = len(pose_files)
  boxes = np.zeros((n, 4), np.int32)
  reference_box = np.zeros((4,), np.int32)
  if options.hjb:
    if inputs.face_masks is None or inputs.reference_face_mask is None:
      raise ValueError('the HJB face correction needs per-frame face masks (--face-masks) and the '
                       'reference face mask (--reference-face-mask)')
    mask_files = frame_io.list_images(inputs.face_masks)
    if len(mask_files) != n:
      raise ValueError(f'{len(mask_files)} face masks in {inputs.face_masks} but {n} poses in '
                       f'{inputs.poses}: need one mask per pose frame')
    for i, path in enumerate(mask_files):
      mask = _read_mask(path)
      if mask.shape != (height, width):
        raise ValueError(f'face mask {path} is {mask.shape[1]}x{mask.shape[0]}; masks must be at the '
                         f'generation size {width}x{height} (sa-prep --width/--height)')
      boxes[i] = hjb.face_box(mask, str(path))
    mask = _read_mask(Path(inputs.reference_face_mask))
    if mask.shape != reference.shape[:2]:
      raise ValueError(f'reference face mask {inputs.reference_face_mask} is {mask.shape[1]}x{mask.shape[0]}, '
                       f'the reference image {reference.shape[1]}x{reference.shape[0]}: they must match')
    reference_box = hjb.face_box(mask, str(inputs.reference_face_mask))
  tile = options.tile_size
  if n < tile:
    logger.info('%d pose frames < tile size %d: using one tile of %d frames', n, tile, n)
    tile = n
  request = pipeline.Request(
      reference=reference, reference_resized=_resize(reference, width, height, Image.LANCZOS),
      poses=poses, face_embedding=_face_embedding(inputs, reference, embedding_dim),
      face_boxes=boxes, reference_face_box=reference_box)
  return request, dataclasses.replace(options, width=width, height=height, tile_size=tile)


def check_params(params: Mapping[str, Any], configs: pipeline.ModelConfigs) -> None:
  """Every network's parameter shapes fit its config; lists every mismatch."""
  problems = []
  for name, tree in params.items():
    want = traverse_util.flatten_dict(nn.unbox(ABSTRACT_PARAMS[name](getattr(configs, name))), sep='/')
    have = traverse_util.flatten_dict(tree, sep='/')
    for path in sorted(set(want) | set(have)):
      shape_w = tuple(want[path].shape) if path in want else None
      shape_h = tuple(np.shape(have[path])) if path in have else None
      if shape_w != shape_h:
        problems.append(f'{name}/{path}: checkpoint {shape_h}, config {shape_w}')
  if problems:
    raise ValueError(f'checkpoint parameters do not fit its config ({len(problems)}):\n  '
                     + '\n  '.join(problems[:50]))


def demo_model() -> tuple[dict[str, Any], dict[str, Any]]:
  """The bundled demo model: the tiny config with seeded random weights (not a trained model)."""
  from configs import svd_xt
  sections = svd_xt.get_config('tiny').to_dict()
  configs = pipeline.ModelConfigs.from_dict(sections)
  params = {name: random_init.random_params(ABSTRACT_PARAMS[name](getattr(configs, name)), DEMO_SEED + i)
            for i, name in enumerate(ABSTRACT_PARAMS)}
  config = dict(models=sections, scheduler={}, image_mean=list(clip.CLIP_MEAN),
                image_std=list(clip.CLIP_STD), dtype='float32', source='demo: tiny config, random weights')
  return params, config


def _dtype(name: str) -> Any:
  return {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}[name]


def make_sampler_config(options: Options, scheduler: Mapping[str, Any]) -> sampler.SamplerConfig:
  """The sampler settings of `options` (tile overlap kept below the tile size) and a scheduler config."""
  hjb_config = None
  if options.hjb:
    hjb_config = sampler.HJBConfig(options.hjb_start, options.hjb_end, options.hjb_iterations, options.hjb_eta)
  return sampler.SamplerConfig(
      num_steps=options.steps, min_guidance=options.min_guidance, max_guidance=options.max_guidance,
      tile_size=options.tile_size, tile_overlap=min(options.tile_overlap, options.tile_size - 1),
      decode_chunk_size=options.decode_chunk_size, hjb=hjb_config,
      unet_batch_size=options.unet_batch_size, scheduler=schedule.ScheduleConfig.from_dict(scheduler))


def animate(params: Mapping[str, Any], config: Mapping[str, Any], inputs: Inputs, options: Options,
            progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, Options]:
  """Runs the whole pipeline; returns `[N, H, W, 3]` uint8 frames and the resolved options."""
  configs = pipeline.ModelConfigs.from_dict(config['models'])
  configs.check()
  check_params(params, configs)
  request, options = load_request(inputs, options, configs.face_encoder.id_embeddings_dim)
  if options.hjb and 'face_embedder' not in params:
    raise ValueError('the HJB face correction needs the face embedder: convert the release with '
                     'sa-convert --face-embedder glintr100_torch.pth')
  sampler_config = make_sampler_config(options, config.get('scheduler', {}))
  conditioning = pipeline.ConditioningConfig(
      fps=options.fps, motion_bucket_id=options.motion_bucket_id,
      noise_aug_strength=options.noise_aug_strength,
      image_mean=tuple(config.get('image_mean', clip.CLIP_MEAN)),
      image_std=tuple(config.get('image_std', clip.CLIP_STD)))
  dtype = _dtype(options.dtype)
  params = jax.tree.map(lambda x: jnp.asarray(x, dtype), dict(params))
  animator = pipeline.Animator(configs, sampler_config, conditioning, dtype, options.query_chunk_size, progress)
  frames = animator.run(params, request, jax.random.key(options.seed))
  return frames, options


def write_outputs(frames: np.ndarray, out: str | os.PathLike, fps: int, overwrite: bool = False) -> list[Path]:
  """Writes `OUT.mp4` (H.264), `OUT.gif` and `OUT_frames/frame_<i>.png`, each renamed into place."""
  out = Path(out)
  if out.suffix.lower() != '.mp4':
    raise ValueError(f'--out must end in .mp4, got {out}')
  targets = [out, out.with_suffix('.gif'), out.parent / f'{out.stem}_frames']
  existing = [str(t) for t in targets if t.exists()]
  if existing and not overwrite:
    raise FileExistsError(f'outputs exist: {", ".join(existing)}; pass --overwrite to replace them')
  out.parent.mkdir(parents=True, exist_ok=True)
  staging = Path(tempfile.mkdtemp(prefix=f'.{out.stem}.partial-', dir=out.parent))
  try:
    n, h, w, _ = frames.shape
    writer = imageio_ffmpeg.write_frames(str(staging / out.name), (w, h), fps=fps, codec='libx264',
                                         pix_fmt_out='yuv420p', macro_block_size=1)
    with warnings.catch_warnings():
      # ffmpeg is started with fork+exec, which is safe; JAX warns about any fork.
      warnings.filterwarnings('ignore', message='os.fork', category=RuntimeWarning)
      writer.send(None)
    for frame in frames:
      writer.send(np.ascontiguousarray(frame))
    writer.close()
    images = [Image.fromarray(f) for f in frames]
    images[0].save(staging / targets[1].name, save_all=True, append_images=images[1:],
                   duration=round(1000 / fps), loop=0)
    (staging / targets[2].name).mkdir()
    for i, image in enumerate(images):
      image.save(staging / targets[2].name / f'frame_{i}.png')
    for target in targets:
      if target.is_dir():
        shutil.rmtree(target)
      elif target.exists():
        target.unlink()
      os.replace(staging / target.name, target)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return targets


def load_model(checkpoint_dir: str | os.PathLike | None, need_face_embedder: bool
               ) -> tuple[dict[str, Any], dict[str, Any]]:
  """A converted checkpoint, or the demo model when `checkpoint_dir` is None."""
  if checkpoint_dir is None:
    return demo_model()
  config = checkpoint.load_config(checkpoint_dir)
  names = [n for n in config['models'] if n != 'face_embedder' or need_face_embedder]
  params, config = checkpoint.load(checkpoint_dir, tuple(names))
  return params, config

