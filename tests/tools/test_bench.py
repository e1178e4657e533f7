"""`python -m tools.bench` smoke test: the fastest path prints a table with a ratio column.

Timings are printed, never asserted (they belong to the benchmark suite, not to tests).
"""

import re

import jax
import jax.numpy as jnp
import pytest

from tools import bench


def test_sampler_benchmark_prints_a_ratio_table(capsys):
  bench.main(['sampler', '--steps', '2', '--repeats', '1'])
  out = capsys.readouterr().out
  header = next(line for line in out.splitlines() if line.startswith('variant'))
  assert 'ratio' in header
  rows = [line for line in out.splitlines() if line.startswith(('Python loop', 'one lax.scan'))]
  assert len(rows) == 2
  assert re.search(r'\s1\.000$', rows[0]), 'the baseline row has ratio 1'
  assert re.search(r'\s\d+\.\d{3}$', rows[1])
  diff, scale = map(float, re.search(r'max \|diff\| (\S+) \(max \|latents\| (\S+)\)', out).groups())
  assert diff <= 1e-6 * scale, 'the loop baseline must compute what the scan computes'


def test_unknown_benchmark_is_refused():
  with pytest.raises(SystemExit):
    bench.main(['nonsense'])


def test_train_memory_variants_are_typed_overrides_of_the_release_settings(capsys):
  config = bench._train_config('mesh.shape=fsdp=4,context=2;dtype=bfloat16;lora.rank=8;remat=False;data.width=576')
  assert (config.mesh.shape, config.dtype, config.lora.rank, config.remat, config.data.width) == (
      'fsdp=4,context=2', 'bfloat16', 8, False, 576)
  assert config.data.height == 512 and config.query_chunk_size == 1024, 'the rest stays the release'
  # A mesh larger than the devices at hand is reported in its row, and nothing is compiled.
  bench.main(['train_memory', '--train-variants', 'mesh.shape=fsdp=1024'])
  assert 'needs 1024 devices' in capsys.readouterr().out


def test_flops_are_xlas_count_of_the_compiled_program():
  a, b = jax.ShapeDtypeStruct((8, 16), jnp.float32), jax.ShapeDtypeStruct((16, 4), jnp.float32)
  compiled, _ = bench._compile(jax.jit(jnp.matmul), a, b)
  assert bench._flops(compiled) == 2 * 8 * 16 * 4
