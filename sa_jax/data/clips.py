"""Training clips as a grain pipeline (SPEC §5 "Data layout" and "Sample").

Mirrors the reference's `LargeScaleAnimationVideos` (animation/dataset/animation_dataset.py), with the
reference frame's ArcFace embedding precomputed instead of detected on the fly. One clip folder:

  <clip>/images/frame_<i>.png    RGB frames, i = 0..L-1, all of one size
  <clip>/poses/frame_<i>.png     RGB skeletons, all of one size
  <clip>/faces/frame_<i>.png     single-channel ('L') 0/255 face masks, all of one size
  <clip>/face_embeddings.npy     float32 [L, 512] raw embedding per frame; the reference frame's row is used
  <clip>/face_embedding.npy      float32 [512], one for the clip (read only without face_embeddings.npy)

Pipeline (`make_loader`): clip list -> shuffle (a new order each epoch) -> repeat -> `SampleClip` with
grain's per-record rng -> blocks of B -> this process's blocks -> reading threads -> worker processes.
Records are numbered along one global stream and the rng is keyed on that number, so element k is
the same whatever the worker or process count; with P processes, process p takes blocks p, p + P,
..., i.e. rows p B .. (p + 1) B - 1 of each global batch of P B.

Elements stay uint8 here; the trainer normalises on device: frames, poses and reference `/127.5 - 1`,
face masks `/255` (SPEC §5).

A bad clip (gap in the frame numbering, differing frame counts, unreadable PNG, wrong mode, frames of
differing sizes within a kind, too few frames, missing or bad embedding) never stops a run: it gives an
element of the usual shapes filled with zeros and `valid=False`, and one warning per folder and process.
"""

import dataclasses
import logging
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grain
import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

EMBEDDING_DIM = 512
_MODES = {'images': 'RGB', 'poses': 'RGB', 'faces': 'L'}  # sub-folder -> required PIL mode
_FRAME = re.compile(r'frame_(0|[1-9][0-9]*)\.png')
_REPORTED: set[str] = set()  # bad clip folders this process has warned about
_REPORTED_LOCK = threading.Lock()

Element = dict[str, np.ndarray]


class ClipError(ValueError):
  """A clip folder that cannot give an example; the message says why."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Which clips to read and how to sample them.

  Attributes:
    roots: clip folders, folders of clip folders or text files listing clip folders (`list_clips`);
      one path or a sequence of paths, stored as a tuple of str.
    width, height: output size W x H; frames, poses and masks of another size are resized to it.
    num_frames: F, frames per example (the reference's `sample_n_frames`).
    stride: step of the sampled window (the reference's `sample_frame_rate`).
    seed: shuffling and sampling seed, 0 <= seed < 2**32.
  """
  roots: tuple[str, ...]
  width: int = 512
  height: int = 512
  num_frames: int = 16
  stride: int = 4
  seed: int = 0

  def __post_init__(self):
    roots = [self.roots] if isinstance(self.roots, (str, os.PathLike)) else list(self.roots)
    object.__setattr__(self, 'roots', tuple(os.fspath(root) for root in roots))
    if not self.roots:
      raise ValueError('DataConfig.roots is empty: give at least one clip folder, folder of clips or list')
    for name in ('width', 'height', 'num_frames', 'stride'):
      if getattr(self, name) < 1:
        raise ValueError(f'DataConfig.{name} is {getattr(self, name)}, expected >= 1')
    if not 0 <= self.seed < 2**32:
      raise ValueError(f'DataConfig.seed is {self.seed}, expected 0 <= seed < 2**32')


