"""One training clip's files, read and checked (SPEC §5 "Data layout"), from a folder or a packed record.

A clip is frame PNGs under `images/`, `poses/` and `faces/` and a face-embedding `.npy` (the layout is
in `sa_jax.data.clips`). It comes in two forms holding the same bytes: `FolderClip`, a clip folder on
disk, and `PackedClip`, the files of one clip in memory (one record of a packed dataset,
`sa_jax.data.packed`). Every check and decode here runs on those bytes, so a clip gives the same
example, and the same error, in either form.
"""

import dataclasses
import io
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

EMBEDDING_DIM = 512
MODES = {'images': 'RGB', 'poses': 'RGB', 'faces': 'L'}  # sub-folder -> required PIL mode
PER_FRAME, SINGLE = 'face_embeddings.npy', 'face_embedding.npy'  # float32 [L, 512] / [512]
_FRAME = re.compile(r'frame_(0|[1-9][0-9]*)\.png')
# np.load parses the .npy header with ast.literal_eval, and CPython 3.11's AST construction is not
# thread-safe: parallel parses fail at random with "AST constructor recursion depth mismatch"
# (python/cpython#106905). Reading threads load embeddings one at a time.
_NPY_LOCK = threading.Lock()


class ClipError(ValueError):
  """A clip that cannot give an example; the message says why."""


@dataclasses.dataclass(frozen=True, slots=True)
class FolderClip:
  """A clip folder on disk.

  Attributes:
    folder: its path (a str: training lists hold millions of these).
  """
  folder: str

  @property
  def label(self) -> str:
    """Names the clip in messages."""
    return self.folder

  def frame_ids(self, kind: str) -> list[int]:
    """The i of the `kind/frame_<i>.png` files, in no particular order."""
    try:
      return [int(m[1]) for e in os.scandir(os.path.join(self.folder, kind)) if (m := _FRAME.fullmatch(e.name))]
    except OSError as err:
      raise ClipError(f'cannot list {kind}/ ({err.strerror or err})') from None

  def frame(self, kind: str, index: int) -> bytes:
    """The bytes of `kind/frame_<index>.png`."""
    return self._read(f'{kind}/frame_{index}.png')

  def embedding(self) -> tuple[str, bytes]:
    """The embedding file's name (`face_embeddings.npy` first) and bytes."""
    for name in (PER_FRAME, SINGLE):
      if os.path.exists(os.path.join(self.folder, name)):
        return name, self._read(name)
    raise ClipError(f'neither {PER_FRAME} nor {SINGLE} exists')

  def _read(self, name: str) -> bytes:
    try:
      return Path(self.folder, name).read_bytes()
    except OSError as err:
      raise ClipError(f'{name} is unreadable ({type(err).__name__}: {err.strerror or err})') from None


@dataclasses.dataclass(frozen=True, slots=True)
class PackedClip:
  """The files of one clip, in memory.

  Attributes:
    label: names the clip in messages (its folder, and where it was packed).
    frames: sub-folder ('images', 'poses', 'faces') -> the bytes of frame_0.png, frame_1.png, ...
    embedding_file: `face_embeddings.npy` or `face_embedding.npy`.
    embedding_bytes: that file's bytes.
  """
  label: str
  frames: dict[str, Sequence[bytes]]
  embedding_file: str
  embedding_bytes: bytes

  def frame_ids(self, kind: str) -> list[int]:
    return list(range(len(self.frames[kind])))

  def frame(self, kind: str, index: int) -> bytes:
    return self.frames[kind][index]

  def embedding(self) -> tuple[str, bytes]:
    return self.embedding_file, self.embedding_bytes


Clip = FolderClip | PackedClip


def pack_clip(folder: str | os.PathLike) -> PackedClip:
  """The files of a clip folder in memory, after every check that does not depend on the sampling:
  numbering, each frame's decoding, mode and size, and every row of the embedding.

  Raises:
    ClipError: the folder does not hold a usable clip (the message names the file and the problem).
  """
  clip = FolderClip(os.fspath(folder))
  length = frame_count(clip)
  embedding_file, embedding_bytes = clip.embedding()
  frames = {kind: [clip.frame(kind, i) for i in range(length)] for kind in MODES}
  packed = PackedClip(clip.label, frames, embedding_file, embedding_bytes)
  reader = FrameReader(packed, size=None)
  for kind in MODES:
    for i in range(length):
      reader.read(kind, i)
  name, table = _embedding_table(packed, length)
  for row in range(table.shape[0] if name == PER_FRAME else 1):
    _finite_row(name, table, row)
  return packed


