"""The request handler of `sa-web`: one uploaded case in, one video out, free of any web framework.

A request is a reference photo and either a driving video (the `sa-prep` steps run on it, with the
pose and face models the server was started with) or a zip of poses: an `sa-prep` folder (its
`poses/`, and `faces/`, `reference_face_mask.png`, `face_embedding.npy` where present) or a folder
of pose frames. Its options are fields of `configs/animate.py` (`OPTIONS`), checked by
`animate.check_run`; its files are read and checked by `animate.load_request`, as `sa-animate` does.

Files: the caller gives each request a folder of its own and removes it after the response.
`handle` copies the uploads into it (refusing any upload that is not a file inside the server's
upload folder), extracts the zip there (refusing entries that are absolute, climb out with `..` or
are links: zip-slip) and opens nothing else. The model is loaded once (`load_model`); the compiled
programs are `animate.animator_for`'s, so a second request of the same size does not recompile.
"""

import copy
import dataclasses
import logging
import os
import shutil
import stat
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from sa_jax import animate, errors
from sa_jax.checkpoint import CheckpointConfig
from sa_jax.prep import frames as frame_io
from sa_jax.prep import model_files
from sa_jax.prep import pipeline as prep

logger = logging.getLogger(__name__)

# Request option -> the run setting it sets (configs/animate.py).
OPTIONS = {'width': 'io.width', 'height': 'io.height', 'num_frames': 'io.num_frames', 'seed': 'io.seed',
           'steps': 'sampler.num_steps', 'guidance': 'sampler.guidance', 'tile_size': 'sampler.tile_size',
           'tile_overlap': 'sampler.tile_overlap', 'hjb': 'hjb.enabled'}
UPLOADS = ('reference', 'poses', 'video')   # each upload is copied into the request's folder/<kind>/
MAX_ZIP_BYTES = 2 << 30         # what a pose zip may unpack to
MAX_ZIP_ENTRIES = 100_000
IGNORED_ZIP_ENTRIES = ('__MACOSX/',)   # resource forks macOS adds to the zips it makes
NO_PREP = ('this server was started without --dwpose-dir and --insightface-root, so only pre-made pose '
           'folders work: upload a zip of an sa-prep folder or of pose frames instead of a video')
# progress(done, total, stage): `done` of `total` units of the stage `stage` are finished.
Progress = Callable[[int, int, str], None]


@dataclasses.dataclass(frozen=True)
class Model:
  """What a server holds for its lifetime.

  Attributes:
    params: network name -> parameters (the face embedder too when the checkpoint has one).
    config: the checkpoint config.
    run: the run settings requests start from (`configs/animate.py`).
    dwpose_dir: the DWPose models for driving videos, or None.
    insightface_root: the antelopev2 models (face embeddings of videos and pose-frame zips), or None.
    demo: whether this is the bundled demo model (no checkpoint given).
  """
  params: Mapping[str, Any]
  config: CheckpointConfig
  run: Any
  dwpose_dir: Path | None = None
  insightface_root: Path | None = None
  demo: bool = False

  @property
  def can_prepare(self) -> bool:
    """Whether driving videos can be turned into poses (`sa-prep`'s models are there)."""
    return self.dwpose_dir is not None and self.insightface_root is not None


@dataclasses.dataclass(frozen=True)
class Result:
  """A request's outputs, inside its folder.

  Attributes:
    video: the animation, H.264 MP4.
    skeletons: the pose frames as the model saw them (at the generation size), H.264 MP4.
    frames, width, height: the videos' frame count and size.
  """
  video: Path
  skeletons: Path
  frames: int
  width: int
  height: int


def load_model(checkpoint_dir: str | os.PathLike | None, run: Any, dwpose_dir: str | os.PathLike | None = None,
               insightface_root: str | os.PathLike | None = None) -> Model:
  """Checks the settings and model files, then reads the parameters once (the demo model without
  `checkpoint_dir`); the face embedder is read whenever the checkpoint has one, so that any request
  may ask for HJB."""
  animate.check_run(run)
  if dwpose_dir is not None:
    model_files.dwpose_files(dwpose_dir)
  if insightface_root is not None:
    model_files.antelopev2_dir(insightface_root)
  run = copy.deepcopy(run)
  run.hjb.enabled = False
  config = animate.check_checkpoint(checkpoint_dir, run)
  run.hjb.enabled = config.models.face_embedder is not None
  params, config = animate.load_model_for(checkpoint_dir, run)
  run.hjb.enabled = False
  return Model(params, config, run, None if dwpose_dir is None else Path(dwpose_dir),
               None if insightface_root is None else Path(insightface_root), demo=checkpoint_dir is None)


def request_run(base: Any, options: Mapping[str, Any]) -> Any:
  """The run settings of a request: `base` with `options` (names of `OPTIONS`) applied, checked."""
  run = copy.deepcopy(base)
  for name, value in options.items():
    if name not in OPTIONS:
      raise ValueError(f'unknown option {name!r}; expected one of {", ".join(OPTIONS)}')
    section, key = OPTIONS[name].split('.')
    run[section][key] = _like(run[section][key], value, name)
  animate.check_run(run)
  return run


