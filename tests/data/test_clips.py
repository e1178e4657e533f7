"""The training clip pipeline (sa_jax/data/clips.py), the synthetic clips and tools/make_clips."""

import json
import logging
import shutil

import numpy as np
import pytest
from PIL import Image

from sa_jax.data import clip_files, clips, synthetic
from tools import make_clips

F, STRIDE, LENGTH, SIZE = 4, 2, 12, 32  # frames per example, stride, frames per clip, output W = H


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  """8 clips of 12 frames at 32x32."""
  out = tmp_path_factory.mktemp('clips') / 'clips'
  synthetic.write_clips(out, 8, num_frames=LENGTH, width=SIZE, height=SIZE, seed=0)
  return out


def _config(*roots, seed=0, size=SIZE):
  return clips.DataConfig(roots=roots, width=size, height=size, num_frames=F, stride=STRIDE, seed=seed)


def _batches(loader, count=None):
  it = iter(loader)
  out = [next(it) for _ in range(count)] if count else list(it)
  it.close()
  return out


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


# ----- sampling rule -----

@pytest.mark.parametrize('length', [40, 13, 8, 5])
def test_sample_frames_rule(length):
  n, stride = 4, 4
  clip = min(length, (n - 1) * stride + 1)
  starts, references = set(), set()
  for seed in range(200):
    ids, reference = clips.sample_frames(length, n, stride, np.random.default_rng(seed))
    start = int(ids[0])
    assert 0 <= start <= length - clip
    np.testing.assert_array_equal(ids, np.linspace(start, start + clip - 1, n).astype(int))
    assert reference not in ids and 0 <= reference < length
    starts.add(start)
    references.add(reference)
  assert starts == set(range(length - clip + 1))
  if length <= clip:  # one window: the reference is uniform over the frames it leaves out
    assert references == set(range(length)) - set(ids.tolist())


def test_sample_frames_short_clips():
  np.testing.assert_array_equal(clips.sample_frames(8, 4, 4, np.random.default_rng(0))[0], [0, 2, 4, 7])
  ids, reference = clips.sample_frames(5, 4, 4, np.random.default_rng(0))
  np.testing.assert_array_equal(ids, [0, 1, 2, 4])  # int() truncates 1.33 and 2.67
  assert reference == 3
  for length in (0, 1, 3, 4):  # every frame selected; the stride-2 retry cannot help either
    with pytest.raises(clips.ClipError, match='too few frames|no frames'):
      clips.sample_frames(length, 4, 4, np.random.default_rng(0))


# ----- reading one clip -----

def test_read_clip_resizes_and_takes_the_reference_row(tmp_path):
  folder, = synthetic.write_clips(tmp_path / 'c', 1, num_frames=LENGTH, width=40, height=24, seed=3)
  example = clips.read_clip(clip_files.FolderClip(str(folder)), _config(folder), np.random.default_rng(7))
  ids, reference = clips.sample_frames(LENGTH, F, STRIDE, np.random.default_rng(7))

  def expected(kind, i):
    with Image.open(folder / kind / f'frame_{i}.png') as image:
      return np.asarray(image.resize((SIZE, SIZE), Image.Resampling.BICUBIC))

  assert example['frames'].shape == (F, SIZE, SIZE, 3) and example['frames'].dtype == np.uint8
  np.testing.assert_array_equal(example['frames'], [expected('images', i) for i in ids])
  np.testing.assert_array_equal(example['poses'], [expected('poses', i) for i in ids])
  np.testing.assert_array_equal(example['face_masks'][..., 0], [expected('faces', i) for i in ids])
  np.testing.assert_array_equal(example['reference'], expected('images', reference))
  table = np.load(folder / 'face_embeddings.npy')
  np.testing.assert_array_equal(example['face_embedding'], table[reference])
  assert example['face_embedding'].dtype == np.float32

  (folder / 'face_embeddings.npy').unlink()
  np.save(folder / 'face_embedding.npy', table[0])
  example = clips.read_clip(clip_files.FolderClip(str(folder)), _config(folder), np.random.default_rng(7))
  np.testing.assert_array_equal(example['face_embedding'], table[0])


def test_read_clip_keeps_frames_of_the_output_size(root):
  folder = root / '00000'
  example = clips.read_clip(clip_files.FolderClip(str(folder)), _config(root), np.random.default_rng(1))
  ids, _ = clips.sample_frames(LENGTH, F, STRIDE, np.random.default_rng(1))
  with Image.open(folder / 'images' / f'frame_{ids[1]}.png') as image:
    np.testing.assert_array_equal(example['frames'][1], np.asarray(image))


