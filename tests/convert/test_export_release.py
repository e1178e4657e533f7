"""convert.release.export_release: trained params -> the release's `.pth` files, read back strictly;
its manifest, and what it refuses to replace."""

import hashlib
import json
import os
import re
import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from convert import release
from sa_jax import checkpoint
from tools import train as train_tool


@pytest.fixture(scope='module')
def trained(checkpoint_dir):
  """`(params, config)` of the trained networks of the converted golden checkpoint."""
  return checkpoint.load(checkpoint_dir, tuple(release.TRAINED_FILES))


def _read_back(out_dir, config, dtype=np.float32, names=tuple(release.TRAINED_FILES)):
  return {name: release.CONVERTERS[name].load(out_dir / release.TRAINED_FILES[name],
                                              getattr(config.models, name), dtype) for name in names}


def _assert_bit_equal(got, want):
  got, want = traverse_util.flatten_dict(got), traverse_util.flatten_dict(want)
  assert set(got) == set(want)
  for path, value in want.items():
    a, b = np.ascontiguousarray(got[path]), np.ascontiguousarray(value)
    assert a.dtype == b.dtype and a.shape == b.shape, path
    np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8), err_msg=str(path))


def test_round_trip_of_sharded_params_is_bit_exact(trained, tmp_path):
  params, config = trained
  mesh = Mesh(np.array(jax.devices()), ('d',))
  shard = lambda x: jax.device_put(x, NamedSharding(mesh, P('d') if x.shape[:1] and x.shape[0] % mesh.size == 0
                                                    else P()))
  on_device = jax.tree.map(shard, params)
  written = release.export_release(on_device, tmp_path / 'out')
  assert [p.name for p in written] == ['unet.pth', 'pose_net.pth', 'face_encoder.pth']
  assert sorted(os.listdir(tmp_path / 'out')) == sorted([p.name for p in written] + [release.MANIFEST]), \
      'no temporary files left'
  back = _read_back(tmp_path / 'out', config)
  for name in release.TRAINED_FILES:
    _assert_bit_equal(back[name], params[name])


def test_bfloat16(trained, tmp_path):
  import torch
  params, config = trained
  release.export_release(params, tmp_path, dtype=ml_dtypes.bfloat16)
  tensors = torch.load(tmp_path / 'pose_net.pth', weights_only=True)
  assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
  back = _read_back(tmp_path, config, ml_dtypes.bfloat16, names=('pose_net', 'face_encoder'))  # UNet: same path
  for name, tree in back.items():
    _assert_bit_equal(tree, jax.tree.map(lambda x: np.asarray(x).astype(ml_dtypes.bfloat16), params[name]))


def test_refuses_to_overwrite_and_fails_whole(trained, tmp_path, monkeypatch):
  params, _ = trained
  release.export_release(params, tmp_path)
  before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
  with pytest.raises(FileExistsError, match='unet.pth'):
    release.export_release(params, tmp_path)

  def broken(tree, dtype):
    raise RuntimeError('disk full')
  monkeypatch.setitem(release.CONVERTERS, 'face_encoder', release.Converter(None, broken))
  with pytest.raises(RuntimeError, match='disk full'):
    release.export_release(params, tmp_path, overwrite=True)
  assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before, 'old files kept, no partial files'

  with pytest.raises(ValueError, match='pose_net'):
    release.export_release({'unet': params['unet']}, tmp_path / 'x')
  with pytest.raises(ValueError, match='int8'):
    release.export_release(params, tmp_path / 'x', dtype=np.int8)
  assert not (tmp_path / 'x').exists()


def _snapshot(folder):
  """Every file and folder under `folder` (hidden ones too) -> its bytes (None for a folder)."""
  return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob('*'))}


def _dead_pid():
  process = subprocess.Popen([sys.executable, '-c', ''])
  process.wait()
  return process.pid


def test_manifest_lists_each_file_and_vouches_for_a_re_export(trained, tmp_path):
  params, _ = trained
  stale = tmp_path / f'.unet.pth.partial-{_dead_pid()}-0123abcd'
  stale.write_bytes(b'left by a killed export')
  release.export_release(params, tmp_path, source='test run')
  manifest = json.loads((tmp_path / release.MANIFEST).read_text())
  assert manifest['format'] == release.EXPORT_FORMAT and manifest['source'] == 'test run'
  assert set(manifest['files']) == set(release.TRAINED_FILES.values())
  for name, entry in manifest['files'].items():
    data = (tmp_path / name).read_bytes()
    assert entry == {'sha256': hashlib.sha256(data).hexdigest(), 'bytes': len(data)}
  assert not stale.exists(), 'the stale partial file of a dead process is cleaned up'

  release.export_release(params, tmp_path, overwrite=True, dtype=np.float16)
  manifest = json.loads((tmp_path / release.MANIFEST).read_text())
  assert manifest['dtype'] == 'float16' and manifest['source'] is None
  assert manifest['files']['pose_net.pth']['bytes'] == (tmp_path / 'pose_net.pth').stat().st_size
  assert sorted(os.listdir(tmp_path)) == sorted([*release.TRAINED_FILES.values(), release.MANIFEST])


