"""Procedural clips of an articulated character in the sa-prep training layout (for the demo model).

An *identity* is a body (proportions, skin, clothes) with a face pattern of its own (eye and mouth
colours, mouth width, hair, and a 6-bit code of marks on the face); a *motion* is a path across the
frame with joint angles that swing on their own sine waves; a clip renders one identity performing
one motion in front of a background of its own. Identities, motions and backgrounds are each drawn
from `np.random.default_rng([seed, kind, index])`, so a dataset is a function of its arguments.

The figure is drawn for the demo's autoencoder (a latent per 4x4 pixels): at 64x64 it fills most of
the frame's height, its limbs are 3 to 4 pixels wide, its head about 10 across, and the background is
a smooth gradient with at most two large shapes. With limbs of 2 pixels, busier backgrounds and a
latent per 8x8 pixels, the VAE trained in the same time kept the colours and lost the limbs
(docs/training.md).

Each clip is written as `sa-prep --no-align` writes training data: `images/`, `poses/` (the skeleton
of each frame drawn by `sa_jax.prep.skeleton`, the code sa-prep draws with, from the OpenPose-18 body
keypoints of the character), `faces/` (the head box as a mask, `sa_jax.prep.faces.face_mask`),
`keypoints.json` (sa-prep's format: `sa-prep draw` redraws `poses/`), and `face_embeddings.npy`
([L, 512] float32 unit rows: the faces embedded by a face embedder trained on the training clips'
identities, `write_dataset(face_embedder=...)`, or without one each identity's random unit vector
with a little per-frame noise). Evaluation clips are also sa-animate cases: their first frame is
`reference.png`, with `reference_face_mask.png` and its `face_embedding.npy`.

`write_dataset` splits identities and motions: training clips combine the first `identities` and
`motions`; evaluation clips combine held-out identities with held-out motions, so an evaluation
measures both unseen faces and unseen movement.
"""

import dataclasses
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
from tqdm import tqdm

from sa_jax import outputs
from sa_jax.data.clip_files import EMBEDDING_DIM, PER_FRAME, SINGLE
from sa_jax.prep import faces, frames, keypoints, pipeline, skeleton, staging

logger = logging.getLogger(__name__)

DATASET_FILE = 'dataset.json'
DATASET_FORMAT = 'sa-jax character dataset 1'
EMBEDDER_FILE = 'face_embedder.npz'    # the trained face embedder's parameters, '/'-joined paths
POSE_ESTIMATOR_FILE = 'pose_estimator.npz'   # the trained keypoint estimator's, likewise
_WHAT = 'an sa-make-dataset output folder (no dataset.json of sa-make-dataset, or other files in it)'
_IDENTITY, _MOTION, _BACKGROUND, _EMBEDDING, _PLAN = range(5)   # the kinds of draws (rng streams)
_SUPERSAMPLE = 4                # frames are drawn at 4x and downsampled (anti-aliased edges)
_CODE_BITS = 6                  # marks on the face, one identity's pattern among 64


@dataclasses.dataclass(frozen=True)
class Identity:
  """How one character looks: colours are RGB, sizes fractions of the frame height."""
  skin: tuple[int, int, int]
  shirt: tuple[int, int, int]
  trousers: tuple[int, int, int]
  hair: tuple[int, int, int]
  eyes: tuple[int, int, int]
  mouth: tuple[int, int, int]
  mouth_width: float            # fraction of the head radius
  code: tuple[int, ...]         # _CODE_BITS marks, 1 = drawn
  height: float                 # body height (head top to ankles)
  build: float                  # shoulder and hip width factor


@dataclasses.dataclass(frozen=True)
class Motion:
  """How one character moves: `angles[joint] = (mean, amplitude, cycles per frame, phase)` in radians
  from straight down (positive towards the image's right), elbows and knees relative to their parent."""
  start: float                  # hip x at the first frame, fraction of the width
  end: float                    # ... at the last frame
  bob: float                    # vertical bounce, fraction of the height
  angles: dict[str, tuple[float, float, float, float]]


def _colour(rng: np.random.Generator, low: int = 0, high: int = 256) -> tuple[int, int, int]:
  return tuple(int(c) for c in rng.integers(low, high, 3))


