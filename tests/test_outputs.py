"""Outputs that cannot destroy: recognised replacement, inputs protected, stale staging cleaned."""

import os
import subprocess

import pytest

from sa_jax import outputs


def _dead_pid():
  process = subprocess.Popen(['true'])
  process.wait()
  return process.pid


def test_check_target_refuses_inputs_foreign_paths_and_links(tmp_path):
  ours = lambda p: (p / 'mine').exists()
  target = tmp_path / 'out'
  outputs.check_target(target, overwrite=False, ours=ours, what='ours')      # absent: fine
  target.mkdir()
  with pytest.raises(FileExistsError, match='exists; pass --overwrite'):
    outputs.check_target(target, overwrite=False, ours=ours, what='ours')
  with pytest.raises(FileExistsError, match='exists and is not ours'):
    outputs.check_target(target, overwrite=True, ours=ours, what='ours')
  (target / 'mine').write_text('')
  outputs.check_target(target, overwrite=True, ours=ours, what='ours')
  with pytest.raises(FileExistsError, match='is or holds the input'):
    outputs.check_target(target, overwrite=True, ours=ours, what='ours', inputs=[None, target / 'mine'])
  (tmp_path / 'link').symlink_to(target)
  with pytest.raises(FileExistsError, match='link exists and is not ours'):
    outputs.check_target(tmp_path / 'link', overwrite=True, ours=ours, what='ours')


def test_replace_keeps_the_old_output_until_the_new_one_is_in_place(tmp_path):
  target = tmp_path / 'out'
  target.mkdir()
  (target / 'v').write_text('old')
  staged = outputs.staging_path(target)
  staged.mkdir()
  (staged / 'v').write_text('new')
  outputs.replace(staged, target)
  assert (target / 'v').read_text() == 'new' and sorted(p.name for p in tmp_path.iterdir()) == ['out']


def test_stale_staging_of_a_killed_run_is_cleaned_up(tmp_path):
  dead, alive = _dead_pid(), os.getpid()
  target = tmp_path / 'out.mp4'
  (tmp_path / f'.out.mp4.partial-{dead}-0123abcd').mkdir()
  (tmp_path / f'.out.mp4.old-{dead}-89abcdef').write_text('the previous video')
  (tmp_path / f'.out.mp4.partial-{alive}-00000000').mkdir()     # a run still going on: left alone
  (tmp_path / '.other.partial-1-00000000').mkdir()               # another output's: left alone
  outputs.staging_path(target)
  names = sorted(p.name for p in tmp_path.iterdir())
  assert names == sorted(['out.mp4', f'.out.mp4.partial-{alive}-00000000', '.other.partial-1-00000000'])
  assert target.read_text() == 'the previous video', 'the moved-aside output is put back'
  (tmp_path / f'.out.mp4.old-{dead}-89abcdef').write_text('older')
  outputs.remove_stale(target)
  assert target.read_text() == 'the previous video' and not (tmp_path / f'.out.mp4.old-{dead}-89abcdef').exists()
