"""All-or-nothing output folders."""

import pytest

from sa_jax.prep import staging


def _siblings(path):
  return sorted(p.name for p in path.parent.iterdir())


def test_success_renames_into_place(tmp_path):
  out = tmp_path / 'deep' / 'out'
  with staging.staged_dir(out) as folder:
    assert folder.parent == out.parent and folder.name.startswith('.out.partial-')
    (folder / 'a.txt').write_text('new')
    assert not out.exists()
  assert (out / 'a.txt').read_text() == 'new'
  assert _siblings(out) == ['out']


def test_failure_leaves_nothing(tmp_path):
  out = tmp_path / 'out'
  with pytest.raises(RuntimeError, match='boom'):
    with staging.staged_dir(out) as folder:
      (folder / 'a.txt').write_text('half')
      raise RuntimeError('boom')
  assert _siblings(out) == []


def test_non_empty_target_needs_overwrite(tmp_path):
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'old.txt').write_text('old')
  with pytest.raises(FileExistsError, match='is not empty; pass --overwrite'):
    with staging.staged_dir(out):
      pass
  with pytest.raises(RuntimeError):
    with staging.staged_dir(out, overwrite=True) as folder:
      (folder / 'new.txt').write_text('new')
      raise RuntimeError('failed midway')
  assert [p.name for p in out.iterdir()] == ['old.txt']  # untouched by the failed run
  with staging.staged_dir(out, overwrite=True) as folder:
    (folder / 'new.txt').write_text('new')
  assert [p.name for p in out.iterdir()] == ['new.txt']
  assert _siblings(out) == ['out']


def test_empty_folder_is_fine_and_files_are_refused(tmp_path):
  (tmp_path / 'empty').mkdir()
  with staging.staged_dir(tmp_path / 'empty') as folder:
    (folder / 'x').write_text('x')
  assert (tmp_path / 'empty' / 'x').exists()
  (tmp_path / 'file').write_text('x')
  with pytest.raises(FileExistsError, match='exists and is not a folder'):
    staging.check_target(tmp_path / 'file', overwrite=True)