# ----- loader: determinism, workers, sharding, epochs, state -----

def test_same_seed_same_batches_whatever_the_worker_count(root):
  config = _config(root)
  reference = _batches(clips.make_loader(config, batch_size=2, num_epochs=1))
  assert len(reference) == 4 and reference[0]['frames'].shape == (2, F, SIZE, SIZE, 3)
  _assert_same(_batches(clips.make_loader(config, batch_size=2, num_epochs=1, read_threads=0)), reference)
  other = _batches(clips.make_loader(_config(root, seed=1), batch_size=2, num_epochs=1))
  assert any((a['clip'] != b['clip']).any() or (a['frames'] != b['frames']).any()
             for a, b in zip(reference, other))

  loader = clips.make_loader(config, batch_size=2, num_epochs=1, worker_count=2)
  it = iter(loader)
  first = [next(it), next(it)]
  state = it.get_state()
  rest = list(it)
  it.close()
  _assert_same(first + rest, reference)
  resumed = iter(loader)
  resumed.set_state(state)
  _assert_same(list(resumed), reference[2:])
  resumed.close()


def test_shards_split_the_global_stream(root):
  config = _config(root)
  stream = _batches(clips.make_loader(config, batch_size=1, num_epochs=1))
  shards = [_batches(clips.make_loader(config, batch_size=1, num_epochs=1, shard_index=i, shard_count=2))
            for i in range(2)]
  ids = [{int(b['clip'][0]) for b in shard} for shard in shards]
  assert not ids[0] & ids[1] and ids[0] | ids[1] == set(range(8))
  _assert_same(stream[0::2], shards[0])
  _assert_same(stream[1::2], shards[1])


def test_process_slices_assemble_the_global_batch(root):
  """Process p's local batch is rows p B .. (p + 1) B - 1 of the one-process global batch of 2 B."""
  config = _config(root)
  whole = _batches(clips.make_loader(config, batch_size=4, num_epochs=1))
  parts = [_batches(clips.make_loader(config, batch_size=2, num_epochs=1, shard_index=i, shard_count=2))
           for i in range(2)]
  assert len(whole) == len(parts[0]) == len(parts[1]) == 2
  for g, p0, p1 in zip(whole, *parts):
    for name in g:
      np.testing.assert_array_equal(g[name], np.concatenate([p0[name], p1[name]]), err_msg=name)


def test_new_order_each_epoch(root):
  order = [int(b['clip'][0]) for b in _batches(clips.make_loader(_config(root), batch_size=1, num_epochs=3))]
  epochs = [order[i:i + 8] for i in range(0, 24, 8)]
  assert all(sorted(epoch) == list(range(8)) for epoch in epochs)
  assert epochs[0] != epochs[1] != epochs[2]
  plain = _batches(clips.make_loader(_config(root), batch_size=1, num_epochs=1, shuffle=False))
  assert [int(b['clip'][0]) for b in plain] == list(range(8))


def test_state_restore_resumes_exactly(root):
  loader = clips.make_loader(_config(root), batch_size=3)  # endless; batches cross epoch ends
  it = iter(loader)
  for _ in range(3):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  expected = [next(it) for _ in range(3)]
  resumed = iter(loader)
  resumed.set_state(state)
  _assert_same([next(resumed) for _ in range(3)], expected)


def test_state_in_an_orbax_checkpoint_manager(root, tmp_path):
  import orbax.checkpoint as ocp
  loader = clips.make_loader(_config(root), batch_size=2)
  it = iter(loader)
  next(it)
  state = {'step': np.arange(3)}
  with ocp.CheckpointManager(tmp_path / 'ckpt') as manager:
    manager.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=clips.save_args(it)))
    manager.wait_until_finished()
  expected = [next(it), next(it)]
  resumed = iter(loader)
  with ocp.CheckpointManager(tmp_path / 'ckpt') as manager:
    restored = manager.restore(1, args=ocp.args.Composite(state=ocp.args.StandardRestore(state),
                                                          data=clips.restore_args(resumed)))
  np.testing.assert_array_equal(restored['state']['step'], state['step'])
  _assert_same([next(restored['data']), next(restored['data'])], expected)


# ----- bad clips -----

def _truncate_images(folder):
  for path in (folder / 'images').iterdir():
    path.write_bytes(path.read_bytes()[:60])


def _rgb_masks(folder):
  for path in (folder / 'faces').iterdir():
    Image.open(path).convert('RGB').save(path)


