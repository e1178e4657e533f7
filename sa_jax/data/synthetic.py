"""Synthetic training clips in the sa-prep training layout (see `sa_jax.data.clips`), for tests and demos.

Each clip shows a stick "person" (torso box, head disc, four limbs) on a plain background, walking across
the frame and swinging arms and legs. The pose image draws the same skeleton (one colour per limb, white
joints) on black; the face mask is 255 on the head's box. `face_embeddings.npy` holds one identity per
clip: a random unit vector plus a little per-frame noise, renormalised. Everything follows from the seed.
"""

import logging
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sa_jax.data.clip_files import EMBEDDING_DIM

logger = logging.getLogger(__name__)

# (from joint, to joint, pose colour) for the skeleton; joints are named in `_joints`.
_LIMBS = (('neck', 'hip', (255, 0, 0)), ('neck', 'left_hand', (255, 170, 0)),
          ('neck', 'right_hand', (170, 255, 0)), ('hip', 'left_foot', (0, 255, 170)),
          ('hip', 'right_foot', (0, 170, 255)), ('neck', 'head', (170, 0, 255)))


def write_clips(root: str | os.PathLike, count: int, *, num_frames: int, width: int, height: int,
                seed: int = 0) -> list[Path]:
  """Writes `count` clips `root/<5-digit id>/` of `num_frames` frames at `width` x `height`.

  Args:
    root: output folder, absent or empty (created).
    count: number of clips.
    num_frames: L, frames per clip.
    width, height: frame size W x H of images, poses and masks.
    seed: clip i draws from `np.random.default_rng([seed, i])`.

  Returns:
    the clip folders, in order.
  """
  root = Path(root)
  for name, value in (('count', count), ('num_frames', num_frames), ('width', width), ('height', height)):
    if value < 1:
      raise ValueError(f'{name} is {value}, expected >= 1')
  if root.exists() and (not root.is_dir() or any(root.iterdir())):
    raise ValueError(f'output {root} exists and is not an empty folder (expected an absent or empty folder)')
  clips = []
  for index in range(count):
    folder = root / f'{index:05d}'
    _write_clip(folder, np.random.default_rng([seed, index]), num_frames, width, height)
    clips.append(folder)
  logger.info('wrote %d synthetic clips of %d frames at %dx%d to %s', count, num_frames, width, height, root)
  return clips


def _write_clip(folder: Path, rng: np.random.Generator, num_frames: int, width: int, height: int) -> None:
  for kind in ('images', 'poses', 'faces'):
    (folder / kind).mkdir(parents=True)
  background = tuple(int(c) for c in rng.integers(0, 256, 3))
  clothes = tuple(int(c) for c in rng.integers(0, 256, 3))
  skin = tuple(int(c) for c in np.clip(np.array([224, 172, 105]) + rng.integers(-30, 31, 3), 0, 255))
  start, end = rng.uniform(0.25, 0.4), rng.uniform(0.6, 0.75)
  if rng.random() < 0.5:
    start, end = end, start
  phase = rng.uniform(0, 2 * math.pi)
  scale = min(width, height)
  line = max(1, scale // 16)
  for i in range(num_frames):
    t = i / max(num_frames - 1, 1)
    joints = _joints(width, height, start + (end - start) * t, phase + 4 * math.pi * t)
    radius = 0.09 * height
    head = joints['head']
    box = (head[0] - radius, head[1] - radius, head[0] + radius, head[1] + radius)

    image = Image.new('RGB', (width, height), background)
    draw = ImageDraw.Draw(image)
    neck, hip = joints['neck'], joints['hip']
    draw.rectangle((neck[0] - 0.07 * height, neck[1], neck[0] + 0.07 * height, hip[1]), fill=clothes)
    for a, b, _ in _LIMBS[1:5]:
      draw.line((joints[a], joints[b]), fill=clothes, width=line)
    draw.ellipse(box, fill=skin)
    image.save(folder / 'images' / f'frame_{i}.png')

    pose = Image.new('RGB', (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(pose)
    for a, b, colour in _LIMBS:
      draw.line((joints[a], joints[b]), fill=colour, width=line)
    for x, y in joints.values():
      draw.ellipse((x - line, y - line, x + line, y + line), fill=(255, 255, 255))
    pose.save(folder / 'poses' / f'frame_{i}.png')

    mask = Image.new('L', (width, height), 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    mask.save(folder / 'faces' / f'frame_{i}.png')

  identity = rng.standard_normal(EMBEDDING_DIM)
  rows = identity / np.linalg.norm(identity) + 0.05 * rng.standard_normal((num_frames, EMBEDDING_DIM))
  rows /= np.linalg.norm(rows, axis=1, keepdims=True)
  np.save(folder / 'face_embeddings.npy', rows.astype(np.float32))  # [L, 512]


def _joints(width: int, height: int, x: float, swing: float) -> dict[str, tuple[float, float]]:
  """Pixel positions of the skeleton with its centre at `x` (fraction of W) and limbs at angle `swing`."""
  cx = x * width
  top = 0.15 * height + 0.02 * height * math.sin(2 * swing)  # a slight bob
  neck, hip = (cx, top + 0.2 * height), (cx, top + 0.5 * height)
  limb = 0.25 * height
  angle = 0.5 * math.sin(swing)

  def end(origin, a):
    return origin[0] + limb * math.sin(a), origin[1] + limb * math.cos(a)

  return {'head': (cx, top + 0.08 * height), 'neck': neck, 'hip': hip,
          'left_hand': end(neck, angle), 'right_hand': end(neck, -angle),
          'left_foot': end(hip, -angle), 'right_foot': end(hip, angle)}
