"""The whole StableAnimator release -> one sa-jax checkpoint (SPEC §1.3).

Release layout (paths can also be given one by one):

    checkpoints/
      SVD/stable-video-diffusion-img2vid-xt/   diffusers folder: unet/config.json, vae/, image_encoder/,
                                                scheduler/, feature_extractor/
      Animation/pose_net.pth, face_encoder.pth, unet.pth, glintr100_torch.pth (HJB face embedder)

The UNet, VAE and CLIP configs come from the diffusers folder; PoseNet, FusionFaceId and the
IResNet have no config file in the release, so theirs are read off the shapes of their weights.
`export_release` writes trained params back as the release's three `.pth` files (`TRAINED_FILES`),
with an `export.json` manifest by which a later export recognises them as its own.
"""

import dataclasses
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from convert import clip as convert_clip
from convert import face_encoder as convert_face_encoder
from convert import iresnet as convert_iresnet
from convert import pose_net as convert_pose_net
from convert import state_dict as sd
from convert import unet as convert_unet
from convert import vae as convert_vae
from sa_jax import diffusion, errors, outputs
from sa_jax.checkpoint import CheckpointConfig
from sa_jax.models.stable_animator import BY_NAME, NETWORKS, ModelConfigs

logger = logging.getLogger(__name__)

FACE_HEAD_DIM = 64  # FusionFaceId's perceiver head width (its constructor default; not in the weights)


class Converter(NamedTuple):
  """How one network's release weights are read and written back.

  load: `(path, config, dtype) -> params` (strict: every tensor checked).
  export: `(params, dtype) -> state dict` with the release's names and layouts.
  """
  load: Callable[..., dict[str, Any]]
  export: Callable[..., dict[str, np.ndarray]]


CONVERTERS: Mapping[str, Converter] = {
    'unet': Converter(convert_unet.load_unet, convert_unet.export_unet),
    'vae': Converter(convert_vae.load_vae, convert_vae.export_vae),
    'image_encoder': Converter(convert_clip.load_image_encoder, convert_clip.export_image_encoder),
    'pose_net': Converter(convert_pose_net.load_pose_net, convert_pose_net.export_pose_net),
    'face_encoder': Converter(convert_face_encoder.load_face_encoder, convert_face_encoder.export_face_encoder),
    'face_embedder': Converter(convert_iresnet.load_face_embedder, convert_iresnet.export_face_embedder),
}
if set(CONVERTERS) != set(BY_NAME):
  raise ImportError(f'convert.release.CONVERTERS {sorted(CONVERTERS)} must cover the networks of '
                    f'sa_jax.models.stable_animator.NETWORKS {sorted(BY_NAME)}')

# The networks StableAnimator fine-tunes -> their file in the release's `Animation/` folder.
TRAINED_FILES: Mapping[str, str] = {n.name: f'{n.name}.pth' for n in NETWORKS if n.trained}
EXPORT_DTYPES = ('float32', 'float16', 'bfloat16')
MANIFEST = 'export.json'  # beside an export: its files' sizes and sha256, to recognise them
EXPORT_FORMAT = 'sa-jax export 1'
_HASH_CHUNK = 1 << 24


