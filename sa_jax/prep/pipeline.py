"""`sa-prep`: driving frames, skeletons, face masks and the reference face embedding, one folder (SPEC §6).

Output layout (read by `sa-animate`; `sa-train` reads images/poses/faces):

  OUT/reference.png             the reference photo, RGB (EXIF orientation applied)
  OUT/reference_face_mask.png   single-channel 0/255 face box(es) of the reference, at its size (HJB)
  OUT/face_embedding.npy        float32 [512] raw ArcFace embedding of the largest reference face
  OUT/images/frame_<i>.png      the driving frames, RGB, at their own size, i = 0..N-1
  OUT/poses/frame_<i>.png       skeletons: aligned at the reference size, unaligned at the frame size
  OUT/faces/frame_<i>.png       single-channel 0/255 face masks at the generation size W x H
  OUT/keypoints.json            detected (unaligned) keypoints, face boxes, sizes and the alignment
  OUT/face_embeddings.npy       float32 [N, 512] (training data only) each frame's face embedding as the
                                training loader computes it for a reference frame (SPEC §5): the frame
                                resized to W x H (cv2 bilinear), largest face; zeros without a face

The three reference files are absent when no reference is given (training data, `align=False`);
`face_embeddings.npy` is written only then.
OUT is built in a hidden sibling folder and renamed into place only when everything succeeded.
"""

import dataclasses
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tqdm import tqdm

from sa_jax import outputs
from sa_jax.prep import faces, frames, keypoints, model_files, skeleton, staging
from sa_jax.prep.align import Alignment, check_reference, fit_alignment
from sa_jax.prep.dwpose import PoseEstimator, default_providers
from sa_jax.prep.keypoints import Pose

logger = logging.getLogger(__name__)

FORMAT = 'sa-prep keypoints 1'
KEYPOINTS_FILE = 'keypoints.json'
ENTRIES = frozenset({'reference.png', 'reference_face_mask.png', 'face_embedding.npy', 'face_embeddings.npy',
                     'images', 'poses', 'faces', KEYPOINTS_FILE})   # what `prepare` writes
_FRAME_FILE = re.compile(r'frame_\d+\.png')
LAYOUT = {name: [part.start, part.stop] for name, part in keypoints.PARTS}


@dataclasses.dataclass(frozen=True)
class PrepConfig:
  """Options of `prepare`.

  Attributes:
    width, height: generation resolution W x H (the face masks' size).
    align: align the driving skeletons to the reference body (inference); False for training data.
    aspect_correct: correct the alignment's x scale for differing aspect ratios (`align` module).
    stride: keep every `stride`-th source frame.
    max_frames: keep at most this many frames (None: all).
    whole_image_fallback: with no person box, run the pose model on the whole frame (reference tools).
    overwrite: replace a non-empty output folder.
  """
  width: int = 512
  height: int = 512
  align: bool = True
  aspect_correct: bool = False
  stride: int = 1
  max_frames: int | None = None
  whole_image_fallback: bool = False
  overwrite: bool = False


class Plan(NamedTuple):
  """A checked `prepare` run (`check_prepare`): inputs opened, models found, the output replaceable."""
  out: Path
  reference: Path | None
  reference_image: np.ndarray | None
  source: frames.FrameStream
  detector: Path
  pose_model: Path
  insightface_root: Path
  inputs: list[Any]
  config: PrepConfig


