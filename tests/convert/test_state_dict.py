"""Name mapping, layouts, strictness and safe loading of the generic converter."""

import numpy as np
import pytest
import torch

from convert import state_dict as sd

KEYMAP = sd.KeyMap(renames=(('to_out.0', 'to_out'), ('running_mean', 'mean')), ignore=(r'.*\.num_batches_tracked',))


@pytest.mark.parametrize('key, ndim, path', [
    ('down_blocks.0.resnets.1.conv1.weight', 4, ('down_blocks_0', 'resnets_1', 'conv1', 'kernel')),
    ('time_embedding.linear_1.bias', 1, ('time_embedding', 'linear_1', 'bias')),
    ('layer1.0.downsample.0.weight', 4, ('layer1_0', 'downsample_0', 'kernel')),
    ('fusion_model.layers.2.0.norm1.weight', 1, ('fusion_model', 'layers_2_0', 'norm1', 'scale')),
    ('attn1.to_out.0.weight', 2, ('attn1', 'to_out', 'kernel')),
    ('bn.running_mean', 1, ('bn', 'mean')),
    ('scale', 0, ('scale',)),
])
def test_names_round_trip(key, ndim, path):
  assert KEYMAP.to_path(key, ndim) == path
  assert KEYMAP.to_key(path) == key


def test_layouts_round_trip():
  rng = np.random.default_rng(0)
  for shape in [(6, 4), (6, 4, 3, 3), (6, 6, 3, 1, 1), (5,)]:
    x = rng.standard_normal(shape)
    y = sd.to_flax_layout('kernel', x)
    if len(shape) == 4:
      np.testing.assert_array_equal(y[1, 2], x[:, :, 1, 2].T)       # (O, I, kh, kw) -> (kh, kw, I, O)
    np.testing.assert_array_equal(sd.to_torch_layout('kernel', y), x)


def test_convert_is_strict_and_lists_every_offender():
  expected = {'a': {'kernel': np.zeros((3, 2)), 'bias': np.zeros(2)}, 'b': {'scale': np.zeros(4)}}
  tensors = {'a.weight': np.ones((2, 3)), 'a.bias': np.ones(2), 'b.weight': np.ones(4)}
  params = sd.convert(tensors, expected, KEYMAP, dtype=np.float16)
  assert params['a']['kernel'].shape == (3, 2) and params['a']['kernel'].dtype == np.float16
  assert sd.export(params, KEYMAP).keys() == tensors.keys()

  bad = {'a.weight': np.ones((3, 3)), 'c.weight': np.ones(1), 'd.bias': np.ones(1),
         'x.num_batches_tracked': np.ones(())}
  with pytest.raises(sd.CheckpointMismatchError) as e:
    sd.convert(bad, expected, KEYMAP, source='f.pth')
  msg = str(e.value)
  for part in ('f.pth', 'missing (2)', 'a.bias (2,)', 'b.weight (4,)', 'unexpected (2)', 'c.weight (1,)',
               'd.bias', 'wrong shape (1)', 'a.weight: (3, 3) in the file, the model needs (2, 3)'):
    assert part in msg, part
  assert 'num_batches_tracked' not in msg


def test_non_floating_and_non_finite_tensors_are_refused():
  expected = {'a': {'kernel': np.zeros((3, 2)), 'bias': np.zeros(2)}, 'b': {'scale': np.zeros(4)}}
  nan = np.ones((2, 3))
  nan[0, 1] = np.nan
  bad = {'a.weight': nan, 'a.bias': np.ones(2, np.int64), 'b.weight': np.array([1, np.inf, -np.inf, 1])}
  with pytest.raises(sd.CheckpointMismatchError) as e:
    sd.convert(bad, expected, KEYMAP, source='f.pth')
  msg = str(e.value)
  for part in ('unusable values (3)', 'a.weight: 1 of 6 values are NaN or infinite',
               'a.bias: dtype int64, expected floating point', 'b.weight: 2 of 4 values are NaN or infinite'):
    assert part in msg, part
  assert 'missing' not in msg, 'an unusable tensor is reported once, not also as missing'


def test_load_state_dict_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='missing.pth'):
    sd.load_state_dict(tmp_path / 'missing.pth')
  corrupt = tmp_path / 'corrupt.pth'
  corrupt.write_bytes(b'not a zip')
  with pytest.raises(ValueError, match='corrupt.pth: not a readable torch state dict'):
    sd.load_state_dict(corrupt)
  bad_st = tmp_path / 'x.safetensors'
  bad_st.write_bytes(b'\x00' * 16)
  with pytest.raises(ValueError, match='x.safetensors: not a readable safetensors file'):
    sd.load_state_dict(bad_st)
  with pytest.raises(ValueError, match='unknown weights format'):
    (tmp_path / 'w.npz').write_bytes(b'')
    sd.load_state_dict(tmp_path / 'w.npz')


class _Payload:
  def __reduce__(self):
    return (print, ('this must never run',))


def test_pickled_objects_are_refused(tmp_path):
  """`.pth` files are read with weights_only=True: arbitrary pickled objects are rejected."""
  path = tmp_path / 'evil.pth'
  torch.save({'w': torch.zeros(2), 'x': _Payload()}, path)
  with pytest.raises(ValueError, match='evil.pth: not a readable torch state dict'):
    sd.load_state_dict(path)


def test_bfloat16_and_float16_are_read(tmp_path):
  path = tmp_path / 'half.pth'
  torch.save({'a': torch.ones(2, dtype=torch.bfloat16), 'b': torch.ones(2, dtype=torch.float16)}, path)
  tensors = sd.load_state_dict(path)
  assert tensors['a'].dtype == np.float32 and tensors['b'].dtype == np.float16
