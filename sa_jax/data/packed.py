"""Training clips packed into ArrayRecord shards: a TFDS dataset whose records are whole clips.

`check_pack` and `pack` (the `sa-pack-clips` command) write one from clip folders; a `data.roots`
entry naming its folder is read through `PackedClips` by the same sampling as clip folders
(`sa_jax.data.clips`), so the same clips and seed give the same elements. No TensorFlow: the
features are byte strings and the file format ArrayRecord, which TFDS reads with numpy alone.

A record holds the files of one clip, byte for byte (nothing re-encoded):
  name            str        the clip folder it was packed from
  images          bytes [L]  images/frame_<i>.png, i = 0..L-1
  poses           bytes [L]  poses/frame_<i>.png
  faces           bytes [L]  faces/frame_<i>.png
  embedding_file  str        face_embeddings.npy or face_embedding.npy
  embedding       bytes      that file

Packing checks each clip as training reads it, over all its frames and embedding rows
(`clip_files.pack_clip`; the frame count against the sampled window is left to training). A bad
clip is logged with its path and the reason and left out; `pack.json` lists it.

The records are streamed into the shards in the order of the roots' clips (one pass, a few clips in
memory), and TFDS's `write_metadata` describes them. (TFDS's own builders sort every record through
a shuffler whose spill files past 1 GB need TensorFlow, and which keeps an unshuffled dataset in
memory.)

Packed folder:
  dataset_info.json, features.json              TFDS's description of the dataset
  sa_jax_clips-train.array_record-<i>-of-<n>    shards; records in the order of the roots' clips
  pack.json                                     roots, clips packed, clips left out and why
"""

import collections
import concurrent.futures
import dataclasses
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from array_record.python.array_record_module import ArrayRecordWriter
from tqdm import tqdm

from sa_jax import outputs
from sa_jax.data import clip_files

logger = logging.getLogger(__name__)

DATASET = 'sa_jax_clips'
REPORT = 'pack.json'
WRITTEN_BY = f'sa-pack-clips ({outputs.SIGNATURE})'
VERSION = '1.0.0'
_SPLIT = 'train'
_SHARD = re.compile(rf'{DATASET}-{_SPLIT}\.array_record-\d{{5}}-of-\d{{5}}')
_TFDS_FILES = ('dataset_info.json', 'features.json')


def features() -> tfds.features.FeaturesDict:
  """The record's features (module docstring)."""
  png = tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_))
  return tfds.features.FeaturesDict({
      'name': tfds.features.Text(), 'images': png, 'poses': png, 'faces': png,
      'embedding_file': tfds.features.Text(), 'embedding': tfds.features.Tensor(shape=(), dtype=np.object_)})


@dataclasses.dataclass(frozen=True)
class PackReport:
  """What `pack` did.

  Attributes:
    out: the packed folder.
    clips: clip folders listed by the roots.
    packed: clips packed (records).
    shards: ArrayRecord files.
    num_bytes: their records' bytes.
    left_out: (clip folder, reason) of each bad clip, in order.
  """
  out: Path
  clips: int
  packed: int
  shards: int
  num_bytes: int
  left_out: tuple[tuple[str, str], ...]


def is_packed(root: str | os.PathLike) -> bool:
  """Whether a data root is a TFDS dataset folder (then read by `PackedClips`, not as clip folders)."""
  return (Path(root) / 'dataset_info.json').is_file()


class PackedClips:
  """Random access to the clips of a packed folder: item j is record j as a `clip_files.PackedClip`.

  Raises (on construction):
    ValueError: the folder is not a readable dataset written by `pack`.
  """

  def __init__(self, folder: str | os.PathLike):
    self._folder = os.fspath(folder)
    try:
      builder = tfds.builder_from_directory(self._folder)
      info, self._records = builder.info, builder.as_data_source(split=_SPLIT)
    except Exception as err:  # TFDS raises OSError, KeyError, ValueError, json errors... on broken folders
      raise ValueError(f'data root {self._folder} is not a readable packed clip dataset '
                       f'({type(err).__name__}: {err})') from None
    names = sorted(info.features.keys())
    if info.name != DATASET or names != sorted(features().keys()):
      raise ValueError(f'data root {self._folder} is the TFDS dataset {info.name!r} with features {names}, '
                       f'not clips packed by sa-pack-clips ({DATASET!r} with {sorted(features().keys())})')

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> clip_files.PackedClip:
    record = self._records[index]
    return clip_files.PackedClip(
        label=f'{record["name"].decode()} (record {index} of {self._folder})',
        frames={kind: record[kind] for kind in clip_files.MODES},
        embedding_file=record['embedding_file'].decode(), embedding_bytes=record['embedding'])

  def __repr__(self) -> str:
    return f'PackedClips({self._folder}, {len(self)} clips)'