def check_prepare(out: str | os.PathLike, *, reference: str | os.PathLike | None = None,
                  video: str | os.PathLike | None = None, frame_dir: str | os.PathLike | None = None,
                  dwpose_dir: str | os.PathLike | None = model_files.DWPOSE_DIR,
                  detector: str | os.PathLike | None = None, pose_model: str | os.PathLike | None = None,
                  insightface_root: str | os.PathLike = '.', config: PrepConfig = PrepConfig()) -> Plan:
  """Every check of `prepare` before any model is loaded: the options, the model files, the output
  folder (replaceable, writable, room for the frames), the reference photo (read) and the driving
  source (opened; a video's header read). Close `plan.source` if the plan is not run.

  Args: as `prepare`.
  """
  if config.width <= 0 or config.height <= 0:
    raise ValueError(f'generation size {config.width}x{config.height} must be positive')
  if config.align and reference is None:
    raise ValueError('aligning the skeletons needs a reference image (give one, or --no-align)')
  if not config.align and config.aspect_correct:
    raise ValueError('--aspect-correct corrects the alignment; it does nothing with --no-align')
  detector_path, pose_path = model_files.dwpose_files(dwpose_dir, detector, pose_model)
  model_files.antelopev2_dir(insightface_root)
  inputs = [reference, video, frame_dir, dwpose_dir, detector, pose_model, insightface_root]
  staging.check_target(out, config.overwrite, is_prep_folder, inputs)
  reference_image = frames.load_rgb(reference) if reference is not None else None
  source = frames.iter_frames(video, frame_dir, config.stride, config.max_frames)   # checks stride, max_frames
  try:
    count = 1
    if frame_dir is not None:
      files = frames.list_images(frame_dir)[::config.stride][:config.max_frames]
      for path in files:
        frames.check_image(path)
      count = len(files)
    # A lower bound of the output: the face masks alone hold a byte per pixel (PNG-compressed ~10x).
    outputs.check_space(Path(out).parent, count * config.width * config.height // 10, 'the prepared frames')
  except BaseException:
    source.close()
    raise
  return Plan(Path(out), None if reference is None else Path(reference), reference_image, source, detector_path,
              pose_path, Path(insightface_root), inputs, config)


def prepare(out: str | os.PathLike, *, reference: str | os.PathLike | None = None,
            video: str | os.PathLike | None = None, frame_dir: str | os.PathLike | None = None,
            dwpose_dir: str | os.PathLike | None = model_files.DWPOSE_DIR,
            detector: str | os.PathLike | None = None, pose_model: str | os.PathLike | None = None,
            insightface_root: str | os.PathLike = '.', config: PrepConfig = PrepConfig(),
            providers: Sequence[str] | None = None) -> Path:
  """Builds the `sa-animate` input folder `out` (layout in the module docstring).

  Args:
    out: output folder (created; must be absent or empty unless `config.overwrite`).
    reference: the reference photo (required when `config.align`).
    video, frame_dir: exactly one driving source, a video file or a folder of images.
    dwpose_dir: folder with yolox_l.onnx and dw-ll_ucoco_384.onnx.
    detector, pose_model: explicit model files (override `dwpose_dir`).
    insightface_root: ROOT holding models/antelopev2/*.onnx.
    config: see `PrepConfig`.
    providers: onnxruntime providers (default: CUDA if available, then CPU).

  Returns:
    the output folder.
  """
  plan = check_prepare(out, reference=reference, video=video, frame_dir=frame_dir, dwpose_dir=dwpose_dir,
                       detector=detector, pose_model=pose_model, insightface_root=insightface_root, config=config)
  return run_plan(plan, providers)


def run_plan(plan: Plan, providers: Sequence[str] | None = None) -> Path:
  """Runs a checked `prepare` (`check_prepare`): loads the models and writes `plan.out`."""
  config, out, reference_image = plan.config, plan.out, plan.reference_image
  try:
    providers = list(providers) if providers else default_providers()
    estimator = PoseEstimator(plan.detector, plan.pose_model, providers, config.whole_image_fallback)
    app = faces.load_face_analysis(plan.insightface_root, providers)
    with staging.staged_dir(out, config.overwrite, is_prep_folder, plan.inputs) as folder:
      record: dict[str, Any] = {'format': FORMAT, 'layout': LAYOUT, 'coordinates': 'x / width, y / height',
                                'generation_size': {'width': config.width, 'height': config.height},
                                'reference': None, 'alignment': None}
      reference_pose = None
      if reference_image is not None:
        reference_pose, record['reference'] = _prepare_reference(folder, reference_image, estimator, app)
        record['reference']['source'] = plan.reference.name
        if config.align:
          check_reference(reference_pose)
      poses, record['frames'] = _prepare_frames(folder, plan.source, estimator, app, config,
                                                training=reference_image is None)
      alignment = None
      if config.align:
        alignment = fit_alignment(reference_pose, poses, config.aspect_correct)
        record['alignment'] = alignment.to_dict()
        logger.info('alignment a=%s b=%s from %d of %d frames', alignment.a, alignment.b,
                    len(alignment.frames), len(poses))
      _draw_skeletons(folder / 'poses', poses, alignment, reference_pose)
      (folder / KEYPOINTS_FILE).write_text(json.dumps(record))
  finally:
    plan.source.close()
  logger.info('wrote %d frames to %s', len(poses), out)
  return out


def read_keypoints(keypoints_file: str | os.PathLike, align: bool = True
                   ) -> tuple[list[Pose], Alignment | None, Pose | None]:
  """The records of a `keypoints.json` written by `prepare`: each frame's detected pose, and with
  `align` the stored alignment and reference pose (None where there is none or not `align`)."""
  path = Path(keypoints_file)
  if not path.is_file():
    raise FileNotFoundError(f'keypoints file not found: {path}')
  try:
    record = json.loads(path.read_text())
  except ValueError as err:      # JSONDecodeError, UnicodeDecodeError
    raise ValueError(f'{path}: not a keypoints.json of sa-prep (invalid JSON: {err})') from err
  if not isinstance(record, dict) or record.get('format') != FORMAT:
    found = record.get('format') if isinstance(record, dict) else type(record).__name__
    raise ValueError(f'{path} has format {found!r}, expected {FORMAT!r}')
  try:
    poses = [Pose.from_dict(entry) for entry in record['frames']]
    alignment = reference_pose = None
    if align and record.get('alignment') is not None:
      alignment = Alignment.from_dict(record['alignment'])
      reference_pose = Pose.from_dict(record['reference'])
  except (KeyError, TypeError, ValueError, IndexError) as err:
    raise ValueError(f'{path}: malformed keypoints record ({type(err).__name__}: {err})') from err
  return poses, alignment, reference_pose


def redraw(keypoints_file: str | os.PathLike, out: str | os.PathLike, *, align: bool = True,
           overwrite: bool = False) -> Path:
  """Draws the skeletons of a `keypoints.json` again into the folder `out` (`frame_<i>.png`), no models.

  Args:
    keypoints_file: a `keypoints.json` written by `prepare`.
    out: output folder (must be absent or empty unless `overwrite`).
    align: apply the stored alignment (at the reference size); False draws the detected keypoints at
      each frame's size.
    overwrite: replace a non-empty output folder.

  Returns:
    the output folder.
  """
  poses, alignment, reference_pose = read_keypoints(keypoints_file, align)
  if align and alignment is None:
    logger.warning('%s has no alignment: drawing the skeletons unaligned', keypoints_file)
  with staging.staged_dir(out, overwrite, is_pose_folder, [keypoints_file]) as folder:
    _draw_skeletons(folder, poses, alignment, reference_pose)
  return Path(out)


def is_prep_folder(folder: Path) -> bool:
  """Whether `folder` is recognisably a `prepare` output: its keypoints.json and nothing foreign."""
  try:
    record = json.loads((folder / KEYPOINTS_FILE).read_text())
  except (OSError, ValueError):
    return False
  if not isinstance(record, dict) or record.get('format') != FORMAT or {p.name for p in folder.iterdir()} - ENTRIES:
    return False
  return all(is_pose_folder(folder / name) for name in ('images', 'poses', 'faces') if (folder / name).exists())


def is_pose_folder(folder: Path) -> bool:
  """Whether `folder` holds only `frame_<i>.png` files that sa-prep wrote (signed, `frames.is_signed`):
  a `redraw` output, or a frame folder of a `prepare` output."""
  return folder.is_dir() and not folder.is_symlink() and all(
      p.is_file() and _FRAME_FILE.fullmatch(p.name) and frames.is_signed(p) for p in folder.iterdir())


def _prepare_reference(folder: Path, image: np.ndarray, estimator: PoseEstimator,
                       app: faces.FaceAnalysis) -> tuple[Pose, dict[str, Any]]:
  """Writes reference.png, reference_face_mask.png and face_embedding.npy; returns its keypoints."""
  height, width = image.shape[:2]
  frames.save_rgb(folder / 'reference.png', image)
  pose = estimator(image)
  if pose.num_people == 0:
    logger.warning('reference image: no person detected')
  boxes, embedding = faces.reference_faces(app, image)
  frames.save_mask(folder / 'reference_face_mask.png', faces.face_mask(boxes, (width, height)))
  np.save(folder / 'face_embedding.npy', embedding)
  return pose, {**pose.to_dict(), 'faces': boxes.tolist()}


def _prepare_frames(folder: Path, source: Iterator[frames.Frame], estimator: PoseEstimator,
                    app: faces.FaceAnalysis, config: PrepConfig, training: bool = False
                    ) -> tuple[list[Pose], list[dict[str, Any]]]:
  """Writes images/ and faces/ frame by frame (and face_embeddings.npy for `training` data);
  returns every frame's keypoints and JSON record."""
  (folder / 'images').mkdir()
  (folder / 'faces').mkdir()
  poses, records, embeddings = [], [], []
  without_face = without_embedding = 0
  for i, frame in enumerate(tqdm(source, desc='frames', unit='frame', disable=None)):
    height, width = frame.image.shape[:2]
    frames.save_rgb(folder / 'images' / f'frame_{i}.png', frame.image)
    pose = estimator(frame.image)
    if pose.num_people == 0:
      logger.warning('frame %d (%s): no person detected, its skeleton is empty', i, frame.source)
    boxes = faces.detect_faces(app, frame.image)
    without_face += len(boxes) == 0
    mask = faces.face_mask(boxes, (width, height), (config.width, config.height))
    frames.save_mask(folder / 'faces' / f'frame_{i}.png', mask)
    if training:
      embedding = faces.training_embedding(app, frame.image, (config.width, config.height))
      without_embedding += embedding is None
      embeddings.append(np.zeros(faces.EMBEDDING_DIM, np.float32) if embedding is None else embedding)
    poses.append(pose)
    records.append({'index': i, 'source': frame.source, **pose.to_dict(), 'faces': boxes.tolist()})
  if not poses:
    raise ValueError('the driving source gave no frames (check --stride and --max-frames)')
  if training:
    np.save(folder / 'face_embeddings.npy', np.stack(embeddings).astype(np.float32))
    if without_embedding:
      logger.warning('%d of %d frames have no face at %dx%d: their face embeddings are zeros',
                     without_embedding, len(poses), config.width, config.height)
  if without_face:
    logger.warning('%d of %d frames have no detected face: their masks cover the whole frame',
                   without_face, len(poses))
  return poses, records


def _draw_skeletons(folder: Path, poses: Sequence[Pose], alignment: Alignment | None,
                    reference: Pose | None) -> None:
  """poses/frame_<i>.png: aligned at the reference size, or unaligned at each frame's size."""
  folder.mkdir(exist_ok=True)
  for i, pose in enumerate(tqdm(poses, desc='skeletons', unit='frame', disable=None)):
    if alignment is not None:
      image = skeleton.draw_pose(alignment.apply(pose), reference.height, reference.width)
    else:
      image = skeleton.draw_pose(pose, pose.height, pose.width)
    frames.save_rgb(folder / f'frame_{i}.png', image)
