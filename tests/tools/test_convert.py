"""sa-convert on the golden weights laid out as the release."""

import json
import shutil

import jax
import ml_dtypes
import numpy as np
import pytest
from flax import traverse_util

from convert import state_dict as sd
from convert import unet as convert_unet
from sa_jax import checkpoint
from sa_jax.models import iresnet, stable_animator
from tools import convert


def test_checkpoint_holds_every_network(checkpoint_dir, release_dir):
  params, config = checkpoint.load(checkpoint_dir)
  assert set(params) == set(config.models.names) == {n.name for n in stable_animator.NETWORKS}
  sections = config.models.to_dict()
  # Configs read off the weights equal the ones the golden cases were made with.
  ref = release_dir / 'Animation'
  case = lambda name: json.loads((ref / f'{name}.pth').resolve().parent.joinpath('case.json').read_text())
  assert sections['face_embedder'] == {**{k: case('glintr100_torch')['config'][k] for k in ('layers', 'num_features')},
                                       'widths': list(iresnet.WIDTHS)}     # the original's stages are fixed
  fe = case('face_encoder')['config']
  assert all(sections['face_encoder'][k] == v for k, v in fe.items())
  direct = convert_unet.load_unet(ref / 'unet.pth', config.models.unet)
  for path, value in traverse_util.flatten_dict(direct).items():
    np.testing.assert_array_equal(traverse_util.flatten_dict(params['unet'])[path], value)


def test_bfloat16_and_missing_parts(release_dir, tmp_path):
  out = tmp_path / 'bf16'
  convert.main(['--release', str(release_dir), '--out', str(out), '--dtype', 'bfloat16'])
  params, config = checkpoint.load(out, ('pose_net',))
  assert config.dtype == 'bfloat16' and set(params) == {'pose_net'}, 'only the networks asked for are read'
  assert all(x.dtype == ml_dtypes.bfloat16 for x in jax.tree.leaves(params))
  with pytest.raises(SystemExit, match='sa-convert: error: .*--overwrite'):
    convert.main(['--release', str(release_dir), '--out', str(out)])

  broken = tmp_path / 'broken'
  shutil.copytree(release_dir, broken, symlinks=True)
  (broken / 'Animation' / 'pose_net.pth').unlink()
  (broken / 'Animation' / 'unet.pth').unlink()
  with pytest.raises(SystemExit) as e:
    convert.main(['--release', str(broken), '--out', str(tmp_path / 'never')])
  assert str(e.value).startswith('sa-convert: error: ')
  assert 'unet.pth' in str(e.value) and 'pose_net.pth' in str(e.value)
  assert not (tmp_path / 'never').exists()


def test_wrong_weights_are_listed(release_dir, tmp_path):
  broken = tmp_path / 'swapped'
  shutil.copytree(release_dir, broken, symlinks=True)
  face = broken / 'Animation' / 'face_encoder.pth'
  face.unlink()
  face.symlink_to((release_dir / 'Animation' / 'pose_net.pth').resolve())
  with pytest.raises(SystemExit, match=r'sa-convert: error: .*face_encoder.pth is not a FusionFaceId state '
                     r"dict: it lacks \['norm.weight'"):
    convert.main(['--release', str(broken), '--out', str(tmp_path / 'never')])
  with pytest.raises(sd.CheckpointMismatchError):     # --debug: the exception itself
    convert.main(['--release', str(broken), '--out', str(tmp_path / 'never'), '--debug'])
  assert not (tmp_path / 'never').exists()


def test_overwrite_never_destroys_inputs_or_foreign_folders(release_dir, tmp_path):
  """Refused before any conversion: the release itself, a folder holding it, a folder we did not
  write; our own checkpoint is replaced only once the new one is complete."""
  photos = tmp_path / 'photos'
  photos.mkdir()
  (photos / 'holiday.jpg').write_text('precious')
  for out, message in ((release_dir, 'is or holds the input'), (release_dir.parent, 'is or holds the input'),
                       (photos, 'exists and is not an sa-jax checkpoint')):
    with pytest.raises(SystemExit, match=f'sa-convert: error: .*{message}'):
      convert.main(['--release', str(release_dir), '--out', str(out), '--overwrite'])
  assert (photos / 'holiday.jpg').read_text() == 'precious'
  assert (release_dir / 'Animation' / 'unet.pth').exists()
  ckpt = tmp_path / 'ckpt'
  convert.main(['--release', str(release_dir), '--out', str(ckpt), '--dtype', 'bfloat16'])
  assert checkpoint.is_checkpoint(ckpt) and not checkpoint.is_checkpoint(photos)
  convert.main(['--release', str(release_dir), '--out', str(ckpt), '--overwrite'])
  assert checkpoint.load_config(ckpt).dtype == 'float32'
  assert sorted(p.name for p in tmp_path.iterdir()) == ['ckpt', 'photos'], 'no staging left behind'
