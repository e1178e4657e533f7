"""Training clips as a grain pipeline (SPEC §5 "Data layout" and "Sample").

Mirrors the reference's `LargeScaleAnimationVideos` (animation/dataset/animation_dataset.py), with the
reference frame's ArcFace embedding precomputed instead of detected on the fly. One clip folder
(read and checked by `sa_jax.data.clip_files`):

  <clip>/images/frame_<i>.png    RGB frames, i = 0..L-1, all of one size
  <clip>/poses/frame_<i>.png     RGB skeletons, all of one size
  <clip>/faces/frame_<i>.png     single-channel ('L') 0/255 face masks, all of one size
  <clip>/face_embeddings.npy     float32 [L, 512] raw embedding per frame; the reference frame's row is used
  <clip>/face_embedding.npy      float32 [512], one for the clip (read only without face_embeddings.npy)

Clips come from clip folders, or from packed datasets (`sa-pack-clips`, `sa_jax.data.packed`): ArrayRecord
shards whose records hold the same files, read by the same code, so they give the same elements.

Pipeline (`make_loader`): clip list -> shuffle (a new order each epoch) -> repeat -> `SampleClip` with
grain's per-record rng -> blocks of B -> this process's blocks -> reading threads -> worker processes.
Records are numbered along one global stream and the rng is keyed on that number, so element k is
the same whatever the worker or process count; with P processes, process p takes blocks p, p + P,
..., i.e. rows p B .. (p + 1) B - 1 of each global batch of P B.

Training sizes (the original's `rec` 512x512 and `vec` 576x1024 loaders): a root written `WxH:path`
is read at W x H, the others at the config's own size. With several sizes (`buckets`) each is a
pipeline of its own as above, and every epoch interleaves all their global batches in a random
order (one size per step, as the original's epochs do): bucket k gives ceil(clips_k / (P B)) batches
an epoch, and global step s maps to a batch of one bucket by a permutation drawn from (seed, epoch).

Elements stay uint8 here; the trainer normalises on device: frames, poses and reference `/127.5 - 1`,
face masks `/255` (SPEC §5).

A bad clip (gap in the frame numbering, differing frame counts, unreadable PNG, wrong mode, frames of
differing sizes within a kind, too few frames, missing or bad embedding) never stops a run: it gives an
element of the usual shapes filled with zeros and `valid=False`, and one warning per clip and process.
"""

import bisect
import dataclasses
import logging
import os
import re
import sys
import threading
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from sa_jax.data import packed
from sa_jax.data.clip_files import (EMBEDDING_DIM, Clip, ClipError, FolderClip, FrameReader, face_embedding,
                                    frame_count, root_clips)

logger = logging.getLogger(__name__)

_SIZED_ROOT = re.compile(r'([1-9][0-9]*)x([1-9][0-9]*):(.+)')   # WxH:path
_REPORTED: set[str] = set()  # bad clips (`label`s) this process has warned about
_REPORTED_LOCK = threading.Lock()

Element = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Which clips to read and how to sample them.

  Attributes:
    roots: clip folders, folders of clip folders, text files listing clip folders
      (`clip_files.root_clips`) or packed datasets (`packed.is_packed`); one path or a sequence of
      paths, stored as a tuple of str.
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
      raise ValueError('DataConfig.roots is empty: give at least one clip folder, folder of clips, list or '
                       'packed dataset')
    for name in ('width', 'height', 'num_frames', 'stride'):
      if getattr(self, name) < 1:
        raise ValueError(f'DataConfig.{name} is {getattr(self, name)}, expected >= 1')
    if not 0 <= self.seed < 2**32:
      raise ValueError(f'DataConfig.seed is {self.seed}, expected 0 <= seed < 2**32')


def split_root(root: str) -> tuple[tuple[int, int] | None, str]:
  """`'576x1024:clips/'` -> `((576, 1024), 'clips/')`; a root without a size -> `(None, root)`."""
  sized = _SIZED_ROOT.fullmatch(root)
  return ((int(sized[1]), int(sized[2])), sized[3]) if sized else (None, root)


def buckets(config: DataConfig) -> tuple[DataConfig, ...]:
  """One config per training size, in the order the sizes first appear in `config.roots`, each with
  its own roots (without their `WxH:`) and the seed `config.seed + k` (the first is `config.seed`)."""
  roots: dict[tuple[int, int], list[str]] = {}
  for root in config.roots:
    size, path = split_root(root)
    roots.setdefault(size or (config.width, config.height), []).append(path)
  return tuple(dataclasses.replace(config, roots=tuple(paths), width=w, height=h, seed=(config.seed + k) % 2**32)
               for k, ((w, h), paths) in enumerate(roots.items()))


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