def make_identity(seed: int, index: int) -> Identity:
  rng = np.random.default_rng([seed, _IDENTITY, index])
  skin = tuple(int(c) for c in np.clip(np.array([205, 150, 110]) * rng.uniform(0.55, 1.2) + rng.integers(-15, 16, 3),
                                       0, 255))
  return Identity(skin=skin, shirt=_colour(rng), trousers=_colour(rng, 0, 200), hair=_colour(rng, 0, 160),
                  eyes=_colour(rng, 0, 200), mouth=_colour(rng, 80, 256), mouth_width=float(rng.uniform(0.3, 0.7)),
                  code=tuple(int(b) for b in rng.integers(0, 2, _CODE_BITS)), height=float(rng.uniform(0.82, 0.92)),
                  build=float(rng.uniform(0.8, 1.25)))


def make_motion(seed: int, index: int) -> Motion:
  rng = np.random.default_rng([seed, _MOTION, index])
  start, end = rng.uniform(0.38, 0.62, 2)
  angles = {}
  for side, sign in (('right', -1.0), ('left', 1.0)):
    angles[f'{side}_shoulder'] = (sign * rng.uniform(0.1, 0.8), rng.uniform(0.2, 1.3), rng.uniform(0.02, 0.08),
                                  rng.uniform(0, 2 * math.pi))
    angles[f'{side}_elbow'] = (sign * rng.uniform(0.0, 0.8), rng.uniform(0.0, 0.8), rng.uniform(0.02, 0.08),
                               rng.uniform(0, 2 * math.pi))
    angles[f'{side}_hip'] = (sign * rng.uniform(0.0, 0.25), rng.uniform(0.0, 0.5), rng.uniform(0.02, 0.06),
                             rng.uniform(0, 2 * math.pi))
    angles[f'{side}_knee'] = (-sign * rng.uniform(0.0, 0.3), rng.uniform(0.0, 0.5), rng.uniform(0.02, 0.06),
                              rng.uniform(0, 2 * math.pi))
  return Motion(start=float(start), end=float(end), bob=float(rng.uniform(0.0, 0.03)), angles=angles)


def _angle(motion: Motion, joint: str, frame: int) -> float:
  mean, amplitude, frequency, phase = motion.angles[joint]
  return mean + amplitude * math.sin(2 * math.pi * frequency * frame + phase)


def body_points(who: Identity, motion: Motion, frame: int, num_frames: int, width: int, height: int
                ) -> tuple[np.ndarray, np.ndarray, float]:
  """The OpenPose-18 body keypoints in pixels `[18, 2]` (x, y) at `frame`, the head's centre `[2]`
  and its radius."""
  unit = who.height * height
  t = frame / max(num_frames - 1, 1)
  # The figure spans 0.98 unit (head top 0.55 above the hip, ankles 0.4 below, feet 0.03): centred.
  hip = np.array([(motion.start + (motion.end - motion.start) * t) * width,
                  0.5 * height + 0.065 * unit + motion.bob * height * math.sin(0.5 * frame)])
  neck = hip - [0, 0.32 * unit]
  radius = 0.09 * unit
  head = neck - [0, 0.05 * unit + radius]

  def limb(origin, angle, length):
    return origin + length * np.array([math.sin(angle), math.cos(angle)])

  points = np.zeros((18, 2))
  points[1] = neck
  points[0] = head + [0, 0.2 * radius]                                   # nose
  for side, sign, shoulder_i, hip_i in (('right', -1, 2, 8), ('left', 1, 5, 11)):
    shoulder = neck + [sign * 0.1 * unit * who.build, 0.02 * unit]
    a = _angle(motion, f'{side}_shoulder', frame)
    elbow = limb(shoulder, a, 0.15 * unit)
    wrist = limb(elbow, a + _angle(motion, f'{side}_elbow', frame), 0.14 * unit)
    hip_joint = hip + [sign * 0.06 * unit * who.build, 0]
    b = _angle(motion, f'{side}_hip', frame)
    knee = limb(hip_joint, b, 0.2 * unit)
    ankle = limb(knee, b + _angle(motion, f'{side}_knee', frame), 0.2 * unit)
    points[shoulder_i:shoulder_i + 3] = shoulder, elbow, wrist
    points[hip_i:hip_i + 3] = hip_joint, knee, ankle
  points[14], points[15] = head + [-0.35 * radius, -0.15 * radius], head + [0.35 * radius, -0.15 * radius]  # eyes
  points[16], points[17] = head + [-0.95 * radius, 0], head + [0.95 * radius, 0]                          # ears
  return points, head, radius