def frame_count(clip: Clip) -> int:
  """L, after checking that images/, poses/ and faces/ each hold exactly frame_0.png..frame_<L-1>.png."""
  counts = {}
  for kind in MODES:
    ids = sorted(clip.frame_ids(kind))
    gaps = [i for i, j in enumerate(ids) if i != j]
    if gaps:
      raise ClipError(f'{kind}/ numbering has a gap: frame_{gaps[0]}.png is missing '
                      f'({len(ids)} frames up to frame_{ids[-1]}.png)')
    counts[kind] = len(ids)
  if counts['images'] == 0:
    raise ClipError('images/ holds no frame_<i>.png')
  for kind, count in counts.items():
    if count != counts['images']:
      raise ClipError(f'{kind}/ has {count} frames, images/ has {counts["images"]}')
  return counts['images']


def face_embedding(clip: Clip, length: int, reference: int) -> np.ndarray:
  """The reference frame's embedding: float32 [512]."""
  name, table = _embedding_table(clip, length)
  return _finite_row(name, table, reference)


class FrameReader:
  """Decodes frame PNGs of one clip, checks mode and size per sub-folder, resizes to `size` (W, H)
  with PIL bicubic (None: keeps each frame's size)."""

  def __init__(self, clip: Clip, size: tuple[int, int] | None):
    self._clip = clip
    self._size = size
    self._first: dict[str, tuple[str, tuple[int, int]]] = {}  # sub-folder -> (file, (w, h)) first read

  def read(self, kind: str, index: int) -> np.ndarray:
    """`kind/frame_<index>.png` as uint8 [H, W, 3] (RGB) or [H, W] (mask)."""
    name = f'{kind}/frame_{index}.png'
    data = self._clip.frame(kind, index)
    try:
      with Image.open(io.BytesIO(data)) as image:
        image.load()
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, zlib.error... on broken files
      raise ClipError(f'{name} is unreadable ({type(err).__name__}: {err})') from None
    if image.mode != MODES[kind]:
      raise ClipError(f'{name} has mode {image.mode}, expected {MODES[kind]}')
    first, size = self._first.setdefault(kind, (name, image.size))
    if image.size != size:
      raise ClipError(f'{name} is {image.size[0]}x{image.size[1]}, {first} is {size[0]}x{size[1]}')
    if self._size is not None and image.size != self._size:
      image = image.resize(self._size, Image.Resampling.BICUBIC)
    return np.asarray(image, np.uint8)


def _embedding_table(clip: Clip, length: int) -> tuple[str, np.ndarray]:
  """The embedding file's name and its table, float [L, 512] (per frame) or [512] (one)."""
  name, data = clip.embedding()
  try:
    with _NPY_LOCK:
      table = np.load(io.BytesIO(data), allow_pickle=False)
  except (OSError, ValueError) as err:
    raise ClipError(f'{name} is unreadable ({err})') from None
  expected = (length, EMBEDDING_DIM) if name == PER_FRAME else (EMBEDDING_DIM,)
  if table.shape != expected or table.dtype.kind != 'f':
    raise ClipError(f'{name} is {table.dtype} {list(table.shape)}, expected float32 {list(expected)}')
  return name, table


def _finite_row(name: str, table: np.ndarray, frame: int) -> np.ndarray:
  """Frame `frame`'s embedding, float32 [512] (the one row of a `face_embedding.npy`)."""
  row = np.array(table[frame] if name == PER_FRAME else table, np.float32)
  if not np.isfinite(row).all():
    raise ClipError(f'{name}: the embedding of frame {frame} is not finite')
  return row


def list_clips(roots: Sequence[str | os.PathLike]) -> list[Path]:
  """The clip folders named by `roots` (`root_clips` of each), in order, without reading any image.

  Raises:
    ValueError: a root that does not exist, or no clip at all.
  """
  clips = [clip for root in roots for clip in root_clips(root)]
  if not clips:
    raise ValueError(f'no clip folders in {", ".join(map(os.fspath, roots))}')
  return clips


def root_clips(root: str | os.PathLike) -> list[Path]:
  """The clip folders named by one root, which is one of:
    * a clip folder (it has an `images/` sub-folder);
    * a folder of clip folders: its sub-folders not starting with '.', in name order (one level);
    * a text file listing clip folders one per line (the reference's `video_rec_path.txt`); blank lines
      and lines starting with '#' are skipped, relative paths are relative to the file's folder.
  Listed folders are not checked here; one that is missing or broken is a bad clip when read.

  Raises:
    ValueError: the root does not exist.
  """
  root = Path(root)
  if root.is_file():
    lines = (line.strip() for line in root.read_text().splitlines())
    return [root.parent / line for line in lines if line and not line.startswith('#')]
  if (root / 'images').is_dir():
    return [root]
  if root.is_dir():
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith('.'))
  raise ValueError(f'data root {root} does not exist (expected a clip folder, a folder of clip folders or a '
                   'text file listing clip folders)')
