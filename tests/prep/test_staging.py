"""All-or-nothing output folders that replace only their own kind and never an input."""

import pytest

from sa_jax.prep import staging


def _siblings(path):
  return sorted(p.name for p in path.parent.iterdir())


def _ours(folder):
  """The outputs of these tests carry a `made-by-us` marker."""
  return (folder / 'made-by-us').exists()


def _staged(out, overwrite=False, inputs=()):
  return staging.staged_dir(out, overwrite, _ours, inputs)


def test_success_renames_into_place(tmp_path):
  out = tmp_path / 'deep' / 'out'
  with _staged(out) as folder:
    assert folder.parent == out.parent and folder.name.startswith('.out.partial-')
    (folder / 'a.txt').write_text('new')
    assert not out.exists()
  assert (out / 'a.txt').read_text() == 'new'
  assert _siblings(out) == ['out']


def test_failure_leaves_nothing(tmp_path):
  out = tmp_path / 'out'
  with pytest.raises(RuntimeError, match='boom'):
    with _staged(out) as folder:
      (folder / 'a.txt').write_text('half')
      raise RuntimeError('boom')
  assert _siblings(out) == []


def test_overwrite_replaces_only_our_own_output_and_only_when_complete(tmp_path):
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'made-by-us').write_text('old')
  with pytest.raises(FileExistsError, match='is not empty; pass --overwrite'):
    with _staged(out):
      pass
  with pytest.raises(RuntimeError):
    with _staged(out, overwrite=True) as folder:
      (folder / 'made-by-us').write_text('new')
      raise RuntimeError('failed midway')
  assert (out / 'made-by-us').read_text() == 'old'  # untouched by the failed run
  with _staged(out, overwrite=True) as folder:
    (folder / 'made-by-us').write_text('new')
  assert (out / 'made-by-us').read_text() == 'new'
  assert _siblings(out) == ['out']


def test_overwrite_refuses_a_folder_it_did_not_write(tmp_path):
  out = tmp_path / 'photos'
  out.mkdir()
  (out / 'holiday.jpg').write_text('precious')
  with pytest.raises(FileExistsError, match='photos exists and is not an sa-prep output folder'):
    with _staged(out, overwrite=True):
      pass
  assert [p.name for p in out.iterdir()] == ['holiday.jpg'] and _siblings(out) == ['photos']


def test_overwrite_refuses_a_folder_holding_an_input(tmp_path):
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'made-by-us').write_text('old')
  (out / 'video.mp4').write_text('the input')
  for target in (out, tmp_path):
    with pytest.raises(FileExistsError, match='is or holds the input .*video.mp4'):
      staging.check_target(target, True, _ours, [out / 'video.mp4'])
  assert (out / 'video.mp4').read_text() == 'the input'


def test_empty_folder_is_fine_and_files_are_refused(tmp_path):
  (tmp_path / 'empty').mkdir()
  with _staged(tmp_path / 'empty') as folder:
    (folder / 'x').write_text('x')
  assert (tmp_path / 'empty' / 'x').exists()
  (tmp_path / 'file').write_text('x')
  with pytest.raises(FileExistsError, match='exists and is not a folder'):
    staging.check_target(tmp_path / 'file', True, _ours)
