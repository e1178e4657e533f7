"""Checkpoint save and load: every damaged folder is one error line naming it."""

import dataclasses
import errno
import json
import os

import numpy as np
import orbax.checkpoint as ocp
import pytest

from sa_jax import animate, checkpoint

# tensorstore reads still in flight when a restore fails report "Event loop is closed" as unraisable.
pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')


def _params(names) -> dict:
  """Tiny stand-in trees (`save` checks names, not shapes): network name -> {'w': [64, 64], 'b': [3]}."""
  rng = np.random.default_rng(0)
  return {name: {'w': rng.normal(size=(64, 64)).astype(np.float32), 'b': np.ones(3, np.float32)}
          for name in names}


@pytest.fixture(scope='module')
def config() -> checkpoint.CheckpointConfig:
  return animate.tiny_config()


@pytest.fixture
def saved(tmp_path, config):
  folder = tmp_path / 'ckpt'
  checkpoint.save(folder, _params(config.models.names), config)
  return folder


def _one_line_naming(err: pytest.ExceptionInfo, folder) -> None:
  assert '\n' not in str(err.value) and str(folder) in str(err.value)


def _data_files(folder) -> list[str]:
  """The files under params/, largest first (the first holds array chunks)."""
  files = [os.path.join(root, f) for root, _, names in os.walk(folder / checkpoint.PARAMS) for f in names]
  return sorted(files, key=os.path.getsize, reverse=True)


def test_round_trip(saved, config):
  params, loaded = checkpoint.load(saved, ('unet', 'vae'))
  assert loaded == config and sorted(params) == ['unet', 'vae']
  np.testing.assert_array_equal(params['unet']['w'], _params(['unet'])['unet']['w'])


def test_missing_params(saved):
  (saved / checkpoint.PARAMS).rename(saved.parent / 'elsewhere')
  with pytest.raises(FileNotFoundError, match=r'params/ is missing \(not an sa-jax checkpoint') as err:
    checkpoint.load(saved)
  _one_line_naming(err, saved)


@pytest.mark.parametrize('damage', ['truncate', 'delete'])
def test_damaged_data_file(saved, damage):
  largest = _data_files(saved)[0]
  if damage == 'truncate':
    os.truncate(largest, os.path.getsize(largest) // 2)
  else:
    os.remove(largest)
  with pytest.raises(ValueError, match='is truncated or corrupt: ') as err:
    checkpoint.load(saved)
  _one_line_naming(err, saved)


def test_damaged_tree_metadata(saved):
  os.truncate(saved / checkpoint.PARAMS / '_METADATA', 10)
  with pytest.raises(ValueError, match='is truncated or corrupt: params/ has no readable orbax tree') as err:
    checkpoint.load(saved)
  _one_line_naming(err, saved)


def test_network_absent_from_params(tmp_path, config):
  folder = tmp_path / 'ckpt'
  partial = dataclasses.replace(config, models=dataclasses.replace(config.models, face_embedder=None))
  checkpoint.save(folder, _params(partial.models.names), partial)
  (folder / checkpoint.CONFIG).write_text(json.dumps(config.to_json()))
  with pytest.raises(ValueError, match=r"params/ holds no network 'face_embedder' \(it has \['face_encoder'"
                     ) as err:
    checkpoint.load(folder)
  _one_line_naming(err, folder)


@pytest.mark.parametrize('content, cause', [
    ('[1, 2]', 'holds a JSON list, expected an object'),
    ('{"models": 3}', r'wrong structure \(TypeError: '),
    ('{"models": {}}', 'model configs lack'),
    ('\xff\xfe not text', 'not valid JSON'),
])
def test_config_of_the_wrong_structure(saved, content, cause):
  (saved / checkpoint.CONFIG).write_bytes(content.encode('latin-1'))
  with pytest.raises(ValueError, match=f'^{saved / checkpoint.CONFIG}: {cause}') as err:
    checkpoint.load_config(saved)
  _one_line_naming(err, saved)


@pytest.mark.parametrize('key, value, cause', [
    ('unet', 3, r'wrong structure \(\w+Error: '),
    ('image_mean', 'ab', 'could not convert string to float'),
])
def test_config_with_wrong_types_inside(saved, config, key, value, cause):
  data = config.to_json()
  (data['models'] if key in data['models'] else data)[key] = value
  (saved / checkpoint.CONFIG).write_text(json.dumps(data))
  with pytest.raises(ValueError, match=f'^{saved / checkpoint.CONFIG}: {cause}') as err:
    checkpoint.load_config(saved)
  _one_line_naming(err, saved)


def test_inconsistent_config_is_one_line(saved, config):
  data = config.to_json()
  data['models']['pose_net']['noise_latent_channels'] += 1
  data['models']['face_encoder']['num_tokens'] += 1
  (saved / checkpoint.CONFIG).write_text(json.dumps(data))
  with pytest.raises(ValueError, match=r'inconsistent model configs: pose_net.* != .*; face_encoder') as err:
    checkpoint.load_config(saved)
  _one_line_naming(err, saved)


def _tensorstore_enospc(*_, **__):
  raise ValueError('RESOURCE_EXHAUSTED: Error writing "unet.w/0.0" in OCDBT database: Failed to write 4096 '
                   "bytes to file 9: No space left on device [os_error_code='28']")


def _buried_enospc(*_, **__):
  try:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), '/somewhere/_METADATA')
  except OSError as err:
    raise RuntimeError('Event loop is closed\nEvent loop is closed') from err


@pytest.mark.parametrize('failing_save', [_tensorstore_enospc, _buried_enospc])
def test_failed_write_is_one_os_error_and_leaves_nothing(tmp_path, config, monkeypatch, failing_save):
  monkeypatch.setattr(ocp.StandardCheckpointer, 'save', failing_save)
  folder = tmp_path / 'ckpt'
  with pytest.raises(OSError, match=f'^writing checkpoint {folder} failed: No space left on device$') as err:
    checkpoint.save(folder, _params(config.models.names), config)
  _one_line_naming(err, folder)
  assert list(tmp_path.iterdir()) == []
