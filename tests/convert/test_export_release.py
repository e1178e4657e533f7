"""convert.release.export_release: trained params -> the release's `.pth` files, read back strictly."""

import os

import jax
import ml_dtypes
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from convert import release
from sa_jax import checkpoint


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
  assert sorted(os.listdir(tmp_path / 'out')) == sorted(p.name for p in written), 'no temporary files left'
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