@dataclasses.dataclass(frozen=True)
class PackJob:
  """A checked `pack` run (`check_pack`).

  Attributes:
    roots: the roots, as given.
    folders: their clip folders, in order.
    out: the packed folder.
    shard_bytes: a shard is closed once its records reach this size.
    threads: clips read and checked at once.
    overwrite: replace an earlier output of `pack`.
  """
  roots: tuple[str, ...]
  folders: tuple[Path, ...]
  out: Path
  shard_bytes: int
  threads: int
  overwrite: bool


def check_pack(roots: Sequence[str | os.PathLike], out: str | os.PathLike, *, shard_bytes: int = 2**30,
               threads: int = 4, overwrite: bool = False) -> PackJob:
  """Every check of a `pack` run, before any clip is read: the roots (clip folders, folders of clip
  folders or clip-list files, `clip_files.list_clips`; a packed folder is refused), the options, and
  `out`, which must be absent, an empty folder, or with `overwrite` an earlier output of `pack`
  (`is_pack_output`), and neither be nor hold a root.

  Raises:
    ValueError: a bad root or option.
    FileExistsError: `out` exists and may not be replaced.
  """
  roots = tuple(os.fspath(root) for root in roots)
  for root in roots:
    if is_packed(root):
      raise ValueError(f'root {root} is a packed dataset already (expected a clip folder, a folder of clip '
                       'folders or a text file listing clip folders)')
  if shard_bytes < 1:
    raise ValueError(f'shard_bytes is {shard_bytes}, expected >= 1')
  if threads < 1:
    raise ValueError(f'threads is {threads}, expected >= 1')
  job = PackJob(roots=roots, folders=tuple(clip_files.list_clips(roots)), out=Path(out), shard_bytes=shard_bytes,
                threads=threads, overwrite=overwrite)
  _check_out(job)
  return job


def pack(job: PackJob, *, progress: bool = True) -> PackReport:
  """Packs the clip folders of a checked job into its packed folder (module docstring): written into
  a hidden sibling of `job.out`, renamed into place once complete.

  Args:
    job: from `check_pack`.
    progress: a progress bar over the clips on stderr.

  Raises:
    ValueError: no good clip at all.
  """
  job.out.parent.mkdir(parents=True, exist_ok=True)
  staging = outputs.staging_path(job.out)
  staging.mkdir()
  try:
    with tqdm(total=len(job.folders), desc='packing', unit='clip', disable=None if progress else True) as bar:
      shard_lengths, num_bytes, left_out = _write_shards(job, staging, bar.update)
    if not shard_lengths:
      raise ValueError(f'none of the {len(job.folders)} clips could be packed (reasons above)')
    template = tfds.core.ShardedFileTemplate(data_dir=staging, dataset_name=DATASET, split=_SPLIT,
                                             filetype_suffix='array_record')
    tfds.folder_dataset.write_metadata(
        data_dir=staging, features=features(), version=VERSION, filename_template=template, check_data=False,
        split_infos=[tfds.core.SplitInfo(name=_SPLIT, shard_lengths=shard_lengths, num_bytes=num_bytes)],
        description=__doc__.splitlines()[0], disable_shuffling=True)   # records in the roots' order
    report = PackReport(out=job.out, clips=len(job.folders), packed=sum(shard_lengths), shards=len(shard_lengths),
                        num_bytes=num_bytes, left_out=tuple(left_out))
    (staging / REPORT).write_text(json.dumps({
        'written_by': WRITTEN_BY, 'roots': job.roots, 'clips': report.clips, 'packed': report.packed,
        'shards': report.shards, 'bytes': num_bytes,
        'left_out': [{'clip': c, 'reason': r} for c, r in report.left_out]}, indent=1))
    _check_out(job)
    outputs.replace(staging, job.out)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  logger.info('packed %d of %d clips (%.1f MiB) into %s (%d shards)', report.packed, report.clips,
              num_bytes / 2**20, job.out, report.shards)
  if report.left_out:
    logger.warning('left out %d bad clips (listed in %s):\n%s', len(report.left_out), job.out / REPORT,
                   '\n'.join(f'  {clip}: {reason}' for clip, reason in report.left_out))
  return report