def _like(current: Any, value: Any, name: str) -> Any:
  """`value` as the type of the setting `current` (web forms send numbers as floats)."""
  if isinstance(current, bool):
    return bool(value)
  try:
    number = float(value)
  except (TypeError, ValueError):
    raise ValueError(f'{name} is {value!r}; expected a number') from None
  if isinstance(current, int):
    if not number.is_integer():
      raise ValueError(f'{name} is {value}; expected a whole number')
    return int(number)
  return number


def handle(model: Model, folder: str | os.PathLike, reference: str | os.PathLike, *,
           poses_zip: str | os.PathLike | None = None, video: str | os.PathLike | None = None,
           options: Mapping[str, Any] | None = None, uploads: str | os.PathLike | None = None,
           progress: Progress | None = None) -> Result:
  """Animates one request, writing only inside `folder` (an existing, empty folder of its own).

  Args:
    model: the server's model (`load_model`).
    folder: the request's folder; the caller removes it after the response.
    reference: the uploaded reference photo.
    poses_zip, video: exactly one: a zip of poses, or a driving video (needs `model.can_prepare`).
    options: request options (`OPTIONS`), over `model.run`.
    uploads: the folder every upload must lie in (the web server's upload folder), or None.
    progress: called as the stages advance (`Progress`); the denoising steps one by one.
  Returns:
    the videos, in `folder/out/`.
  Raises:
    ValueError: one line naming the bad input (paths shown relative to `folder`).
  """
  folder = Path(folder)
  report = progress or (lambda done, total, stage: None)
  try:
    return _handle(model, folder, reference, poses_zip, video, options or {}, uploads, report)
  except (OSError, ValueError, RuntimeError) as err:
    message = errors.one_line(err)
    for prefix in [folder / kind for kind in UPLOADS] + [folder]:     # an upload by its own name
      message = message.replace(f'{prefix}{os.sep}', '')
    raise ValueError(message.replace(str(folder), '.')) from err


def _handle(model: Model, folder: Path, reference: Any, poses_zip: Any, video: Any, options: Mapping[str, Any],
            uploads: Any, report: Progress) -> Result:
  run = request_run(model.run, options)
  if (poses_zip is None) == (video is None):
    raise ValueError('give a driving video or a zip of poses' if poses_zip is None else
                     'give either a driving video or a zip of poses, not both')
  if reference is None:
    raise ValueError('no reference photo: upload one')
  report(0, 1, 'reading the inputs')
  reference = copy_upload(reference, folder, 'reference', uploads)
  if poses_zip is not None:
    case = case_from_zip(extract_zip(copy_upload(poses_zip, folder, 'poses', uploads), folder / 'zip'),
                         reference, model.insightface_root)
  else:
    if not model.can_prepare:
      raise ValueError(NO_PREP)
    video = copy_upload(video, folder, 'video', uploads)
    report(0, 1, 'finding the poses in the video (sa-prep)')
    case = _prepare(model, reference, video, folder / 'case', run)
  request = animate.load_request(case, run, model.config.models.face_encoder.id_embeddings_dim)
  steps = run.sampler.num_steps
  report(0, steps, 'denoising (the first request of a size compiles first)')
  _, frames = next(animate.animate_requests(
      model.params, model.config, {0: request}, run, progress=lambda step: report(step + 1, steps, 'denoising')))
  if isinstance(frames, Exception):
    raise frames
  report(0, 1, 'writing the video')
  out = folder / 'out'
  out.mkdir()
  fps = run.conditioning.fps
  animate.write_video(out / 'animation.mp4', frames, fps)
  animate.write_video(out / 'skeletons.mp4', request.poses, fps)
  report(1, 1, 'done')
  f, h, w, _ = frames.shape
  logger.info('request: %d frames at %dx%d, %d steps', f, w, h, steps)
  return Result(out / 'animation.mp4', out / 'skeletons.mp4', f, w, h)


def copy_upload(path: str | os.PathLike, folder: Path, kind: str, uploads: str | os.PathLike | None) -> Path:
  """Copies an uploaded file into `folder/kind/` under its own name, refusing a path that is not a
  regular file inside `uploads` (when given) once links are resolved."""
  path = Path(path)
  resolved = path.resolve()
  inside = uploads is None or resolved.is_relative_to(Path(uploads).resolve())
  if not inside or not resolved.is_file():
    raise ValueError(f'{kind} {path.name}: not an uploaded file')
  (folder / kind).mkdir()
  target = folder / kind / (path.name if path.name not in ('', '.', '..') else kind)
  shutil.copyfile(resolved, target)
  return target


