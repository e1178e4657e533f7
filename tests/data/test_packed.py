"""Packed training clips (sa_jax/data/packed.py, clip_files.py) and tools/pack_clips (sa-pack-clips)."""

import json
import logging

import numpy as np
import pytest
from PIL import Image

from sa_jax.data import clip_files, clips, packed, synthetic
from tools import pack_clips

F, STRIDE, LENGTH, SIZE = 4, 2, 12, 32  # frames per example, stride, frames per clip, output W = H


def _config(*roots, seed=0):
  return clips.DataConfig(roots=roots, width=SIZE, height=SIZE, num_frames=F, stride=STRIDE, seed=seed)


def _batches(loader):
  it = iter(loader)
  out = list(it)
  it.close()
  return out


@pytest.fixture(scope='module')
def roots(tmp_path_factory):
  """A folder of 5 clips at the training size, and a list file naming a 40x24 clip with one embedding."""
  base = tmp_path_factory.mktemp('clips')
  synthetic.write_clips(base / 'clips', 5, num_frames=LENGTH, width=SIZE, height=SIZE, seed=0)
  other, = synthetic.write_clips(base / 'other', 1, num_frames=LENGTH, width=40, height=24, seed=1)
  np.save(other / 'face_embedding.npy', np.load(other / 'face_embeddings.npy')[3])
  (other / 'face_embeddings.npy').unlink()
  (base / 'list.txt').write_text('other/00000\n')
  return [base / 'clips', base / 'list.txt']


@pytest.fixture(scope='module')
def packed_dir(roots, tmp_path_factory):
  out = tmp_path_factory.mktemp('packed') / 'packed'
  report = packed.pack(packed.check_pack(roots, out, shard_bytes=60_000, threads=2), progress=False)
  assert (report.clips, report.packed, report.left_out) == (6, 6, ())
  last = f'{packed.DATASET}-train.array_record-{report.shards - 1:05d}-of-{report.shards:05d}'
  assert report.shards > 1 and (out / last).is_file()
  return out


def test_packed_and_folder_sources_give_the_same_elements(roots, packed_dir):
  source = clips.clip_source([packed_dir])
  folders = clip_files.list_clips(roots)
  assert len(source) == len(folders) == 6
  for j, folder in enumerate(folders):
    index, clip = source[j]
    assert index == j and clip.label.startswith(f'{folder} (record {j} of ')
    for seed in range(3):
      a = clips.read_clip(clip, _config(packed_dir), np.random.default_rng(seed))
      b = clips.read_clip(clip_files.FolderClip(str(folder)), _config(*roots), np.random.default_rng(seed))
      for key in b:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)

  expected = _batches(clips.make_loader(_config(*roots, seed=3), batch_size=2, num_epochs=2))
  got = _batches(clips.make_loader(_config(packed_dir, seed=3), batch_size=2, num_epochs=2, worker_count=2))
  assert len(got) == len(expected) == 6
  for x, y in zip(got, expected):
    assert x.keys() == y.keys()
    for key in x:
      assert x[key].dtype == y[key].dtype and x[key].tobytes() == y[key].tobytes(), key
  assert all(b['valid'].all() for b in got)