def read_clip(clip: Clip, config: DataConfig, rng: np.random.Generator) -> Element:
  """One example of a clip (folder or packed): sampled frames, poses, masks, reference and its embedding.

  Returns:
    frames uint8 [F, H, W, 3], poses uint8 [F, H, W, 3], face_masks uint8 [F, H, W, 1],
    reference uint8 [H, W, 3], face_embedding float32 [512].

  Raises:
    ClipError: not a usable clip (the message names the file and the problem).
  """
  length = frame_count(clip)
  ids, reference = sample_frames(length, config.num_frames, config.stride, rng)
  embedding = face_embedding(clip, length, reference)
  reader = FrameReader(clip, (config.width, config.height))
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
  """grain random-access source over the clips of the roots, in order: record i is `(i, clip)`.

  Args:
    parts: per root, its clips in order: a list of `FolderClip`s or a `packed.PackedClips`.
  """

  def __init__(self, parts: Sequence[Sequence[Clip]]):
    self._parts = [part for part in parts if len(part)]
    self._ends = np.cumsum([len(part) for part in self._parts]).tolist()  # clips before the end of part k

  def __len__(self) -> int:
    return self._ends[-1] if self._ends else 0

  def __getitem__(self, index: int) -> tuple[int, Clip]:
    part = bisect.bisect_right(self._ends, index)
    return index, self._parts[part][index - (self._ends[part - 1] if part else 0)]

  def __repr__(self) -> str:
    return f'ClipSource({len(self)} clips)'


def clip_source(roots: Sequence[str | os.PathLike]) -> ClipSource:
  """The clips of `roots` (`DataConfig.roots`), without reading any image.

  Raises:
    ValueError: a root that does not exist, a packed dataset that does not open, or no clip at all.
  """
  parts = [packed.PackedClips(root) if packed.is_packed(root)
           else [FolderClip(os.fspath(folder)) for folder in root_clips(root)] for root in roots]
  source = ClipSource(parts)
  if not len(source):
    raise ValueError(f'no clips in {", ".join(map(os.fspath, roots))}')
  return source


def check_roots(roots: Sequence[str | os.PathLike]) -> list[str]:
  """What is wrong with `roots`, found without listing any folder: roots that do not exist, packed
  datasets that do not open."""
  problems = []
  for root in roots:
    root = split_root(os.fspath(root))[1]
    if not os.path.exists(root):
      problems.append(f'data root {root} does not exist')
    elif packed.is_packed(root):
      try:
        packed.PackedClips(root)
      except ValueError as err:
        problems.append(str(err))
  return problems


class SampleClip(grain.transforms.RandomMap):
  """grain transform `(clip index, clip)` -> element, drawing from the record's rng.

  Element (numpy; F = num_frames, H x W = height x width; a batch adds a leading B axis):
    frames          uint8 [F, H, W, 3]  RGB frames 0..255
    poses           uint8 [F, H, W, 3]  RGB skeletons 0..255
    face_masks      uint8 [F, H, W, 1]  0..255
    reference       uint8 [H, W, 3]     the reference frame (from images/)
    face_embedding  float32 [512]       raw ArcFace embedding of the reference frame
    clip            int32 []            index of the clip in `clip_source(config.roots)`
    valid           bool []             False for a bad clip (all of the above zero but `clip`)
  """

  def __init__(self, config: DataConfig):
    self.config = config

  def random_map(self, element: tuple[int, Clip], rng: np.random.Generator) -> Element:
    index, clip = element
    try:
      example, valid = read_clip(clip, self.config, rng), True
    except ClipError as err:
      _report_once(clip.label, str(err))
      example, valid = blank_element(self.config), False
    return {**example, 'clip': np.asarray(index, np.int32), 'valid': np.asarray(valid)}


