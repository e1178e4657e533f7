"""What `sa-eval` writes: per-clip and overall scores as JSON and a markdown table, and a picture per clip.

Scores are plain dicts `{metric: value}`. A clip's frame metric is the mean over its frames; the
overall value of a per-clip metric is the mean over the clips that have it (a clip without a face
or a person in any frame has no CSIM or pose error, and says so in its counts). Set metrics (FVD)
exist only overall.
"""

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

# Column label, JSON key, format and direction of each metric, in table order.
COLUMNS = (
    ('L1', 'l1', '.4f', 'lower'), ('L1 (DisCo)', 'l1_disco', '.3e', 'lower'),
    ('PSNR', 'psnr', '.2f', 'higher'), ('PSNR (DisCo)', 'psnr_disco', '.2f', 'higher'),
    ('SSIM', 'ssim', '.4f', 'higher'), ('SSIM (DisCo)', 'ssim_disco', '.4f', 'higher'),
    ('LPIPS', 'lpips', '.4f', 'lower'), ('CSIM', 'csim', '.4f', 'higher'),
    ('pose err px', 'pose_error_px', '.2f', 'lower'), ('PCK', 'pck', '.4f', 'higher'),
    ('PCK (bbox)', 'pck_bbox', '.4f', 'higher'),
    ('FVD', 'fvd', '.2f', 'lower'),
)
STRIP_COLUMNS = 8          # frames shown per clip picture
LABELS = ('reference', 'pose', 'generated', 'ground truth')


def mean(values: Any) -> float | None:
  """The mean of the finite values (None if there are none); infinities count (identical frames' PSNR)."""
  values = np.asarray(values, np.float64).reshape(-1)
  values = values[~np.isnan(values)]
  return float(np.mean(values)) if values.size else None


def overall(clips: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
  """The mean of each per-clip metric over the clips that have it, with the number of clips."""
  keys = [key for _, key, _, _ in COLUMNS]
  result: dict[str, Any] = {}
  for key in keys:
    values = [c[key] for c in clips.values() if c.get(key) is not None]
    if values:
      result[key] = mean(values)
  result['clips'] = len(clips)
  return result


def _cell(value: Any, spec: str) -> str:
  if value is None:
    return '-'
  if isinstance(value, float) and math.isinf(value):
    return 'inf'
  return format(value, spec)


def markdown(scores: Mapping[str, Any]) -> str:
  """A table of every clip and the overall row, the metrics that were skipped and why, and notes."""
  clips, total = scores['clips'], scores['overall']
  columns = [c for c in COLUMNS if any(c[1] in row for row in (*clips.values(), total))]
  arrows = {'lower': '↓', 'higher': '↑'}
  lines = ['| clip | frames | ' + ' | '.join(f'{label} {arrows[way]}' for label, _, _, way in columns) + ' |',
           '|---|---|' + '---|' * len(columns)]
  for name, row in clips.items():
    lines.append(f'| {name} | {row["frames"]} | ' + ' | '.join(_cell(row.get(k), s) for _, k, s, _ in columns)
                 + ' |')
  lines.append(f'| **all ({total["clips"]})** | {sum(r["frames"] for r in clips.values())} | '
               + ' | '.join(_cell(total.get(k), s) for _, k, s, _ in columns) + ' |')
  notes = ['', 'Means over frames, then over clips. L1 on [0, 1] pixels; L1 (DisCo) is the absolute 0..255 '
           'error / (H W) that papers print; PSNR in float, PSNR (DisCo) with its uint8 wrap-around, for '
           'comparison with published tables only (docs/evaluation.md).']
  missing = {'no_face_frames': 'a face', 'no_person_frames': 'a detected person matching the skeleton',
             'no_driving_frames': 'a visible driving skeleton'}
  for name, row in clips.items():
    for key, what in missing.items():
      if row.get(key):
        notes.append(f'- {name}: {row[key]} of {row["frames"]} frames without {what} (left out of its mean)')
  for name, row in clips.items():
    if row.get('no_reference_face'):
      notes.append(f'- {name}: no face in the reference (sa-prep found none): CSIM undefined')
  for metric, reason in scores.get('skipped', {}).items():
    notes.append(f'- {metric}: not computed: {reason}')
  return '\n'.join(lines + notes) + '\n'


def to_json(scores: Mapping[str, Any]) -> str:
  """JSON text of the scores (JSON has no NaN or infinity): NaN (a frame without a face or a person)
  as null, infinities (identical frames' PSNR) as the strings "inf" and "-inf"."""
  def clean(value):
    if isinstance(value, dict):
      return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
      return [clean(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
      return None
    if isinstance(value, float) and math.isinf(value):
      return str(value)
    return value
  return json.dumps(clean(scores), indent=2) + '\n'


def _evenly(count: int, picks: int) -> list[int]:
  return sorted({round(i * (count - 1) / max(picks - 1, 1)) for i in range(min(count, picks))})


def strip(reference: np.ndarray, poses: np.ndarray, generated: np.ndarray, truth: np.ndarray) -> np.ndarray:
  """A picture of one clip: rows reference | pose | generated | ground truth, up to `STRIP_COLUMNS`
  evenly spaced frames, each tile at the ground truth's frame size, labelled.

  Args:
    reference: uint8 `[h, w, 3]`.
    poses, generated, truth: uint8 `[F, h, w, 3]` (any sizes; shown at the truth's).

  Returns:
    uint8 `[rows, cols, 3]`.
  """
  height, width = truth.shape[1:3]
  label = 12
  picks = _evenly(len(truth), STRIP_COLUMNS)
  canvas = Image.new('RGB', (width * len(picks), (height + label) * len(LABELS)), 'white')
  draw = ImageDraw.Draw(canvas)
  tile = lambda image: Image.fromarray(np.asarray(image)).resize((width, height), Image.BILINEAR)
  rows = ([reference], poses, generated, truth)
  for r, (name, frames) in enumerate(zip(LABELS, rows)):
    top = r * (height + label)
    draw.text((2, top), name, fill='black')
    for c, index in enumerate(picks if r else [0]):
      canvas.paste(tile(frames[index]), (c * width, top + label))
      if r:
        draw.text((c * width + 2, top + label + 2), str(index), fill='white')
  return np.asarray(canvas)