def is_pack_output(folder: Path) -> bool:
  """Whether `folder` is an earlier output of `pack`: its signed pack.json and only the files it writes."""
  try:
    manifest = json.loads((folder / REPORT).read_text())
  except (OSError, ValueError):
    return False
  return (isinstance(manifest, dict) and manifest.get('written_by') == WRITTEN_BY
          and all(p.is_file() and (p.name in (REPORT, *_TFDS_FILES) or _SHARD.fullmatch(p.name))
                  for p in folder.iterdir()))


def _check_out(job: PackJob) -> None:
  if job.out.is_dir() and not job.out.is_symlink() and not any(job.out.iterdir()):
    outputs.check_not_input(job.out, job.roots)   # an empty folder: fine
  else:
    outputs.check_target(job.out, overwrite=job.overwrite, ours=is_pack_output, inputs=job.roots,
                         what='a packed clip dataset (no pack.json of sa-pack-clips, or other files in it)')
  outputs.check_space(job.out.parent, 0, 'the packed clips')


def _write_shards(job: PackJob, staging: Path, advance: Callable[[], object]
                  ) -> tuple[list[int], int, list[tuple[str, str]]]:
  """Writes the good clips of `job`, in order, into the shards `<DATASET>-train.array_record-<i>-of-<n>`
  in `staging`, starting a new one once a shard's records reach `job.shard_bytes`; `advance()` after
  each clip.

  Returns:
    records per shard, bytes of all records, (clip folder, reason) of each bad clip.
  """
  serialize = features().serialize_example
  lengths, sizes, left_out = [], [], []
  writer = None
  for folder, clip in _pack_in_order(job.folders, job.threads):
    advance()
    if isinstance(clip, clip_files.ClipError):
      logger.warning('bad clip %s: %s (left out)', folder, clip)
      left_out.append((os.fspath(folder), str(clip)))
      continue
    if writer is None:
      writer = ArrayRecordWriter(os.fspath(staging / f'shard-{len(lengths)}'), 'group_size:1')  # as TFDS
      lengths.append(0)
      sizes.append(0)
    record = serialize({'name': clip.label, **clip.frames, 'embedding_file': clip.embedding_file,
                        'embedding': clip.embedding_bytes})
    writer.write(record)
    lengths[-1] += 1
    sizes[-1] += len(record)
    if sizes[-1] >= job.shard_bytes:
      writer.close()
      writer = None
  if writer is not None:
    writer.close()
  for i in range(len(lengths)):
    os.replace(staging / f'shard-{i}', staging / f'{DATASET}-{_SPLIT}.array_record-{i:05d}-of-{len(lengths):05d}')
  return lengths, sum(sizes), left_out


def _pack_in_order(folders: Sequence[Path], threads: int
                   ) -> Iterator[tuple[Path, clip_files.PackedClip | clip_files.ClipError]]:
  """`(folder, clip_files.pack_clip(folder) or its ClipError)` in order, `threads` clips at a time (at
  most 2 x threads clips in memory)."""
  def attempt(folder):
    try:
      return folder, clip_files.pack_clip(folder)
    except clip_files.ClipError as err:
      return folder, err

  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    pending = collections.deque()
    for folder in folders:
      pending.append(pool.submit(attempt, folder))
      if len(pending) >= 2 * threads:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()