@dataclasses.dataclass(frozen=True)
class ReleasePaths:
  """Where each part of the release is.

  Attributes:
    unet_config: the diffusers `unet/` folder (only its `config.json` is read).
    vae: the diffusers `vae/` folder.
    image_encoder: the transformers `image_encoder/` folder.
    unet: the StableAnimator `unet.pth`.
    pose_net: `pose_net.pth`.
    face_encoder: `face_encoder.pth`.
    face_embedder: the IResNet `.pth` for the HJB face correction, or None to leave it out.
    scheduler: folder with `scheduler_config.json`, or None for the SVD defaults.
    feature_extractor: folder with `preprocessor_config.json`, or None for the CLIP defaults.
  """
  unet_config: Path
  vae: Path
  image_encoder: Path
  unet: Path
  pose_net: Path
  face_encoder: Path
  face_embedder: Path | None = None
  scheduler: Path | None = None
  feature_extractor: Path | None = None

  @classmethod
  def from_svd(cls, svd: str | os.PathLike, animation: str | os.PathLike,
               face_embedder: str | os.PathLike | None = None) -> 'ReleasePaths':
    """An SVD diffusers folder plus the folder of the StableAnimator `.pth` files."""
    svd, animation = Path(svd), Path(animation)
    optional = lambda p: p if p.exists() else None
    return cls(unet_config=svd / 'unet', vae=svd / 'vae', image_encoder=svd / 'image_encoder',
               **{name: animation / file for name, file in TRAINED_FILES.items()},
               face_embedder=Path(face_embedder) if face_embedder else optional(animation / 'glintr100_torch.pth'),
               scheduler=optional(svd / 'scheduler'), feature_extractor=optional(svd / 'feature_extractor'))

  @classmethod
  def from_checkpoints_dir(cls, root: str | os.PathLike,
                           face_embedder: str | os.PathLike | None = None) -> 'ReleasePaths':
    """Finds the parts in a release `checkpoints/` folder (see the module docstring)."""
    root = Path(root)
    candidates = [root / 'SVD' / 'stable-video-diffusion-img2vid-xt', root / 'SVD',
                  root / 'stable-video-diffusion-img2vid-xt']
    svd = next((p for p in candidates if (p / 'unet' / 'config.json').is_file()), None)
    if svd is None:
      raise FileNotFoundError('no SVD diffusers folder (with unet/config.json) at any of: '
                              + ', '.join(map(str, candidates)))
    return cls.from_svd(svd, root / 'Animation', face_embedder)

  def check(self) -> None:
    """Before any conversion: every part exists (FileNotFoundError listing each missing one), each
    weights file is readable and not empty, and each JSON config parses (errors name the file)."""
    wanted = {'UNet config': self.unet_config / 'config.json', 'VAE': self.vae,
              'image encoder': self.image_encoder, 'unet.pth': self.unet, 'pose_net.pth': self.pose_net,
              'face_encoder.pth': self.face_encoder, 'face embedder': self.face_embedder}
    missing = [f'{name}: {path}' for name, path in wanted.items()
               if path is not None and not Path(path).exists()]
    if missing:
      raise FileNotFoundError('release files not found: ' + '; '.join(missing))
    for path in self.weight_files():
      if not os.access(path, os.R_OK):
        raise PermissionError(f'weights file {path} is not readable')
      if os.path.getsize(path) == 0:
        raise ValueError(f'weights file {path} is empty; expected a state dict')
    for path, what in ((self.unet_config / 'config.json', 'UNet config'), (self.vae / 'config.json', 'VAE config'),
                       (self.image_encoder / 'config.json', 'image encoder config')):
      if not isinstance(sd.read_json(path, what), dict):
        raise ValueError(f'{path}: the {what} must be a JSON object')
    self.schedule()
    self.normalization()

  def schedule(self) -> diffusion.ScheduleConfig:
    """The sampler's sigma range from `scheduler/scheduler_config.json` (the SVD defaults without it)."""
    if self.scheduler is None:
      return diffusion.ScheduleConfig()
    path = self.scheduler / 'scheduler_config.json'
    try:
      return diffusion.ScheduleConfig.from_dict(sd.read_json(path, 'scheduler config'))
    except (TypeError, KeyError, AttributeError) as err:     # not an object, or fields of the wrong type
      raise ValueError(f'{path}: not a diffusers scheduler config ({type(err).__name__}: {errors.first_line(err)})'
                       ) from err
    except ValueError as err:
      raise ValueError(f'{path}: {errors.first_line(err)}') from err

  def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """CLIP's `(mean, std)` from `feature_extractor/preprocessor_config.json` (CLIP's own without it)."""
    try:
      return convert_clip.read_normalization(self.feature_extractor)
    except (TypeError, AttributeError) as err:
      raise ValueError(f'{self.feature_extractor}/preprocessor_config.json: image_mean and image_std must be '
                       f'lists of numbers ({type(err).__name__}: {errors.first_line(err)})') from err

  def weight_files(self) -> list[Path]:
    """The weights files the conversion reads (the VAE's and CLIP's found in their folders)."""
    files = [Path(sd.find_weights(self.vae, 'diffusion_pytorch_model')) if self.vae.is_dir() else self.vae,
             Path(sd.find_weights(self.image_encoder, 'model')) if self.image_encoder.is_dir()
             else self.image_encoder]
    return files + [p for p in (self.unet, self.pose_net, self.face_encoder, self.face_embedder) if p is not None]