def list_clips(roots: Sequence[str | os.PathLike]) -> list[Path]:
  """The clip folders named by `roots`, in order, without reading any image.

  Each root is one of:
    * a clip folder (it has an `images/` sub-folder);
    * a folder of clip folders: its sub-folders not starting with '.', in name order (one level);
    * a text file listing clip folders one per line (the reference's `video_rec_path.txt`); blank lines
      and lines starting with '#' are skipped, relative paths are relative to the file's folder.
  Listed folders are not checked here; one that is missing or broken is a bad clip when read.

  Raises:
    ValueError: a root that does not exist, or no clip at all.
  """
  clips = []
  for root in map(Path, roots):
    if root.is_file():
      lines = (line.strip() for line in root.read_text().splitlines())
      clips += [root.parent / line for line in lines if line and not line.startswith('#')]
    elif (root / 'images').is_dir():
      clips.append(root)
    elif root.is_dir():
      clips += sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith('.'))
    else:
      raise ValueError(f'data root {root} does not exist (expected a clip folder, a folder of clip '
                       'folders or a text file listing clip folders)')
  if not clips:
    raise ValueError(f'no clip folders in {", ".join(map(str, roots))}')
  return clips


def sample_frames(length: int, num_frames: int, stride: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, int]:
  """The frame ids and the reference frame of one example (SPEC §5 "Sample").

  `clip = min(L, (F - 1) stride + 1)`, `start ~ U{0..L-clip}`, ids `int(linspace(start, start+clip-1, F))`
  (truncation), reference uniform among the frames not selected. When every frame is selected the
  reference draws a stride-2 window and picks outside that one (the frame ids stay), as the reference
  code does; that never finds a frame (the first window covers every frame only if L <= F, and then so
  does the second), and the reference's error becomes a `ClipError`.

  Args:
    length: L, frames in the clip.
    num_frames: F.
    stride: window step.
    rng: the record's generator.

  Returns:
    ids: int64 [F] frame ids; reference: the reference frame id.

  Raises:
    ClipError: L <= F (no frame is left for the reference).
  """
  if length < 1:
    raise ClipError('the clip has no frames')

  def window(step):
    clip = min(length, (num_frames - 1) * step + 1)
    start = int(rng.integers(0, length - clip + 1))
    return np.linspace(start, start + clip - 1, num_frames).astype(np.int64)

  ids = window(stride)
  free = np.setdiff1d(np.arange(length), ids)
  if free.size == 0:
    free = np.setdiff1d(np.arange(length), window(2))
  if free.size == 0:
    raise ClipError(f'too few frames: {length}, all among the {num_frames} sampled ones (a reference '
                    f'frame outside them needs more than {num_frames})')
  return ids, int(free[rng.integers(free.size)])


def read_clip(folder: str | os.PathLike, config: DataConfig, rng: np.random.Generator) -> Element:
  """One example of a clip folder: sampled frames, poses, masks, reference and its embedding.

  Returns:
    frames uint8 [F, H, W, 3], poses uint8 [F, H, W, 3], face_masks uint8 [F, H, W, 1],
    reference uint8 [H, W, 3], face_embedding float32 [512].

  Raises:
    ClipError: the folder does not hold a usable clip (the message names the file and the problem).
  """
  folder = Path(folder)
  length = _frame_count(folder)
  ids, reference = sample_frames(length, config.num_frames, config.stride, rng)
  embedding = _face_embedding(folder, length, reference)
  reader = _Reader(folder, (config.width, config.height))
  return {'frames': np.stack([reader.read('images', i) for i in ids]),
          'poses': np.stack([reader.read('poses', i) for i in ids]),
          'face_masks': np.stack([reader.read('faces', i) for i in ids])[..., None],  # [F, H, W, 1]
          'reference': reader.read('images', reference),
          'face_embedding': embedding}


def blank_element(config: DataConfig) -> Element:
  """Zeros in the shapes and dtypes of `read_clip`'s example."""
  frames, height, width = config.num_frames, config.height, config.width
  return {'frames': np.zeros((frames, height, width, 3), np.uint8),
          'poses': np.zeros((frames, height, width, 3), np.uint8),
          'face_masks': np.zeros((frames, height, width, 1), np.uint8),
          'reference': np.zeros((height, width, 3), np.uint8),
          'face_embedding': np.zeros((EMBEDDING_DIM,), np.float32)}


class ClipSource:
  """grain random-access source over the clip folders: record i is `(i, folder)`."""

  def __init__(self, clips: Sequence[str | os.PathLike]):
    self._clips = [os.fspath(clip) for clip in clips]

  def __len__(self) -> int:
    return len(self._clips)

  def __getitem__(self, index: int) -> tuple[int, str]:
    return index, self._clips[index]

  def __repr__(self) -> str:
    return f'ClipSource({len(self._clips)} clips)'