def _background(seed: int, index: int, width: int, height: int) -> np.ndarray:
  """A vertical gradient between two colours with up to two large muted shapes, uint8 [H, W, 3]."""
  rng = np.random.default_rng([seed, _BACKGROUND, index])
  top, bottom = np.array(_colour(rng), np.float64), np.array(_colour(rng), np.float64)
  ramp = np.linspace(0, 1, height)[:, None, None]
  image = np.ascontiguousarray(np.broadcast_to(top * (1 - ramp) + bottom * ramp, (height, width, 3)).astype(np.uint8))
  for _ in range(int(rng.integers(0, 3))):
    colour = tuple(int(c) for c in (0.5 * np.array(_colour(rng)) + 0.5 * top))
    x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
    size = int(rng.integers(max(width, height) // 4, max(width, height) // 2 + 1))
    if rng.random() < 0.5:
      cv2.rectangle(image, (x, y), (x + size, y + size // 2), colour, cv2.FILLED)
    else:
      cv2.circle(image, (x, y), size // 2, colour, cv2.FILLED)
  return image


def render(who: Identity, points: np.ndarray, head: np.ndarray, radius: float, background: np.ndarray
           ) -> np.ndarray:
  """The character at `points`, `head`, `radius` (pixels, `body_points`) over `background`, uint8 [H, W, 3]."""
  height, width = background.shape[:2]
  s = _SUPERSAMPLE
  canvas = cv2.resize(background, (width * s, height * s), interpolation=cv2.INTER_NEAREST)
  p = lambda i: tuple(int(round(v * s)) for v in points[i])
  thick = lambda f: max(1, int(round(f * radius * s)))
  for hip_i in (8, 11):                                     # legs
    cv2.line(canvas, p(hip_i), p(hip_i + 1), who.trousers, thick(0.8))
    cv2.line(canvas, p(hip_i + 1), p(hip_i + 2), who.trousers, thick(0.7))
  torso = np.array([p(2), p(5), p(11), p(8)], np.int32)
  cv2.fillConvexPoly(canvas, torso, who.shirt)
  cv2.line(canvas, p(1), tuple((np.array(p(8)) + p(11)) // 2), who.shirt, thick(1.0))
  for shoulder_i in (2, 5):                                 # arms: sleeve, forearm, hand
    cv2.line(canvas, p(shoulder_i), p(shoulder_i + 1), who.shirt, thick(0.7))
    cv2.line(canvas, p(shoulder_i + 1), p(shoulder_i + 2), who.skin, thick(0.55))
    cv2.circle(canvas, p(shoulder_i + 2), thick(0.35), who.skin, cv2.FILLED)
  centre, r = tuple(int(round(v * s)) for v in head), int(round(radius * s))
  cv2.line(canvas, p(1), centre, who.skin, thick(0.5))     # neck
  cv2.circle(canvas, centre, r, who.skin, cv2.FILLED)
  cv2.ellipse(canvas, centre, (r, r), 0, 180, 360, who.hair, cv2.FILLED)       # hair: the top half
  cv2.ellipse(canvas, (centre[0], centre[1] - r // 8), (r, r // 3), 0, 0, 180, who.skin, cv2.FILLED)
  for eye in (14, 15):
    cv2.circle(canvas, p(eye), max(1, r // 5), who.eyes, cv2.FILLED)
  half = int(who.mouth_width * r)
  cv2.line(canvas, (centre[0] - half, centre[1] + r // 2), (centre[0] + half, centre[1] + r // 2), who.mouth,
           max(1, r // 6))
  for bit, on in enumerate(who.code):                       # the identity's marks, round the face
    if on:
      a = math.pi * (0.15 + 0.7 * bit / (_CODE_BITS - 1))
      mark = (int(centre[0] - 0.7 * r * math.cos(a)), int(centre[1] + 0.25 * r * math.sin(a) - 0.05 * r))
      cv2.circle(canvas, mark, max(1, r // 8), who.hair, cv2.FILLED)
  return cv2.resize(canvas, (width, height), interpolation=cv2.INTER_AREA)


def _pose(points: np.ndarray, width: int, height: int) -> keypoints.Pose:
  """One person with these body keypoints (score 1) and nothing else (score 0: not drawn)."""
  normalised = np.zeros((1, keypoints.NUM_KEYPOINTS, 2))
  scores = np.zeros((1, keypoints.NUM_KEYPOINTS))
  normalised[0, keypoints.BODY] = points / [width, height]
  scores[0, keypoints.BODY] = 1.0
  return keypoints.Pose(normalised, scores, width, height)


def write_clip(folder: str | os.PathLike, who: Identity, motion: Motion, background: np.ndarray, num_frames: int,
               source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One clip (the layout above, without its embeddings) of `num_frames` frames at the background's
  size into the new `folder`. Returns its frames uint8 `[F, H, W, 3]`, face masks uint8 `[F, H, W]`
  and body keypoints `[F, 18, 2]` as (x / W, y / H)."""
  folder = Path(folder)
  height, width = background.shape[:2]
  for kind in ('images', 'poses', 'faces'):
    (folder / kind).mkdir(parents=True)
  records, images, masks, body = [], [], [], []
  for i in range(num_frames):
    points, head, radius = body_points(who, motion, i, num_frames, width, height)
    pose = _pose(points, width, height)
    body.append(points / [width, height])
    box = np.array([[*(head - 1.1 * radius), *(head + 1.1 * radius), 1.0]])
    images.append(render(who, points, head, radius, background))
    masks.append(faces.face_mask(box, (width, height)))
    frames.save_rgb(folder / 'images' / f'frame_{i}.png', images[-1])
    frames.save_rgb(folder / 'poses' / f'frame_{i}.png', skeleton.draw_pose(pose, height, width))
    frames.save_mask(folder / 'faces' / f'frame_{i}.png', masks[-1])
    records.append({'index': i, 'source': f'{source} frame {i}', **pose.to_dict(), 'faces': box.tolist()})
  record = {'format': pipeline.FORMAT, 'layout': pipeline.LAYOUT, 'coordinates': 'x / width, y / height',
            'generation_size': {'width': width, 'height': height}, 'reference': None, 'alignment': None,
            'frames': records}
  (folder / pipeline.KEYPOINTS_FILE).write_text(json.dumps(record))
  return np.stack(images), np.stack(masks), np.stack(body)


def write_embeddings(folder: Path, embeddings: np.ndarray, reference: np.ndarray | None = None,
                     reference_mask: np.ndarray | None = None) -> None:
  """A clip's `face_embeddings.npy` (`[F, 512]`); with a reference, also the files of an sa-animate
  case: `reference.png`, `reference_face_mask.png` and its `face_embedding.npy` (row 0)."""
  np.save(folder / PER_FRAME, embeddings.astype(np.float32))
  if reference is not None:
    frames.save_rgb(folder / 'reference.png', reference)
    frames.save_mask(folder / 'reference_face_mask.png', reference_mask)
    np.save(folder / SINGLE, embeddings[0].astype(np.float32))


def identity_embedding(seed: int, index: int) -> np.ndarray:
  """The random face embedding of an identity (without a trained face embedder): a unit vector `[512]`."""
  vector = np.random.default_rng([seed, _EMBEDDING, index]).standard_normal(EMBEDDING_DIM)
  return vector / np.linalg.norm(vector)


def _random_embeddings(seed: int, clip: int, who: int, num_frames: int) -> np.ndarray:
  """`[F, 512]` unit rows: the identity's vector with a little noise per frame."""
  rng = np.random.default_rng([seed, _EMBEDDING, who, clip])
  rows = identity_embedding(seed, who) + 0.05 * rng.standard_normal((num_frames, EMBEDDING_DIM))
  return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def is_dataset_folder(folder: Path) -> bool:
  """Whether `folder` is recognisably a `write_dataset` output: its dataset.json and split folders."""
  try:
    record = json.loads((folder / DATASET_FILE).read_text())
  except (OSError, ValueError):
    return False
  return (isinstance(record, dict) and record.get('format') == DATASET_FORMAT
          and {p.name for p in folder.iterdir()} <= {DATASET_FILE, EMBEDDER_FILE, POSE_ESTIMATOR_FILE, 'train', 'eval'})


def check_dataset_target(root: str | os.PathLike, overwrite: bool = False) -> None:
  """Refuses an output that is a file, a non-empty folder without `overwrite`, or a non-empty folder
  that is not an earlier `write_dataset` output."""
  staging.check_target(root, overwrite, is_dataset_folder, what=_WHAT)


class PoseEstimator(Protocol):
  """What `write_dataset` trains on the training clips' frames and body keypoints, for the pose error
  of generated frames (`sa_jax.training.keypoint_net.Trainer`)."""

  def fit(self, frames: np.ndarray, points: np.ndarray) -> dict[str, np.ndarray]:
    """uint8 frames `[N, H, W, 3]`, keypoints `[N, 18, 2]` as (x / W, y / H) -> flat parameters."""


class FaceEmbedder(Protocol):
  """What `write_dataset` trains on the training clips' faces and embeds every clip's faces with
  (`sa_jax.training.face_embedder.Trainer`)."""

  def fit(self, frames: np.ndarray, masks: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """uint8 frames `[N, H, W, 3]`, face masks `[N, H, W]`, identity labels `[N]` -> flat parameters."""

  def embed(self, params: dict[str, np.ndarray], frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Unit embeddings `[N, 512]` of the faces in the masks' boxes."""


def write_dataset(root: str | os.PathLike, *, clips: int, eval_clips: int, identities: int, motions: int,
                  held_out_identities: int, held_out_motions: int, num_frames: int, width: int, height: int,
                  seed: int = 0, overwrite: bool = False, progress: bool = True,
                  face_embedder: FaceEmbedder | None = None, pose_estimator: PoseEstimator | None = None
                  ) -> dict[str, Any]:
  """Writes `root/train/<5-digit id>/` and `root/eval/<5-digit id>/` clips and `root/dataset.json`.

  Training clip i shows identity and motion drawn from the first `identities` and `motions`;
  evaluation clips show identities `identities ..` and motions `motions ..` (held out), and are
  also sa-animate cases (their first frame as the reference). Each clip has its own background.
  With `face_embedder`, it is trained on the training clips' faces, saved as `root/face_embedder.npz`
  and gives every clip's embeddings; without, each identity has a random unit vector. With
  `pose_estimator`, it is trained on the training clips' frames and keypoints and saved as
  `root/pose_estimator.npz` (`sa-eval --pose-estimator`: the pose error of generated frames). The dataset
  is built next to `root` and renamed into place when complete; `root` must be absent or empty, or
  with `overwrite` an earlier output of this function.

  Returns:
    the `dataset.json` record: the arguments and, per clip, its split, folder, identity and motion.
  """
  sizes = dict(clips=clips, identities=identities, motions=motions, held_out_identities=held_out_identities,
               held_out_motions=held_out_motions, num_frames=num_frames, width=width, height=height)
  for name, value in sizes.items():
    if value < 1:
      raise ValueError(f'{name} is {value}, expected >= 1')
  if eval_clips < 0:
    raise ValueError(f'eval_clips is {eval_clips}, expected >= 0')
  rng = np.random.default_rng([seed, _PLAN])
  plan = [('train', i, int(rng.integers(0, identities)), int(rng.integers(0, motions))) for i in range(clips)]
  plan += [('eval', i, identities + int(rng.integers(0, held_out_identities)),
            motions + int(rng.integers(0, held_out_motions))) for i in range(eval_clips)]
  entries, rendered = [], []
  with staging.staged_dir(root, overwrite, is_dataset_folder, what=_WHAT) as folder:
    for n, (split, i, who, how) in enumerate(tqdm(plan, desc='clips', unit='clip', disable=not progress or None)):
      outputs.check_interrupted()     # a stop signal whose exception a callback swallowed
      name = f'{split}/{i:05d}'
      rendered.append(write_clip(folder / name, make_identity(seed, who), make_motion(seed, how),
                                 _background(seed, n, width, height), num_frames, f'character {who} motion {how}'))
      entries.append({'split': split, 'folder': name, 'identity': who, 'motion': how})
    train = [r for r, (split, *_) in zip(rendered, plan) if split == 'train']
    if face_embedder is None:
      embeddings = [_random_embeddings(seed, n, who, num_frames) for n, (_, _, who, _) in enumerate(plan)]
    else:
      params = face_embedder.fit(np.concatenate([f for f, _, _ in train]), np.concatenate([m for _, m, _ in train]),
                                 np.repeat([who for split, _, who, _ in plan if split == 'train'], num_frames))
      np.savez(folder / EMBEDDER_FILE, **params)
      embeddings = [face_embedder.embed(params, f, m) for f, m, _ in rendered]
    if pose_estimator is not None:
      np.savez(folder / POSE_ESTIMATOR_FILE, **pose_estimator.fit(np.concatenate([f for f, _, _ in train]),
                                                                    np.concatenate([p for _, _, p in train])))
    for entry, (images, masks, _), rows in zip(entries, rendered, embeddings):
      reference = (images[0], masks[0]) if entry['split'] == 'eval' else (None, None)
      write_embeddings(folder / entry['folder'], rows, *reference)
    record = {'format': DATASET_FORMAT, 'seed': seed, 'eval_clips': eval_clips, **sizes,
              'face_embedder': EMBEDDER_FILE if face_embedder is not None else None,
              'pose_estimator': POSE_ESTIMATOR_FILE if pose_estimator is not None else None, 'clips': entries}
    (folder / DATASET_FILE).write_text(json.dumps(record, indent=1))
  logger.info('wrote %d training and %d evaluation clips of %d frames at %dx%d to %s', clips, eval_clips,
              num_frames, width, height, root)
  return record