def _rgba_images(folder):
  for path in (folder / 'images').iterdir():
    Image.open(path).convert('RGBA').save(path)


def _sizes_differ(folder):
  for i in range(LENGTH):
    path = folder / 'poses' / f'frame_{i}.png'
    Image.open(path).resize((SIZE + i, SIZE)).save(path)


def _embeddings(value):
  def write(folder):
    np.save(folder / 'face_embeddings.npy', value, allow_pickle=True)
  return write


CORRUPTIONS = {
    'numbering has a gap': lambda f: (f / 'images' / 'frame_5.png').unlink(),
    'poses/ has 11 frames, images/ has 12': lambda f: (f / 'poses' / f'frame_{LENGTH - 1}.png').unlink(),
    'is unreadable': _truncate_images,
    'has mode RGB, expected L': _rgb_masks,
    'has mode RGBA, expected RGB': _rgba_images,
    'x32, poses/frame_': _sizes_differ,
    'too few frames': lambda f: [(f / k / f'frame_{i}.png').unlink()
                                 for k in ('images', 'poses', 'faces') for i in range(F, LENGTH)],
    'neither face_embeddings.npy nor face_embedding.npy': lambda f: (f / 'face_embeddings.npy').unlink(),
    'is not finite': _embeddings(np.full((LENGTH, 512), np.nan, np.float32)),
    'expected float32 [12, 512]': _embeddings(np.zeros((LENGTH - 1, 512), np.float32)),
    'face_embeddings.npy is unreadable': _embeddings(np.array([None, 'x'], object)),
    'cannot list images/': lambda f: shutil.rmtree(f / 'images'),
}


def test_bad_clips_give_invalid_elements_and_one_warning_each(tmp_path, caplog):
  folders = synthetic.write_clips(tmp_path / 'clips', len(CORRUPTIONS) + 1, num_frames=LENGTH, width=SIZE,
                                  height=SIZE, seed=1)
  for folder, corrupt in zip(folders[1:], CORRUPTIONS.values()):
    corrupt(folder)
  listing = tmp_path / 'clips.txt'
  listing.write_text('# clips\n' + ''.join(f'clips/{f.name}\n' for f in folders) + 'clips/missing\n')
  with caplog.at_level(logging.WARNING, logger='sa_jax.data.clips'):
    batches = _batches(clips.make_loader(_config(listing), batch_size=2, num_epochs=3, shuffle=False))
  assert len(batches) == 3 * (len(folders) + 1) // 2
  element = {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}
  valid = element['valid'].astype(bool)
  assert valid.tolist() == ([True] + [False] * (len(CORRUPTIONS) + 1)) * 3  # + the missing folder
  assert element['frames'].shape[1:] == (F, SIZE, SIZE, 3)
  for key in ('frames', 'poses', 'face_masks', 'reference', 'face_embedding'):
    assert not element[key][~valid].any(), key
  warnings = [r.getMessage() for r in caplog.records]
  for folder, reason in zip(folders[1:] + [tmp_path / 'clips' / 'missing'], [*CORRUPTIONS, 'cannot list']):
    mine = [w for w in warnings if f'bad clip {folder}:' in w]
    assert len(mine) == 1 and reason in mine[0], (reason, mine)


# ----- clip lists and config -----

def test_list_clips(root, tmp_path):
  (root.parent / 'notes.txt').write_text('x')
  (tmp_path / 'list.txt').write_text(f'\n# comment\n{root / "00003"}\n')
  shutil.copytree(root / '00000', tmp_path / '.partial')
  assert clip_files.list_clips([root]) == sorted(root.iterdir())
  assert clip_files.list_clips([root / '00001', tmp_path / 'list.txt']) == [root / '00001', root / '00003']
  assert clip_files.list_clips([tmp_path / 'list.txt'])[0].is_dir()
  with pytest.raises(ValueError, match='data root .*nowhere does not exist'):
    clip_files.list_clips([tmp_path / 'nowhere'])
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match='no clip folders in'):
    clip_files.list_clips([tmp_path / 'empty'])


def test_config_and_loader_checks(root):
  with pytest.raises(ValueError, match='DataConfig.width is 0, expected >= 1'):
    clips.DataConfig(roots=[root], width=0)
  with pytest.raises(ValueError, match='DataConfig.roots is empty'):
    clips.DataConfig(roots=[])
  assert clips.DataConfig(roots=root).roots == (str(root),)
  with pytest.raises(ValueError, match='shard_index 2 is not in 0..1'):
    clips.make_loader(_config(root), batch_size=1, shard_index=2, shard_count=2)
  with pytest.raises(ValueError, match='leave no batch of 1 for 9 processes'):
    clips.make_loader(_config(root), batch_size=1, num_epochs=1, shard_count=9)