def _require(tensors: Mapping[str, np.ndarray], keys: tuple[str, ...], source: Path, what: str) -> None:
  missing = [k for k in keys if k not in tensors]
  if missing:
    raise sd.CheckpointMismatchError(f'{source} is not a {what} state dict: it lacks {missing} '
                                     f'(it has {len(tensors)} tensors, e.g. {sorted(tensors)[:3]})')


def pose_net_config(tensors: Mapping[str, np.ndarray]) -> dict[str, Any]:
  return dict(noise_latent_channels=int(tensors['final_proj.weight'].shape[0]))


def face_encoder_config(tensors: Mapping[str, np.ndarray]) -> dict[str, Any]:
  dim = int(tensors['norm.weight'].shape[0])
  depth = len({m.group(1) for k in tensors if (m := re.match(r'fusion_model\.layers\.(\d+)\.', k))})
  inner = int(tensors['fusion_model.layers.0.0.to_q.weight'].shape[0])
  return dict(cross_attention_dim=dim, id_embeddings_dim=int(tensors['proj.0.weight'].shape[1]),
              clip_embeddings_dim=int(tensors['fusion_model.proj_in.weight'].shape[1]),
              num_tokens=int(tensors['proj.2.weight'].shape[0]) // dim, perceiver_depth=depth,
              dim_head=FACE_HEAD_DIM, heads=inner // FACE_HEAD_DIM,
              ff_mult=int(tensors['fusion_model.layers.0.1.1.weight'].shape[0]) // dim)


def face_embedder_config(tensors: Mapping[str, np.ndarray]) -> dict[str, Any]:
  layers = [len({m.group(1) for k in tensors if (m := re.match(rf'layer{i}\.(\d+)\.', k))})
            for i in range(1, 5)]
  return dict(layers=layers, num_features=int(tensors['fc.weight'].shape[0]))


def _sections(paths: ReleasePaths) -> dict[str, dict[str, Any]]:
  """Each network's config section: from the diffusers/transformers JSON, or read off the weights."""
  sections = dict(unet=dict(sd.read_json(paths.unet_config / 'config.json', 'UNet config'), num_face_tokens=4),
                  vae=sd.read_json(paths.vae / 'config.json', 'VAE config'),
                  image_encoder=sd.read_json(paths.image_encoder / 'config.json', 'image encoder config'))
  tensors = sd.load_state_dict(paths.pose_net)
  _require(tensors, ('final_proj.weight',), paths.pose_net, 'PoseNet')
  sections['pose_net'] = pose_net_config(tensors)
  tensors = sd.load_state_dict(paths.face_encoder)
  _require(tensors, ('norm.weight', 'proj.0.weight', 'proj.2.weight', 'fusion_model.proj_in.weight',
                     'fusion_model.layers.0.0.to_q.weight', 'fusion_model.layers.0.1.1.weight'),
           paths.face_encoder, 'FusionFaceId')
  sections['face_encoder'] = face_encoder_config(tensors)
  if paths.face_embedder is not None:
    tensors = sd.load_state_dict(paths.face_embedder)
    _require(tensors, ('fc.weight', 'layer1.0.conv1.weight'), paths.face_embedder, 'IResNet')
    sections['face_embedder'] = face_embedder_config(tensors)
  return sections


def convert_release(paths: ReleasePaths, dtype: Any = np.float32,
                    progress: Callable[[str], None] | None = None) -> tuple[dict[str, Any], CheckpointConfig]:
  """Reads and converts every network of the release, strictly.

  Args:
    paths: where the release files are.
    dtype: dtype of the produced parameters (numpy float32 or ml_dtypes bfloat16).
    progress: called with the name of each network once it is converted.
  Returns:
    `(params, config)` ready for `sa_jax.checkpoint.save`.
  """
  paths.check()
  try:
    models = ModelConfigs.from_dict(_sections(paths))
  except (TypeError, KeyError, AttributeError) as err:
    raise ValueError(f'the model configs of {paths.unet_config.parent} do not fit the networks '
                     f'({type(err).__name__}: {errors.first_line(err)})') from err
  files = dict(unet=paths.unet, vae=paths.vae, image_encoder=paths.image_encoder, pose_net=paths.pose_net,
               face_encoder=paths.face_encoder, face_embedder=paths.face_embedder)
  params: dict[str, Any] = {}
  for name in models.names:
    params[name] = CONVERTERS[name].load(files[name], getattr(models, name), dtype)
    (progress or (lambda _: None))(name)
  mean, std = paths.normalization()
  config = CheckpointConfig(
      models=models, scheduler=paths.schedule(), image_mean=tuple(mean),
      image_std=tuple(std), dtype=np.dtype(dtype).name,
      source={k: str(v) for k, v in dataclasses.asdict(paths).items() if v is not None})
  return params, config


def _to_torch(torch: Any, array: np.ndarray) -> Any:
  """numpy -> torch tensor sharing its memory; bfloat16 goes through its 16-bit pattern."""
  if array.dtype.name == 'bfloat16':  # torch.from_numpy knows no ml_dtypes.bfloat16
    return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
  return torch.from_numpy(array)


def _sha256(path: Path) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    while chunk := f.read(_HASH_CHUNK):
      digest.update(chunk)
  return digest.hexdigest()


def _read_manifest(out_dir: Path) -> dict[str, Any] | None:
  """The `MANIFEST` of `out_dir`, or None where it is absent or not one `export_release` writes."""
  path = out_dir / MANIFEST
  if path.is_symlink() or not path.is_file():
    return None
  try:
    manifest = json.loads(path.read_text())
  except (OSError, ValueError):
    return None
  if not isinstance(manifest, dict) or manifest.get('format') != EXPORT_FORMAT:
    return None
  return manifest if isinstance(manifest.get('files'), dict) else None


def _is_exported(path: Path, manifest: Mapping[str, Any] | None) -> bool:
  """Whether `path` is unmodified output of an earlier export: a plain file the manifest lists with
  its size and sha256 (the size is compared first, so a file of another size is not hashed)."""
  entry = manifest['files'].get(path.name) if manifest is not None else None
  if not isinstance(entry, dict) or path.is_symlink() or not path.is_file():
    return False
  return entry.get('bytes') == path.stat().st_size and entry.get('sha256') == _sha256(path)


def _export_targets(out_dir: Path) -> list[Path]:
  """What an export writes into `out_dir`: the `TRAINED_FILES`, then the `MANIFEST`."""
  return [out_dir / file for file in (*TRAINED_FILES.values(), MANIFEST)]


def _check_export_folder(out_dir: Path, inputs: Iterable[str | os.PathLike | None]) -> None:
  """Refuses an `out_dir` that is or holds an input, or that exists but is not a folder."""
  outputs.check_not_input(out_dir, inputs)    # the folder itself is never replaced
  if os.path.lexists(out_dir) and not out_dir.is_dir():
    raise FileExistsError(f'export folder {out_dir} exists and is not a folder; expected a folder for '
                          + ', '.join(TRAINED_FILES.values()))


def check_export_target(out_dir: str | os.PathLike, overwrite: bool,
                        inputs: Iterable[str | os.PathLike | None] = ()) -> None:
  """Refuses, before any work, an export into `out_dir` that could lose data (one-line FileExistsError).

  Refused: an `out_dir` that is not a folder or that is or holds one of `inputs` (it may lie inside
  one, e.g. `runs/tiny/release` of the workdir `runs/tiny`); any existing `TRAINED_FILES` or
  `MANIFEST` without `overwrite`; with it, a `MANIFEST` that is not ours and a `.pth` that the
  manifest does not list with its size and sha256 (not unmodified output of an earlier export:
  e.g. the original release). What a killed earlier export left is cleaned up first
  (`outputs.remove_stale`: a file it had moved aside comes back), so the check sees the real files.

  Args:
    out_dir: the export folder (absent: fine).
    overwrite: the user's `--overwrite`.
    inputs: the run's input paths (None entries are skipped).
  """
  out_dir = Path(out_dir)
  inputs = list(inputs)
  _check_export_folder(out_dir, inputs)
  targets = _export_targets(out_dir)
  for target in targets:
    outputs.remove_stale(target)
  existing = [str(t) for t in targets if os.path.lexists(t)]
  if existing and not overwrite:
    raise FileExistsError(f'{", ".join(existing)} exist; pass --overwrite to replace them')
  manifest = _read_manifest(out_dir)
  if manifest is None and os.path.lexists(out_dir / MANIFEST):
    raise FileExistsError(f'{out_dir / MANIFEST} exists and is not an sa-jax export manifest '
                          f'(format {EXPORT_FORMAT!r}); refusing to replace it')
  for target in targets[:-1]:
    if os.path.lexists(target) and not _is_exported(target, manifest):
      raise FileExistsError(f'{target} exists and is not an sa-jax export (no {MANIFEST} entry matching '
                            'it); refusing to replace it')


def _write_pth(torch: Any, tensors: Mapping[str, np.ndarray], path: Path) -> None:
  with open(path, 'xb') as f:
    torch.save({key: _to_torch(torch, value) for key, value in tensors.items()}, f)


def _write_manifest(files: Mapping[str, Path], path: Path, dtype: Any, source: str | None) -> None:
  """Writes the `MANIFEST` listing each release file name with the size and sha256 of `files[name]`."""
  entries = {name: {'sha256': _sha256(file), 'bytes': file.stat().st_size} for name, file in files.items()}
  manifest = {'format': EXPORT_FORMAT, 'files': entries, 'dtype': np.dtype(dtype).name, 'source': source}
  with open(path, 'x') as f:
    f.write(json.dumps(manifest, indent=2) + '\n')


def export_release(params: Mapping[str, Any], out_dir: str | os.PathLike, *, overwrite: bool = False,
                   dtype: Any = np.float32, inputs: Iterable[str | os.PathLike | None] = (),
                   source: str | None = None) -> list[Path]:
  """Writes the trained networks back as the release's `unet.pth`, `pose_net.pth`, `face_encoder.pth`.

  Each file is a `torch.save`d state dict with the release's names and layouts, so `convert_release`
  (and StableAnimator itself) reads it back strictly. Beside them goes `MANIFEST` (`export.json`:
  each file's size and sha256), by which a later `overwrite` export recognises them as its own
  (`check_export_target`, run before any work and again before the commit). Everything is staged
  under hidden `outputs.staging_path` names and renamed into place only once all is complete
  (`outputs.commit`), the manifest last: a present manifest only ever lists files already in place,
  and as it vouches by hash it can never make a foreign file look ours. A crash in the middle of
  the commit leaves new `.pth` files the old manifest does not match, so the next export refuses
  them rather than guess; on any failure before it, the folder is as it was (no partial file left).
  Multi-host callers must pass fully addressable (e.g. replicated) arrays.

  Args:
    params: network name -> Flax param tree (numpy or jax arrays); must hold every `TRAINED_FILES`
      network, others are ignored.
    out_dir: folder to write into (created if needed).
    overwrite: replace files of an earlier export (default: refuse any existing file).
    dtype: tensor dtype of the files: float32, float16 or bfloat16 (numpy / ml_dtypes).
    inputs: the run's input paths: `out_dir` may not be or hold one.
    source: where `params` come from, recorded in the manifest.
  Returns:
    The written `.pth` paths, in `TRAINED_FILES` order.
  Raises:
    FileExistsError: as `check_export_target`.
  """
  try:
    import torch
  except ImportError as e:
    raise ImportError(f'writing .pth files to {out_dir} needs PyTorch: pip install "sa-jax[torch]"') from e
  missing = [name for name in TRAINED_FILES if name not in params]
  if missing:
    raise ValueError(f'params lack {missing}; export needs {list(TRAINED_FILES)}, got {sorted(params)}')
  if np.dtype(dtype).name not in EXPORT_DTYPES:
    raise ValueError(f'export dtype {np.dtype(dtype).name!r} is not one of {EXPORT_DTYPES}')
  out_dir, inputs = Path(out_dir), list(inputs)
  check_export_target(out_dir, overwrite, inputs)
  out_dir.mkdir(parents=True, exist_ok=True)
  staged: dict[Path, Path] = {}  # target -> its staged file
  try:
    for name, file in TRAINED_FILES.items():
      target = out_dir / file
      staged[target] = outputs.staging_path(target)
      tensors = CONVERTERS[name].export(jax.device_get(params[name]), dtype)
      _write_pth(torch, tensors, staged[target])
      logger.info('exported %s (%d tensors)', target, len(tensors))
    files = {target.name: path for target, path in staged.items()}
    staged[out_dir / MANIFEST] = outputs.staging_path(out_dir / MANIFEST)
    _write_manifest(files, staged[out_dir / MANIFEST], dtype, source)
    check_export_target(out_dir, overwrite, inputs)
    outputs.commit([(s, t) for t, s in staged.items()])
  finally:
    for path in staged.values():
      path.unlink(missing_ok=True)
  return [out_dir / file for file in TRAINED_FILES.values()]
