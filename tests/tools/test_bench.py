"""`python -m tools.bench` smoke test: the fastest path prints a table with a ratio column.

Timings are printed, never asserted (they belong to the benchmark suite, not to tests).
"""

import re

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