def test_a_bad_clip_is_reported_and_left_out(tmp_path, caplog):
  folders = synthetic.write_clips(tmp_path / 'clips', 5, num_frames=LENGTH, width=SIZE, height=SIZE, seed=2)
  last = folders[1] / 'images' / f'frame_{LENGTH - 1}.png'   # a frame training may never sample
  last.write_bytes(last.read_bytes()[:60])
  table = np.load(folders[2] / 'face_embeddings.npy')
  table[7, 0] = np.nan
  np.save(folders[2] / 'face_embeddings.npy', table)
  mask = folders[3] / 'faces' / 'frame_2.png'
  Image.open(mask).convert('RGB').save(mask)
  reasons = {folders[1]: f'images/frame_{LENGTH - 1}.png is unreadable',
             folders[2]: 'face_embeddings.npy: the embedding of frame 7 is not finite',
             folders[3]: 'faces/frame_2.png has mode RGB, expected L'}

  out = tmp_path / 'packed'
  with caplog.at_level(logging.WARNING, logger='sa_jax.data.packed'):
    report = packed.pack(packed.check_pack([tmp_path / 'clips'], out), progress=False)
  assert (report.clips, report.packed) == (5, 2)
  assert [c for c, _ in report.left_out] == [str(f) for f in reasons]
  for (_, reason), expected in zip(report.left_out, reasons.values()):
    assert expected in reason
  manifest = json.loads((out / packed.REPORT).read_text())
  assert manifest['left_out'] == [{'clip': c, 'reason': r} for c, r in report.left_out]
  warnings = [r.getMessage() for r in caplog.records]
  for folder, reason in reasons.items():
    assert any(f'bad clip {folder}: {reason}' in w for w in warnings), (reason, warnings)
  source = clips.clip_source([out])
  assert [source[j][1].label.split(' (record')[0] for j in range(len(source))] == [str(folders[0]),
                                                                                 str(folders[4])]


def _error(argv, capsys):
  with pytest.raises(SystemExit) as exit_info:
    pack_clips.main(argv)
  if exit_info.value.code == 2:   # argparse: the usage line, then the error
    text = capsys.readouterr().err.strip().splitlines()[-1]
  else:
    text = str(exit_info.value)
  assert '\n' not in text and text.startswith('sa-pack-clips: error: '), text
  return text


def test_command_errors_are_one_line(roots, packed_dir, tmp_path, capsys):
  out = tmp_path / 'out'
  assert 'root /nowhere does not exist' in _error(['/nowhere', '--out', str(out)], capsys)
  assert f'root {packed_dir} is a packed dataset already' in _error([str(packed_dir), '--out', str(out)], capsys)
  assert '--shard-size is 0, expected >= 1' in _error([str(roots[0]), '--out', str(out), '--shard-size', '0'],
                                                     capsys)
  foreign = tmp_path / 'foreign'
  foreign.mkdir()
  (foreign / 'notes.txt').write_text('mine')
  assert f'output {foreign} exists; pass --overwrite' in _error([str(roots[0]), '--out', str(foreign)], capsys)
  text = _error([str(roots[0]), '--out', str(foreign), '--overwrite'], capsys)
  assert 'is not a packed clip dataset' in text and (foreign / 'notes.txt').read_text() == 'mine'
  assert 'is or holds the input' in _error([str(roots[0]), '--out', str(roots[0].parent)], capsys)
  bad = tmp_path / 'bad'
  synthetic.write_clips(bad, 2, num_frames=3, width=SIZE, height=SIZE)
  for folder in bad.iterdir():
    (folder / 'face_embeddings.npy').unlink()
  assert 'none of the 2 clips could be packed' in _error([str(bad), '--out', str(out)], capsys)
  assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ['bad', 'foreign']

  broken = tmp_path / 'broken'
  broken.mkdir()
  (broken / 'dataset_info.json').write_text('{')
  problems = clips.check_roots([packed_dir, broken, tmp_path / 'nowhere'])
  assert len(problems) == 2 and f'data root {broken} is not a readable packed clip dataset' in problems[0]
  assert problems[1] == f'data root {tmp_path / "nowhere"} does not exist'


def test_overwrite_replaces_only_its_own_output(roots, tmp_path):
  out = tmp_path / 'out'
  out.mkdir()   # an empty folder is fine
  pack_clips.main([str(roots[1]), '--out', str(out)])
  assert json.loads((out / packed.REPORT).read_text())['packed'] == 1
  pack_clips.main([str(roots[0]), '--out', str(out), '--overwrite'])
  assert json.loads((out / packed.REPORT).read_text())['packed'] == 5
  assert len(clips.clip_source([out])) == 5
  assert sorted(p.name for p in tmp_path.iterdir()) == ['out']   # no staging folder left
  (out / 'extra.txt').write_text('x')
  with pytest.raises(SystemExit, match='is not a packed clip dataset'):
    pack_clips.main([str(roots[1]), '--out', str(out), '--overwrite'])
  assert (out / 'extra.txt').exists() and len(clips.clip_source([out])) == 5