def test_sizes_interleave_one_per_step_each_epoch(root, tmp_path):
  """Roots written WxH:path are buckets of their size; each epoch interleaves all batches of every
  bucket in a seeded random order, one size per step; the state resumes and processes agree."""
  other = tmp_path / 'wide'
  synthetic.write_clips(other, 3, num_frames=LENGTH, width=48, height=24, seed=1)
  config = _config(root, f'64x32:{other}')
  assert [(b.width, b.height, b.roots, b.seed) for b in clips.buckets(config)] == [
      (SIZE, SIZE, (str(root),), 0), (64, 32, (str(other),), 1)]
  # Global batches of 2: ceil(8 / 2) = 4 square and ceil(3 / 2) = 2 wide batches an epoch.
  steps = _batches(clips.make_loader(config, batch_size=2), 18)
  shapes = [b['frames'].shape[2:4] for b in steps]
  assert set(shapes) == {(SIZE, SIZE), (32, 64)}
  epochs = [shapes[i:i + 6] for i in range(0, 18, 6)]
  assert all(e.count((32, 64)) == 2 and e.count((SIZE, SIZE)) == 4 for e in epochs)
  assert len({tuple(e) for e in epochs}) > 1, 'a new interleaving each epoch'
  # Each bucket's own stream goes on across epochs: the wide clips, 3 an epoch of that bucket.
  wide = [int(c) for b in steps if b['frames'].shape[3] == 64 for c in b['clip']]
  assert all(sorted(wide[i:i + 3]) == [0, 1, 2] for i in range(0, 12 - 3, 3))
  # Process p's rows of each global batch, whatever the process count.
  parts = [_batches(clips.make_loader(config, batch_size=1, shard_index=i, shard_count=2), 18) for i in range(2)]
  for g, p0, p1 in zip(steps, *parts):
    for name in g:
      np.testing.assert_array_equal(g[name], np.concatenate([p0[name], p1[name]]), err_msg=name)
  # The position resumes exactly.
  loader = clips.make_loader(config, batch_size=2)
  it = iter(loader)
  for _ in range(5):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  resumed = iter(loader)
  resumed.set_state(state)
  _assert_same([next(resumed) for _ in range(4)], steps[5:9])
  with pytest.raises(ValueError, match='num_epochs 1 with 2 training sizes'):
    clips.make_loader(config, batch_size=2, num_epochs=1)
  assert clips.split_root('576x1024:/data/vec.txt') == ((576, 1024), '/data/vec.txt')
  assert clips.split_root('/data/rec.txt') == (None, '/data/rec.txt')
  assert clips.check_roots([f'64x32:{other}', f'64x32:{other}/missing']) == [f'data root {other}/missing does not exist']


# ----- synthetic clips and sa-make-clips -----

def test_synthetic_clips_are_deterministic(tmp_path):
  a, = synthetic.write_clips(tmp_path / 'a', 1, num_frames=3, width=16, height=16, seed=5)
  b, = synthetic.write_clips(tmp_path / 'b', 1, num_frames=3, width=16, height=16, seed=5)
  for name in ('images/frame_2.png', 'poses/frame_0.png', 'faces/frame_1.png', 'face_embeddings.npy'):
    assert (a / name).read_bytes() == (b / name).read_bytes(), name
  with Image.open(a / 'faces' / 'frame_0.png') as mask:
    assert mask.mode == 'L' and set(np.unique(mask)) == {0, 255}


def test_make_clips_tool(tmp_path, capsys):
  out = tmp_path / 'out'
  make_clips.main([str(out), '--clips', '2', '--frames', '6', '--width', '24', '--height', '16'])
  assert sorted(p.name for p in out.iterdir()) == ['00000', '00001']
  clip = clip_files.FolderClip(str(out / '00001'))
  example = clips.read_clip(clip, _config(out, size=16), np.random.default_rng(0))
  assert example['frames'].shape == (F, 16, 16, 3)
  with pytest.raises(SystemExit, match=r'sa-make-clips: error: output .*out exists and is not an empty'):
    make_clips.main([str(out)])
  with pytest.raises(SystemExit):
    make_clips.main([str(tmp_path / 'other'), '--frames', '0'])
  assert 'sa-make-clips: error: --frames is 0, expected >= 1' in capsys.readouterr().err
