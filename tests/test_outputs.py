"""Outputs that cannot destroy: recognised replacement, inputs protected, stale staging cleaned."""

import os
import shutil
import signal
import subprocess
import time

import pytest

import tools
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
  dead, alive = _dead_pid(), os.getppid()
  target = tmp_path / 'out.mp4'
  (tmp_path / f'.out.mp4.partial-{dead}-0123abcd').mkdir()
  (tmp_path / f'.out.mp4.partial-{os.getpid()}-0123abcd').mkdir()   # a killed run that had our pid
  (tmp_path / f'.out.mp4.old-{dead}-89abcdef').write_text('the previous video')
  (tmp_path / f'.out.mp4.partial-{alive}-00000000').mkdir()     # a run still going on: left alone
  (tmp_path / '.other.partial-1-00000000').mkdir()               # another output's: left alone
  ours = outputs.staging_path(target)
  ours.mkdir()                                                  # this process's own: left alone
  names = sorted(p.name for p in tmp_path.iterdir())
  assert names == sorted(['out.mp4', ours.name, f'.out.mp4.partial-{alive}-00000000', '.other.partial-1-00000000'])
  outputs.remove_stale(target)
  assert ours.exists()
  assert target.read_text() == 'the previous video', 'the moved-aside output is put back'
  (tmp_path / f'.out.mp4.old-{dead}-89abcdef').write_text('older')
  outputs.remove_stale(target)
  assert target.read_text() == 'the previous video' and not (tmp_path / f'.out.mp4.old-{dead}-89abcdef').exists()


def test_check_space_refuses_files_and_full_disks(tmp_path, monkeypatch):
  outputs.check_space(tmp_path / 'new' / 'deeper', 1, 'the output')        # absent folders: created later
  (tmp_path / 'file').write_text('')
  with pytest.raises(NotADirectoryError, match=f'into {tmp_path}/file/out: {tmp_path}/file is not a folder'):
    outputs.check_space(tmp_path / 'file' / 'out', 1, 'the output')
  monkeypatch.setattr(shutil, 'disk_usage', lambda path: shutil._ntuple_diskusage(2**30, 2**30 - 2**20, 2**20))
  outputs.check_space(tmp_path, 2**20, 'the output')
  with pytest.raises(OSError, match=f'not enough free space for the output in {tmp_path}: 1 MiB free, at least 2 MiB'):
    outputs.check_space(tmp_path, 2**21, 'the output')


def test_a_signal_stops_every_later_commit_even_if_swallowed(tmp_path):
  staged, target = tmp_path / 'staged', tmp_path / 'target'
  staged.write_text('new')
  with outputs.stop_on_signals():
    try:                                    # what JAX's garbage-collection callbacks do to it
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(1)
    except outputs.Interrupted:
      pass
    assert outputs.received_signal() == signal.SIGINT
    for rename in (lambda: outputs.replace(staged, target), lambda: outputs.commit([(staged, target)])):
      with pytest.raises(outputs.Interrupted):
        rename()
  assert not target.exists() and staged.read_text() == 'new'
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, 'the handler is restored'


@pytest.mark.parametrize('swallow', [False, True])
def test_run_main_exits_130_or_143_after_a_signal(swallow, capsys):
  def main(argv):
    try:
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(1)
    except outputs.Interrupted:
      if not swallow:
        raise
  with pytest.raises(SystemExit) as stop:
    tools.run_main('sa-x', main, [])
  assert stop.value.code == 143 and 'sa-x: stopped by SIGTERM' in capsys.readouterr().err


def test_run_main_prints_one_line_and_indents_details():
  def main(argv):
    raise ValueError('a.pth does not match the model:\n  missing (1): x')
  with pytest.raises(SystemExit) as stop:
    tools.run_main('sa-x', main, [])
  assert stop.value.code == 'sa-x: error: a.pth does not match the model:\n  missing (1): x'
  with pytest.raises(ValueError):
    tools.run_main('sa-x', main, ['--debug'])


def test_a_signal_during_a_commit_waits_until_it_is_complete(tmp_path, monkeypatch):
  moves = [(tmp_path / f'staged{i}', tmp_path / f'target{i}') for i in range(3)]
  for staged, target in moves:
    staged.write_text('new')
    target.write_text('old')
  rename = os.replace

  def rename_then_signal(source, destination):
    rename(source, destination)
    os.kill(os.getpid(), signal.SIGTERM)       # arrives after the first rename
  monkeypatch.setattr(os, 'replace', rename_then_signal)
  with outputs.stop_on_signals():
    with pytest.raises(outputs.Interrupted):
      outputs.commit(moves)
  assert [t.read_text() for _, t in moves] == ['new'] * 3
  assert sorted(p.name for p in tmp_path.iterdir()) == ['target0', 'target1', 'target2']


def test_a_deferred_first_signal_is_only_recorded_and_a_second_one_stops():
  with outputs.stop_on_signals(), outputs.defer_first_signal():
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.1)                            # no exception: the loop acts on it between steps
    assert outputs.received_signal() == signal.SIGTERM
    with pytest.raises(outputs.Interrupted, match='SIGINT'):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(1)