class SampleClip(grain.transforms.RandomMap):
  """grain transform `(clip index, folder)` -> element, drawing from the record's rng.

  Element (numpy; F = num_frames, H x W = height x width; a batch adds a leading B axis):
    frames          uint8 [F, H, W, 3]  RGB frames 0..255
    poses           uint8 [F, H, W, 3]  RGB skeletons 0..255
    face_masks      uint8 [F, H, W, 1]  0..255
    reference       uint8 [H, W, 3]     the reference frame (from images/)
    face_embedding  float32 [512]       raw ArcFace embedding of the reference frame
    clip            int32 []            index of the clip in `list_clips(config.roots)`
    valid           bool []             False for a bad clip (all of the above zero but `clip`)
  """

  def __init__(self, config: DataConfig):
    self.config = config

  def random_map(self, element: tuple[int, str], rng: np.random.Generator) -> Element:
    index, folder = element
    try:
      example, valid = read_clip(folder, self.config, rng), True
    except ClipError as err:
      _report_once(folder, str(err))
      example, valid = blank_element(self.config), False
    return {**example, 'clip': np.asarray(index, np.int32), 'valid': np.asarray(valid)}


def make_loader(config: DataConfig, *, batch_size: int, shard_index: int = 0, shard_count: int = 1,
                worker_count: int = 0, num_epochs: int | None = None, shuffle: bool = True,
                read_threads: int = 4, worker_buffer_size: int = 2) -> grain.IterDataset:
  """The training batches of this process (pipeline in the module docstring).

  Args:
    config: the clips and their sampling.
    batch_size: B, elements per batch of this process; an incomplete last batch is dropped.
    shard_index, shard_count: this process and the process count (`jax.process_index()`,
      `jax.process_count()`); process p takes blocks p, p + P, ... of B elements of the stream.
    worker_count: worker processes (0: read in this process). Batches do not depend on it.
    num_epochs: passes over the clips (None: endless). With a count, every process gets the same
      number of batches (up to P B - 1 elements at the end of the stream are dropped).
    shuffle: shuffle the clips by `config.seed`, in a new order each epoch.
    read_threads: threads reading elements in each process (0: none).
    worker_buffer_size: elements each worker prepares ahead.

  Returns:
    an IterDataset of batches (the `SampleClip` element with a leading [B] axis). `it = iter(loader)`
    is a `grain.DatasetIterator`: `it.get_state()` gives a JSON-able dict and `it.set_state(state)` on a
    fresh iterator of the same loader (same config, arguments and worker count) resumes with exactly
    the batches that would have come next. In an orbax CheckpointManager use `save_args(it)` /
    `restore_args(it)` as one item of `ocp.args.Composite`. Close an iterator with worker processes
    with `it.close()`.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size is {batch_size}, expected >= 1')
  if not 0 <= shard_index < shard_count:
    raise ValueError(f'shard_index {shard_index} is not in 0..{shard_count - 1} (shard_count {shard_count})')
  if worker_count < 0 or read_threads < 0:
    raise ValueError(f'worker_count {worker_count} and read_threads {read_threads} must be >= 0')
  clips = list_clips(config.roots)
  ds = grain.MapDataset.source(ClipSource(clips)).seed(config.seed)
  if shuffle:
    ds = ds.shuffle()
  ds = ds.repeat(num_epochs).random_map(SampleClip(config))
  # Blocks of B consecutive elements; process p takes blocks p, p + P, ...: its rows of each global
  # batch of P x B, so the global batch (process-major, as `jax.make_array_from_process_local_data`
  # assembles it) is the same for any process count. Batches are fixed before the workers, so they
  # do not depend on worker_count either.
  ds = ds.batch(batch_size, drop_remainder=True)
  if num_epochs is not None:
    ds = ds[:len(ds) // shard_count * shard_count]  # the same batch count on every process
  ds = ds[shard_index::shard_count]
  if len(ds) == 0:
    raise ValueError(f'{len(clips)} clips x {num_epochs} epochs leave no batch of {batch_size} for '
                     f'{shard_count} processes')
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(2, read_threads)))
  if worker_count > 0:
    _mark_flags_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count,
                                                     per_worker_buffer_size=worker_buffer_size))
  return ds


def save_args(iterator: grain.DatasetIterator) -> Any:
  """orbax save args for the iterator's position (`grain.checkpoint.CheckpointSave`).

    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=save_args(it)))

  Each process writes its own `process_<i>-of-<n>.json` in the item's folder.
  """
  return grain.checkpoint.CheckpointSave(iterator)


def restore_args(iterator: grain.DatasetIterator) -> Any:
  """orbax restore args that set `iterator` (fresh, from the same loader) to the saved position.

    mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                data=restore_args(it)))
  """
  return grain.checkpoint.CheckpointRestore(iterator)


def _mark_flags_parsed() -> None:
  """grain's worker start reads absl flags, which a program without absl.app has not parsed."""
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _report_once(folder: str, reason: str) -> None:
  with _REPORTED_LOCK:
    if folder in _REPORTED:
      return
    _REPORTED.add(folder)
  logger.warning('bad clip %s: %s (its elements are zeros with valid=False)', folder, reason)