def extract_zip(path: Path, out: Path) -> Path:
  """Unpacks the zip `path` into the new folder `out` and returns `out`.

  Every entry is checked before anything is written: absolute names, `..` parts, drive letters,
  links and special files are refused (zip-slip), and so is more than `MAX_ZIP_BYTES` or
  `MAX_ZIP_ENTRIES` (counted again while writing, as sizes in the header can lie).
  """
  try:
    archive = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError, ValueError) as err:
    raise ValueError(f'{path.name}: not a zip file ({errors.first_line(err)})') from err
  with archive:
    entries = [info for info in archive.infolist() if not info.filename.startswith(IGNORED_ZIP_ENTRIES)]
    if len(entries) > MAX_ZIP_ENTRIES:
      raise ValueError(f'{path.name} holds {len(entries)} entries; at most {MAX_ZIP_ENTRIES} are accepted')
    for info in entries:
      _check_entry(info, path.name)
    if sum(info.file_size for info in entries) > MAX_ZIP_BYTES:
      raise ValueError(f'{path.name} unpacks to more than {MAX_ZIP_BYTES >> 20} MiB')
    out.mkdir()
    written = 0
    for info in entries:
      target = out.joinpath(*PurePosixPath(info.filename).parts)
      if info.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        continue
      target.parent.mkdir(parents=True, exist_ok=True)
      try:
        with archive.open(info) as source, open(target, 'xb') as sink:
          while chunk := source.read(1 << 20):
            written += len(chunk)
            if written > MAX_ZIP_BYTES:
              raise ValueError(f'{path.name} unpacks to more than {MAX_ZIP_BYTES >> 20} MiB')
            sink.write(chunk)
      except (zipfile.BadZipFile, RuntimeError, EOFError) as err:   # bad CRC, encrypted, truncated
        raise ValueError(f'{path.name}: cannot unpack {info.filename} ({errors.first_line(err)})') from err
      except FileExistsError as err:
        raise ValueError(f'{path.name} holds {info.filename} twice') from err
  return out


def _check_entry(info: zipfile.ZipInfo, zip_name: str) -> None:
  """Refuses a zip entry that would be written outside the folder it is unpacked into, or is not
  a plain file or folder."""
  name = info.filename
  parts = PurePosixPath(name.replace('\\', '/')).parts
  if name.startswith(('/', '\\')) or (parts and parts[0].endswith(':')) or '..' in parts or not parts:
    raise ValueError(f'{zip_name}: entry {name!r} points outside the zip\'s folder; refused')
  kind = stat.S_IFMT(info.external_attr >> 16)
  if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
    raise ValueError(f'{zip_name}: entry {name!r} is a link or special file; only files and folders are '
                     'accepted')


def case_from_zip(root: Path, reference: Path, insightface_root: Path | None) -> animate.Inputs:
  """The case an unpacked pose zip holds, with the uploaded reference photo: an sa-prep folder
  (with `poses/`) or a folder of pose frames, at the top or inside the zip's one folder."""
  while True:
    entries = list(root.iterdir())
    if len(entries) != 1 or not entries[0].is_dir() or entries[0].name == 'poses':
      break
    root = entries[0]
  if (root / 'poses').is_dir():
    case = animate.Inputs(folder=root, reference=reference, insightface_root=insightface_root).resolved()
  elif any(p.is_file() and p.suffix.lower() in frame_io.IMAGE_SUFFIXES for p in entries):
    case = animate.Inputs(reference=reference, poses=root, insightface_root=insightface_root)
  else:
    found = ', '.join(sorted(p.name + '/' * p.is_dir() for p in entries)[:5]) or 'nothing'
    raise ValueError(f'the zip holds neither an sa-prep folder (with poses/) nor pose frames '
                     f'({", ".join(frame_io.IMAGE_SUFFIXES)} images); found {found}')
  if case.face_embedding is None and insightface_root is None:
    raise ValueError('the zip has no face_embedding.npy and this server was started without '
                     '--insightface-root to compute one: zip an sa-prep folder (it holds face_embedding.npy)')
  return case


def _prepare(model: Model, reference: Path, video: Path, out: Path, run: Any) -> animate.Inputs:
  """Runs the sa-prep steps on a driving video at the generation size."""
  width, height = animate.generation_size(run, frame_io.load_rgb(reference))
  config = prep.PrepConfig(width=width, height=height, max_frames=run.io.num_frames or None)
  prep.prepare(out, reference=reference, video=video, dwpose_dir=model.dwpose_dir,
               insightface_root=model.insightface_root, config=config)
  return animate.Inputs(folder=out)


def sample_zip(out: Path) -> Path:
  """A zip of the bundled sample (`animate.SAMPLE_DIR`, an sa-prep folder) at `out`."""
  with zipfile.ZipFile(out, 'w') as archive:
    for path in sorted(animate.SAMPLE_DIR.rglob('*')):
      if path.is_file() and path.name != 'README.md':
        archive.write(path, path.relative_to(animate.SAMPLE_DIR).as_posix())
  return out