def _modify_one_byte(path):
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 1
  path.write_bytes(bytes(data))


def _replace_by_link(path, to):
  path.unlink()
  path.symlink_to(to)


@pytest.mark.parametrize('change, refused', [
    (lambda d: (d / 'export.json').unlink(), 'unet.pth'),  # a real torch file, listed by no manifest
    (lambda d: (d / 'unet.pth').write_bytes(b'the original release'), 'unet.pth'),  # another size
    (lambda d: _modify_one_byte(d / 'pose_net.pth'), 'pose_net.pth'),  # same size, another sha256
    (lambda d: _replace_by_link(d / 'face_encoder.pth', d / 'unet.pth'), 'face_encoder.pth'),  # a link to ours
    (lambda d: (d / 'export.json').write_text('{"files": {}}'), 'export.json'),  # not our manifest
], ids=['unlisted', 'other-size', 'other-sha256', 'symlink', 'foreign-manifest'])
def test_overwrite_refuses_what_is_not_an_unmodified_export(trained, tmp_path, change, refused):
  params, _ = trained
  release.export_release(params, tmp_path)
  change(tmp_path)
  before = _snapshot(tmp_path)
  message = re.escape(f'{tmp_path / refused} exists and is not an sa-jax export')
  with pytest.raises(FileExistsError, match=message):
    release.export_release(params, tmp_path, overwrite=True)
  assert _snapshot(tmp_path) == before, 'left byte-identical, nothing created'


def test_refusals_before_any_work_create_nothing(tmp_path):
  workdir, init = tmp_path / 'runs' / 'tiny', tmp_path / 'ckpt'
  workdir.mkdir(parents=True)
  init.mkdir()
  (init / 'unet.pth').write_bytes(b'foreign')
  (tmp_path / 'a_file').write_bytes(b'not a folder')
  inputs = (workdir, None, init)
  before = _snapshot(tmp_path)
  cases = [(workdir, 'is or holds the input'), (tmp_path / 'runs', 'is or holds the input'),
           (init, 'is or holds the input'), (tmp_path / 'a_file', 'exists and is not a folder')]
  for out_dir, message in cases:
    for overwrite in (False, True):
      with pytest.raises(FileExistsError, match=re.escape(str(out_dir)) + f'.* {message}'):
        release.check_export_target(out_dir, overwrite, inputs)
  with pytest.raises(FileExistsError, match='^' + re.escape(f'{init / "unet.pth"} exist; pass --overwrite')):
    release.check_export_target(init, False)
  with pytest.raises(FileExistsError, match=re.escape(f'{init / "unet.pth"} exists and is not an sa-jax export')):
    release.check_export_target(init, True)
  release.check_export_target(workdir / 'release', False, inputs)  # inside the workdir: fine
  assert _snapshot(tmp_path) == before


def test_without_overwrite_every_existing_file_is_named(trained, tmp_path):
  params, _ = trained
  release.export_release(params, tmp_path)
  before = _snapshot(tmp_path)
  names = [*release.TRAINED_FILES.values(), release.MANIFEST]
  with pytest.raises(FileExistsError, match=re.escape(', '.join(str(tmp_path / n) for n in names) + ' exist;')):
    release.export_release(params, tmp_path)
  assert _snapshot(tmp_path) == before


def test_sa_train_checks_the_export_folder_before_reading_the_checkpoint(tmp_path, monkeypatch):
  from sa_jax.training import trainer
  monkeypatch.setattr(trainer, 'exported_params', lambda *a: pytest.fail('read the checkpoint first'))
  out = tmp_path / 'release'
  out.mkdir()
  (out / 'unet.pth').write_bytes(b'the original release')
  message = re.escape(f'sa-train: error: {out / "unet.pth"} exists and is not an sa-jax export')
  with pytest.raises(SystemExit, match=message):
    train_tool.main([f'--workdir={tmp_path / "run"}', f'--export={out}', '--overwrite'])
  with pytest.raises(SystemExit, match=re.escape(f'sa-train: error: output {tmp_path} is or holds the input')):
    train_tool.main([f'--workdir={tmp_path / "run"}', f'--export={tmp_path}'])