def _frame_count(folder: Path) -> int:
  """L, after checking that images/, poses/ and faces/ each hold exactly frame_0.png..frame_<L-1>.png."""
  counts = {}
  for kind in _MODES:
    try:
      ids = sorted(int(m[1]) for e in os.scandir(folder / kind) if (m := _FRAME.fullmatch(e.name)))
    except OSError as err:
      raise ClipError(f'cannot list {kind}/ ({err.strerror or err})') from None
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


def _face_embedding(folder: Path, length: int, reference: int) -> np.ndarray:
  """The reference frame's embedding: float32 [512]."""
  per_frame, single = folder / 'face_embeddings.npy', folder / 'face_embedding.npy'
  if per_frame.exists():
    path, expected = per_frame, (length, EMBEDDING_DIM)
  elif single.exists():
    path, expected = single, (EMBEDDING_DIM,)
  else:
    raise ClipError('neither face_embeddings.npy nor face_embedding.npy exists')
  try:
    table = np.load(path, mmap_mode='r', allow_pickle=False)
  except (OSError, ValueError) as err:
    raise ClipError(f'{path.name} is unreadable ({err})') from None
  if table.shape != expected or table.dtype.kind != 'f':
    raise ClipError(f'{path.name} is {table.dtype} {list(table.shape)}, expected float32 {list(expected)}')
  row = np.array(table[reference] if path is per_frame else table, np.float32)
  if not np.isfinite(row).all():
    raise ClipError(f'{path.name}: the embedding of frame {reference} is not finite')
  return row


class _Reader:
  """Reads frame PNGs of one clip, checks mode and size per sub-folder, resizes to `size` (W, H)."""

  def __init__(self, folder: Path, size: tuple[int, int]):
    self._folder = folder
    self._size = size
    self._first: dict[str, tuple[str, tuple[int, int]]] = {}  # sub-folder -> (file, (w, h)) first read

  def read(self, kind: str, index: int) -> np.ndarray:
    """`kind/frame_<index>.png` as uint8 [H, W, 3] (RGB) or [H, W] (mask)."""
    name = f'{kind}/frame_{index}.png'
    try:
      with Image.open(self._folder / name) as image:
        image.load()
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, zlib.error... on broken files
      raise ClipError(f'{name} is unreadable ({type(err).__name__}: {err})') from None
    if image.mode != _MODES[kind]:
      raise ClipError(f'{name} has mode {image.mode}, expected {_MODES[kind]}')
    first, size = self._first.setdefault(kind, (name, image.size))
    if image.size != size:
      raise ClipError(f'{name} is {image.size[0]}x{image.size[1]}, {first} is {size[0]}x{size[1]}')
    if image.size != self._size:
      image = image.resize(self._size, Image.Resampling.BICUBIC)
    return np.asarray(image, np.uint8)
