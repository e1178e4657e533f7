"""sa_jax/program_cache.py: programs and records kept on disk, loaded instead of traced."""

import logging
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sa_jax import program_cache


class Pair(NamedTuple):
  scale: jax.Array
  shift: jax.Array


jax.export.register_namedtuple_serialization(Pair, serialized_name=f'{__name__}.Pair')


def _traced_fn(traces):
  def fn(params, x, pair):            # counts its traces
    traces.append(x.shape)
    return {'y': params['w'] @ x * pair.scale + pair.shift}, Pair(x * 2, x.sum())
  return fn


def _args(n=3):
  return {'w': jnp.eye(n)}, jnp.arange(n, dtype=jnp.float32), Pair(jnp.float32(2), jnp.float32(1))


def _programs(folder):
  return sorted(folder.glob(f'*{program_cache.PROGRAM_SUFFIX}'))


def test_a_later_jit_loads_the_stored_program(tmp_path):
  traces = []
  first = program_cache.jit(_traced_fn(traces), 'fn v1', tmp_path)
  want = first(*_args())
  assert traces == [(3,)] and len(_programs(tmp_path)) == 1
  again = program_cache.jit(_traced_fn(traces), 'fn v1', tmp_path)   # as in a new process
  got = again(*_args())
  assert traces == [(3,)], 'loaded, not traced'
  assert isinstance(got[1], Pair)
  jax.tree.map(np.testing.assert_array_equal, got, want)
  np.testing.assert_array_equal(got[0]['y'], [1, 3, 5])


def test_lower_from_shapes_stores_and_loads_as_a_call_does(tmp_path):
  traces = []
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _args())
  first = program_cache.jit(_traced_fn(traces), 'fn v1', tmp_path).lower(*shapes).compile()
  assert traces == [(3,)] and len(_programs(tmp_path)) == 1
  again = program_cache.jit(_traced_fn(traces), 'fn v1', tmp_path)
  assert again.lower(*shapes).as_text() == program_cache.jit(_traced_fn(traces), 'fn v1', tmp_path).lower(
      *shapes).as_text()
  got = again(*_args())                 # the call finds the program `lower` loaded
  assert traces == [(3,)], 'loaded, not traced'
  jax.tree.map(np.testing.assert_array_equal, got, first(*_args()))


def test_the_key_covers_description_and_shapes(tmp_path):
  traces = []
  program_cache.jit(_traced_fn(traces), 'fn v1', tmp_path)(*_args())
  program_cache.jit(_traced_fn(traces), 'fn v2', tmp_path)(*_args())
  program_cache.jit(_traced_fn(traces), 'fn v1', tmp_path)(*_args(4))
  assert traces == [(3,), (3,), (4,)] and len(_programs(tmp_path)) == 3


def test_donation_applies_to_the_loaded_program(tmp_path):
  for _ in range(2):                  # stored, then loaded
    params, x, pair = _args()
    program_cache.jit(_traced_fn([]), 'fn', tmp_path, donate_argnums=1)(params, x, pair)
    assert x.is_deleted() and not params['w'].is_deleted()


def test_an_unreadable_program_is_traced_again_and_replaced(tmp_path, caplog):
  traces = []
  program_cache.jit(_traced_fn(traces), 'fn', tmp_path)(*_args())
  [path] = _programs(tmp_path)
  path.write_bytes(path.read_bytes()[:100])
  with caplog.at_level(logging.WARNING):
    got = program_cache.jit(_traced_fn(traces), 'fn', tmp_path)(*_args())
  assert 'cannot be read' in caplog.text and len(traces) == 2
  np.testing.assert_array_equal(got[0]['y'], [1, 3, 5])
  program_cache.jit(_traced_fn(traces), 'fn', tmp_path)(*_args())
  assert len(traces) == 2, 'the replacement is loaded'
  assert [p.name for p in tmp_path.iterdir()] == [path.name], 'no staging file left'


def test_a_folder_that_cannot_be_written_only_warns(tmp_path, caplog):
  blocked = tmp_path / 'file'
  blocked.write_text('not a folder')
  with caplog.at_level(logging.WARNING):
    got = program_cache.jit(_traced_fn([]), 'fn', blocked / 'programs')(*_args())
    shapes = program_cache.stored_json(blocked / 'programs', 'shapes', lambda: [1, 2])
  np.testing.assert_array_equal(got[0]['y'], [1, 3, 5])
  assert shapes == [1, 2] and caplog.text.count('a later run will trace it again') == 2


def test_without_a_folder_it_is_jax_jit(tmp_path):
  traces = []
  fn = program_cache.jit(_traced_fn(traces), 'fn', None)
  fn(*_args())
  fn(*_args())
  assert traces == [(3,)] and not list(tmp_path.iterdir())


def test_stored_json_computes_once(tmp_path):
  calls = []
  compute = lambda: calls.append(1) or {'a/kernel': [[3, 4], 'float32']}
  assert program_cache.stored_json(tmp_path, ('shapes', 1), compute) == compute()
  calls.clear()
  assert program_cache.stored_json(tmp_path, ('shapes', 1), compute) == {'a/kernel': [[3, 4], 'float32']}
  assert not calls
  [path] = tmp_path.glob('*.json')
  path.write_text('{"a/ker')
  assert program_cache.stored_json(tmp_path, ('shapes', 1), compute) == compute()
  program_cache.stored_json(tmp_path, ('shapes', 2), compute)
  assert len(list(tmp_path.glob('*.json'))) == 2


def test_the_key_follows_sa_jax_sources(tmp_path, monkeypatch):
  (tmp_path / 'model.py').write_text('x = 1\n')
  monkeypatch.setattr(program_cache, '_PACKAGE', tmp_path)
  program_cache.sources_digest.cache_clear()
  before = program_cache.key('fn')
  (tmp_path / 'model.py').write_text('x = 2\n')
  program_cache.sources_digest.cache_clear()
  assert program_cache.key('fn') != before
  monkeypatch.undo()
  program_cache.sources_digest.cache_clear()


@pytest.mark.parametrize('args', [
    (np.zeros((2, 3), np.float32),), (np.zeros((3, 2), np.float32),), (np.zeros((2, 3), np.int32),),
    ({'a': np.zeros(2)},), ({'b': np.zeros(2)},), (np.zeros(2), None)])
def test_signature_tells_arguments_apart(args):
  others = [(np.zeros((2, 3), np.float32),), (np.zeros((3, 2), np.float32),), (np.zeros((2, 3), np.int32),),
            ({'a': np.zeros(2)},), ({'b': np.zeros(2)},), (np.zeros(2), None)]
  assert [program_cache.signature(o) == program_cache.signature(args) for o in others].count(True) == 1
