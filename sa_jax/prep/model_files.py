"""Where `sa-prep` finds its ONNX models (release layout, SPEC §1.3).

  checkpoints/DWPose/yolox_l.onnx, checkpoints/DWPose/dw-ll_ucoco_384.onnx
  ROOT/models/antelopev2/*.onnx   (what insightface `FaceAnalysis(name='antelopev2', root=ROOT)` reads)

Nothing is ever downloaded: a missing file is an error that names the file and every place looked in.
"""

import os
from pathlib import Path

DWPOSE_DIR = 'checkpoints/DWPose'
DETECTOR_FILE = 'yolox_l.onnx'
POSE_MODEL_FILE = 'dw-ll_ucoco_384.onnx'
ANTELOPEV2 = 'antelopev2'
ANTELOPEV2_FILES = ('scrfd_10g_bnkps.onnx', 'glintr100.onnx')


def _model_file(explicit: str | os.PathLike | None, folder: str | os.PathLike | None, name: str,
                flag: str, what: str) -> Path:
  if explicit is not None:
    path = Path(explicit)
    if not path.is_file():
      raise FileNotFoundError(f'{what} not found: {path} (given by {flag})')
    return path
  if folder is None:
    raise ValueError(f'no {what}: give {flag} or --dwpose-dir')
  path = Path(folder) / name
  if not path.is_file():
    raise FileNotFoundError(f'{what} not found: looked for {name} in the DWPose folder {Path(folder)} '
                            f'({path}); give --dwpose-dir or {flag}')
  return path


def dwpose_files(dwpose_dir: str | os.PathLike | None = DWPOSE_DIR,
                 detector: str | os.PathLike | None = None,
                 pose_model: str | os.PathLike | None = None) -> tuple[Path, Path]:
  """Paths of the YOLOX detector and the DWPose model: explicit paths win over `dwpose_dir`."""
  return (_model_file(detector, dwpose_dir, DETECTOR_FILE, '--detector', 'DWPose person detector'),
          _model_file(pose_model, dwpose_dir, POSE_MODEL_FILE, '--pose-model', 'DWPose pose model'))


def antelopev2_candidates(root: str | os.PathLike) -> list[Path]:
  """Folders tried, in order: insightface's own `ROOT/models/antelopev2`, then `ROOT/antelopev2`, the
  doubly nested folder the antelopev2 zip creates when unpacked in place, and ROOT itself."""
  root = Path(root).expanduser()
  return [root / 'models' / ANTELOPEV2, root / ANTELOPEV2, root / 'models' / ANTELOPEV2 / ANTELOPEV2,
          root]


def antelopev2_dir(root: str | os.PathLike) -> Path:
  """The first candidate folder that holds `.onnx` files (insightface routes them by signature)."""
  candidates = antelopev2_candidates(root)
  for folder in candidates:
    if folder.is_dir() and any(folder.glob('*.onnx')):
      return folder
  looked = ', '.join(str(c) for c in candidates)
  raise FileNotFoundError(f'insightface antelopev2 models not found under --insightface-root {root}: '
                          f'looked for {", ".join(ANTELOPEV2_FILES)} (any .onnx) in {looked}')