def make_loader(config: DataConfig, *, batch_size: int, shard_index: int = 0, shard_count: int = 1,
                worker_count: int = 0, num_epochs: int | None = None, shuffle: bool = True,
                read_threads: int = 4, worker_buffer_size: int = 2) -> grain.IterDataset:
  """The training batches of this process (pipeline in the module docstring).

  Args:
    config: the clips and their sampling; roots written `WxH:path` make buckets of their own size.
    batch_size: B, elements per batch of this process; an incomplete last batch is dropped.
    shard_index, shard_count: this process and the process count (`jax.process_index()`,
      `jax.process_count()`); process p takes blocks p, p + P, ... of B elements of the stream.
    worker_count: worker processes (0: read in this process). Batches do not depend on it.
    num_epochs: passes over the clips (None: endless; several sizes need None). With a count, every
      process gets the same number of batches (up to P B - 1 elements at the end are dropped).
    shuffle: shuffle the clips by `config.seed`, in a new order each epoch.
    read_threads: threads reading elements in each process (0: none).
    worker_buffer_size: elements each worker prepares ahead.

  Returns:
    an IterDataset of batches (the `SampleClip` element with a leading [B] axis; with several sizes
    each batch is of one). `it = iter(loader)` is a `grain.DatasetIterator`: `it.get_state()` gives a
    JSON-able dict and `it.set_state(state)` on a fresh iterator of the same loader (same config,
    arguments and worker count) resumes with exactly the batches that would have come next. In an
    orbax CheckpointManager use `save_args(it)` / `restore_args(it)` as one item of
    `ocp.args.Composite`. Close an iterator with worker processes with `it.close()`.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size is {batch_size}, expected >= 1')
  if not 0 <= shard_index < shard_count:
    raise ValueError(f'shard_index {shard_index} is not in 0..{shard_count - 1} (shard_count {shard_count})')
  if worker_count < 0 or read_threads < 0:
    raise ValueError(f'worker_count {worker_count} and read_threads {read_threads} must be >= 0')
  sizes = buckets(config)
  if len(sizes) > 1 and num_epochs is not None:
    raise ValueError(f'num_epochs {num_epochs} with {len(sizes)} training sizes; several sizes interleave '
                     'endlessly (num_epochs None)')
  # Blocks of B consecutive elements; process p takes blocks p, p + P, ...: its rows of each global
  # batch of P x B, so the global batch (process-major, as `jax.make_array_from_process_local_data`
  # assembles it) is the same for any process count. Batches are fixed before the workers, so they
  # do not depend on worker_count either.
  sources = [clip_source(bucket.roots) for bucket in sizes]
  blocks = [_blocks(bucket, source, batch_size, num_epochs, shuffle) for bucket, source in zip(sizes, sources)]
  if len(sizes) == 1:
    ds = blocks[0]
    if num_epochs is not None:
      ds = ds[:len(ds) // shard_count * shard_count]  # the same batch count on every process
    ds = ds[shard_index::shard_count]
    if len(ds) == 0:
      raise ValueError(f'{len(sources[0])} clips x {num_epochs} epochs leave no batch of {batch_size} for '
                       f'{shard_count} processes')
  else:
    per_epoch = [-(-len(source) // (batch_size * shard_count)) for source in sources]
    ds = InterleavedBuckets(blocks, per_epoch, config.seed, shard_index, shard_count)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(2, read_threads)))
  if worker_count > 0:
    _mark_flags_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count,
                                                     per_worker_buffer_size=worker_buffer_size))
  return ds


def _blocks(config: DataConfig, source: ClipSource, batch_size: int, num_epochs: int | None, shuffle: bool
            ) -> grain.MapDataset:
  """The clips of one size, sampled, in blocks of `batch_size` (all processes' blocks)."""
  ds = grain.MapDataset.source(source).seed(config.seed)
  if shuffle:
    ds = ds.shuffle()
  return ds.repeat(num_epochs).random_map(SampleClip(config)).batch(batch_size, drop_remainder=True)


class InterleavedBuckets(grain.MapDataset):
  """Endless global steps over several buckets' blocks, one bucket per step (module docstring).

  Step s of epoch e = s // N (N = sum of `per_epoch`) is position j = s % N of a permutation of
  `per_epoch[k]` copies of each bucket k drawn from (seed, e); it reads bucket k's global batch
  `e per_epoch[k] + (earlier positions of k in the permutation)`, this process's block of it.
  """

  def __init__(self, blocks: Sequence[grain.MapDataset], per_epoch: Sequence[int], seed: int, shard_index: int,
               shard_count: int):
    super().__init__(blocks)
    self._per_epoch = tuple(per_epoch)
    self._seed = seed
    self._shard = (shard_index, shard_count)
    self._orders: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    return sys.maxsize

  def _order(self, epoch: int) -> np.ndarray:
    """`[N]` bucket of each step of the epoch, with `[N]` the number of earlier steps of that bucket."""
    order = self._orders.get(epoch)
    if order is None:
      buckets_of_steps = np.random.default_rng([self._seed, epoch]).permutation(
          np.repeat(np.arange(len(self._per_epoch)), self._per_epoch))
      earlier = np.zeros_like(buckets_of_steps)
      for k in range(len(self._per_epoch)):
        mine = buckets_of_steps == k
        earlier[mine] = np.arange(mine.sum())
      order = np.stack([buckets_of_steps, earlier])
      self._orders = {epoch: order}   # the latest epoch only (reading threads share it)
    return order

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, position = divmod(index, sum(self._per_epoch))
    bucket, earlier = (int(v) for v in self._order(epoch)[:, position])
    shard_index, shard_count = self._shard
    return self._parents[bucket][(epoch * self._per_epoch[bucket] + earlier) * shard_count + shard_index]

  def __str__(self) -> str:
    return f'InterleavedBuckets(per_epoch={self._per_epoch})'


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


def _report_once(clip: str, reason: str) -> None:
  with _REPORTED_LOCK:
    if clip in _REPORTED:
      return
    _REPORTED.add(clip)
  logger.warning('bad clip %s: %s (its elements are zeros with valid=False)', clip, reason)
