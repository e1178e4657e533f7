"""A table of faulty inputs and options for sa-convert, sa-animate and sa-prep (issue 12).

Every case runs the tool's `main` in this process and asserts: the exit status (1 for an error,
2 for a usage error), the error line `sa-<tool>: error: ...` matching the case's pattern (which
names the faulty path or option), no traceback, and that nothing under the test's folder was
created, changed or removed (a snapshot before and after). Loading a model is made to fail the
test, except in the cases whose fault is in the model files (`loads`): every other fault is found
before any model is loaded or compiled.
"""

import dataclasses
import json
import os
import re
import shutil
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convert import release
from sa_jax import animate
from sa_jax.prep import pipeline as prep_pipeline
from tests.prep.conftest import inputs  # noqa: F401  (the synthetic DWPose/insightface models)
from tools import animate as animate_tool
from tools import convert as convert_tool
from tools import prep as prep_tool

TOOLS = {'convert': convert_tool.main, 'animate': animate_tool.main, 'prep': prep_tool.main}
# What reads the model files, per tool: none may run for a fault found by validation.
LOADERS = ((release, 'convert_release'), (animate, 'load_model_for'), (prep_pipeline, 'PoseEstimator'),
           (prep_pipeline.faces, 'load_face_analysis'))


@dataclasses.dataclass(frozen=True)
class Case:
  """One faulty command line.

  Attributes:
    tool: 'convert', 'animate' or 'prep'.
    argv: the arguments; `{name}` is replaced by the path `name` of the test's layout (`_layout`).
    message: regex the first error line must match after `sa-<tool>: error: ` (paths substituted
      escaped).
    code: the exit status.
    setup: makes the fault in the layout before the run.
    no_space: the file system reports no free space.
    loads: the fault is found when the model files are loaded (not before).
  """
  tool: str
  argv: tuple[str, ...]
  message: str
  code: int = 1
  setup: Callable[[dict[str, Path]], None] | None = None
  no_space: bool = False
  loads: bool = False


def _own(path: Path) -> Path:
  """Replaces a symlink (into the read-only reference set) by a copy of what it points to."""
  if path.is_symlink():
    target = path.resolve()
    path.unlink()
    (shutil.copytree if target.is_dir() else shutil.copy2)(target, path)
  return path


def _truncate(path: Path) -> None:
  data = _own(path).read_bytes()
  path.write_bytes(data[:len(data) // 2])


def _write(path: Path, data: bytes | str) -> None:
  if os.path.lexists(path):
    path.unlink()
  path.parent.mkdir(parents=True, exist_ok=True)
  (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)


def _torch_save(path: Path, tensors) -> None:
  if os.path.lexists(path):
    path.unlink()
  torch.save(tensors, path)


def _pose_net_tensors(paths, change) -> dict:
  tensors = torch.load(paths['A'] / 'pose_net.pth', weights_only=True)
  return {k: change(v) for k, v in tensors.items()}


def _png(path: Path, array: np.ndarray) -> None:
  if os.path.lexists(path):
    path.unlink()
  Image.fromarray(array).save(path)


def _checkpoint_config(paths, change=lambda data: data) -> None:
  """A checkpoint folder holding only the demo model's config.json, changed by `change`."""
  (paths['tmp'] / 'ckpt').mkdir()
  data = change(animate.tiny_config().to_json())
  (paths['tmp'] / 'ckpt' / 'config.json').write_text(data if isinstance(data, str) else json.dumps(data))


def _truncated_checkpoint(paths) -> None:
  """A copy of the converted golden checkpoint with every parameter data file cut in half (which
  file holds which network's arrays varies from one write to another)."""
  shutil.copytree(paths['checkpoint'], paths['tmp'] / 'ckpt')
  data = [f for f in (paths['tmp'] / 'ckpt' / 'params').rglob('*') if f.is_file() and f.parent.name == 'd']
  assert data, 'no orbax data files to truncate'
  for path in data:
    _truncate(path)


def _keypoints(paths, text: str) -> None:
  _write(paths['tmp'] / 'kp.json', text)


def _frames_folder(paths) -> None:
  (paths['tmp'] / 'frames').mkdir()
  _png(paths['tmp'] / 'frames' / 'frame_0.png', np.zeros((8, 8, 3), np.uint8))


CONVERT = [
    Case('convert', ('--release', '{tmp}/nowhere', '--out', '{tmp}/ckpt'),
         r'no SVD diffusers folder .* at any of: {tmp}/nowhere/SVD/'),
    Case('convert', ('--release', '{R}', '--out', '{tmp}/ckpt'), r'release files not found: unet.pth: {A}/unet.pth$',
         setup=lambda p: (p['A'] / 'unet.pth').unlink()),
    Case('convert', ('--release', '{R}', '--out', '{tmp}/ckpt'), r'weights file {A}/pose_net.pth is empty',
         setup=lambda p: _write(p['A'] / 'pose_net.pth', b'')),
    Case('convert', ('--release', '{R}', '--out', '{tmp}/ckpt'), r'{A}/unet.pth: not a readable torch state dict',
         setup=lambda p: _truncate(p['A'] / 'unet.pth'), loads=True),
    Case('convert', ('--release', '{R}', '--out', '{tmp}/ckpt'),
         r'{A}/face_encoder.pth: not a readable torch state dict \(UnpicklingError: Weights only load failed',
         setup=lambda p: _torch_save(p['A'] / 'face_encoder.pth', {'w': torch.zeros(2), 'f': Fraction(1, 3)}),
         loads=True),
    Case('convert', ('--release', '{R}', '--out', '{tmp}/ckpt'), r'{SVD}/unet/config.json: not valid JSON',
         setup=lambda p: _write(_own(p['SVD'] / 'unet') / 'config.json', '{"in_channels": 8,')),
    Case('convert', ('--release', '{R}', '--out', '{tmp}/ckpt'),
         r'{SVD}/scheduler/scheduler_config.json: not a diffusers scheduler config',
         setup=lambda p: _write(_own(p['SVD'] / 'scheduler') / 'scheduler_config.json', '[1, 2]')),
    Case('convert', ('--release', '{R}', '--out', '{tmp}/ckpt'),
         r"{SVD}/scheduler/scheduler_config.json: scheduler config: prediction_type='epsilon' is not supported",
         setup=lambda p: _write(_own(p['SVD'] / 'scheduler') / 'scheduler_config.json',
                                '{"prediction_type": "epsilon"}')),
    Case('convert', ('--release', '{R}', '--out', '{tmp}/ckpt'),
         r'{SVD}/feature_extractor/preprocessor_config.json: image_mean and image_std must be lists',
         setup=lambda p: _write(_own(p['SVD'] / 'feature_extractor') / 'preprocessor_config.json',
                                '{"image_mean": 0.5}')),
    Case('convert', ('--release', '{R}', '--out', '{tmp}/ckpt'), r'{A}/pose_net.pth does not match the model:',
         setup=lambda p: _torch_save(p['A'] / 'pose_net.pth', _pose_net_tensors(p, lambda t: t.to(torch.int32))), loads=True),
    Case('convert', ('--release', '{R}', '--out', '{tmp}/ckpt'), r'{A}/pose_net.pth does not match the model:',
         setup=lambda p: _torch_save(p['A'] / 'pose_net.pth', _pose_net_tensors(p, lambda t: t * np.nan)), loads=True),
    Case('convert', ('--release', '{R}', '--out', '{tmp}/ckpt'), r'{A}/pose_net.pth is not a PoseNet state dict',
         setup=lambda p: _torch_save(p['A'] / 'pose_net.pth', torch.load(p['A'] / 'face_encoder.pth',
                                                                        weights_only=True)), loads=True),
    Case('convert', ('--release', '{R}', '--out', '{R}'), r'output {R} is or holds the input {R}'),
    Case('convert', ('--release', '{R}', '--out', '{tmp}', '--overwrite'), r'output {tmp} is or holds the input'),
    Case('convert', ('--release', '{R}', '--out', '{tmp}/file.txt'), r'output {tmp}/file.txt exists; pass --overwrite',
         setup=lambda p: _write(p['tmp'] / 'file.txt', 'mine')),
    Case('convert', ('--release', '{R}', '--out', '{tmp}/photos', '--overwrite'),
         r'output {tmp}/photos exists and is not an sa-jax checkpoint',
         setup=lambda p: _write(p['tmp'] / 'photos' / 'a.jpg', b'\xff\xd8')),
    Case('convert', ('--release', '{R}', '--out', '{tmp}/file.txt/ckpt'),
         r'cannot write the checkpoint into {tmp}/file.txt: {tmp}/file.txt is not a folder',
         setup=lambda p: _write(p['tmp'] / 'file.txt', 'mine')),
    Case('convert', ('--release', '{R}', '--out', '{tmp}/ckpt'), r'not enough free space for the checkpoint in {tmp}',
         no_space=True),
    Case('convert', ('--release', '{R}', '--face-embedder', '{tmp}/missing.pth', '--out', '{tmp}/ckpt'),
         r'release files not found: face embedder: {tmp}/missing.pth'),
    Case('convert', ('--svd', '{SVD}', '--out', '{tmp}/ckpt'), r'--svd needs --animation', code=2),
    Case('convert', ('--release', '{R}', '--animation', '{A}', '--out', '{tmp}/ckpt'), r'--animation goes with --svd',
         code=2),
    Case('convert', ('--release', '{R}', '--out', '{tmp}/ckpt', '--dtype', 'float16'),
         r"argument --dtype: invalid choice: 'float16'", code=2),
    Case('convert', ('--release', '{R}'), r'the following arguments are required: --out', code=2),
]

ANIMATE_OUT = ('--out', '{tmp}/out.mp4', '--no-compile-cache')
SAMPLE_FRAMES = len(list((animate.SAMPLE_DIR / 'poses').glob('*.png')))
SAMPLE_WIDTH, SAMPLE_HEIGHT = Image.open(animate.SAMPLE_DIR / 'reference.png').size
ANIMATE = [
    Case('animate', ('--input', '{tmp}/nowhere', *ANIMATE_OUT), r'input folder not found: {tmp}/nowhere$'),
    Case('animate', ('--input', '{tmp}/empty', *ANIMATE_OUT), r'{tmp}/empty is neither a case folder',
         setup=lambda p: (p['tmp'] / 'empty').mkdir()),
    Case('animate', ('--input', '{K}', *ANIMATE_OUT), r'cannot read image {K}/reference.png',
         setup=lambda p: _truncate(p['K'] / 'reference.png')),
    Case('animate', ('--input', '{K}', *ANIMATE_OUT), r'cannot read image {K}/reference.png',
         setup=lambda p: _write(p['K'] / 'reference.png', 'not an image')),
    Case('animate', ('--input', '{K}', *ANIMATE_OUT), r'frame folder {K}/poses has no images',
         setup=lambda p: [f.unlink() for f in (p['K'] / 'poses').iterdir()]),
    Case('animate', ('--input', '{K}', *ANIMATE_OUT), r'cannot read image {K}/poses/frame_2.png',
         setup=lambda p: _truncate(p['K'] / 'poses' / 'frame_2.png')),
    Case('animate', ('--input', '{K}', *ANIMATE_OUT), r'{K}/face_embedding.npy: not a numpy .npy array',
         setup=lambda p: np.save(p['K'] / 'face_embedding.npy', np.array([{'x': 1}], object), allow_pickle=True)),
    Case('animate', ('--input', '{K}', *ANIMATE_OUT), r'{K}/face_embedding.npy: face embedding holds 1 NaN',
         setup=lambda p: np.save(p['K'] / 'face_embedding.npy', np.where(np.arange(512) == 3, np.nan, 0.5))),
    Case('animate', ('--input', '{K}', *ANIMATE_OUT), r'{K}/face_embedding.npy: not a numpy .npy array',
         setup=lambda p: _write(p['K'] / 'face_embedding.npy', b'')),
    Case('animate', ('--input', '{K}', *ANIMATE_OUT), r'{K}/face_embedding.npy: a numpy .npz archive',
         setup=lambda p: np.savez(open(p['K'] / 'face_embedding.npy', 'wb'), np.zeros(512))),
    Case('animate', ('--input', '{K}', *ANIMATE_OUT), r'{K}/face_embedding.npy: face embedding has 10 values',
         setup=lambda p: np.save(p['K'] / 'face_embedding.npy', np.zeros(10, np.float32))),
    Case('animate', ('--input', '{K}', *ANIMATE_OUT), r'{K}/face_embedding.npy: face embedding has dtype complex64',
         setup=lambda p: np.save(p['K'] / 'face_embedding.npy', np.zeros(512, np.complex64))),
    Case('animate', ('--input', '{K}', '--num-frames', '99', *ANIMATE_OUT),
         rf'num_frames 99 but {{K}}/poses holds {SAMPLE_FRAMES}'),
    Case('animate', ('--input', '{K}', '--width', '100', '--height', '128', *ANIMATE_OUT),
         r'resolution 100x128 is not a multiple of 64'),
    Case('animate', ('--input', '{K}', '--width', '-64', *ANIMATE_OUT), r'io.width is -64; expected >= 0'),
    Case('animate', ('--input', '{K}', '--fps', '0', *ANIMATE_OUT), r'conditioning.fps is 0; expected >= 1'),
    Case('animate', ('--input', '{K}', '--decode-chunk-size', '0', *ANIMATE_OUT),
         r'sampler.decode_chunk_size is 0; expected >= 1'),
    Case('animate', ('--input', '{K}', '--tile-size', '0', *ANIMATE_OUT), r'sampler.tile_size is 0; expected >= 1'),
    Case('animate', ('--input', '{K}', '--unet-batch-size', '0', *ANIMATE_OUT),
         r'sampler.unet_batch_size is 0; expected >= 1'),
    Case('animate', ('--input', '{K}', '--tile-size', '4', '--tile-overlap', '4', *ANIMATE_OUT),
         r'sampler.tile_overlap 4 must be below sampler.tile_size 4'),
    Case('animate', ('--input', '{K}', '--guidance', 'nan', *ANIMATE_OUT),
         r'sampler.guidance is nan; expected a finite'),
    Case('animate', ('--input', '{K}', '--noise-aug-strength', '-1', *ANIMATE_OUT),
         r'conditioning.noise_aug_strength is -1.0; expected >= 0'),
    Case('animate', ('--input', '{K}', '--dtype', 'float16', *ANIMATE_OUT), r"dtype 'float16': expected one of"),
    Case('animate', ('--input', '{K}', '--hjb', '--hjb-start', '3', '--hjb-end', '1', *ANIMATE_OUT),
         r'hjb.end 1 is before hjb.start 3'),
    Case('animate', ('--input', '{K}', '--hjb', '--steps', '4', '--hjb-start', '4', '--hjb-end', '9', *ANIMATE_OUT),
         r'hjb.start 4 but only 4 steps'),
    Case('animate', ('--input', '{K}', '--hjb', *ANIMATE_OUT), r'HJB face correction needs per-frame face masks',
         setup=lambda p: shutil.rmtree(p['K'] / 'faces')),
    Case('animate', ('--input', '{K}', '--hjb', *ANIMATE_OUT),
         rf'{SAMPLE_FRAMES - 1} face masks in {{K}}/faces but {SAMPLE_FRAMES} poses',
         setup=lambda p: (p['K'] / 'faces' / f'frame_{SAMPLE_FRAMES - 1}.png').unlink()),
    Case('animate', ('--input', '{K}', '--hjb', '--width', str(SAMPLE_WIDTH), '--height', str(SAMPLE_HEIGHT),
                     *ANIMATE_OUT), r'{K}/faces/frame_3.png: no face pixel',
         setup=lambda p: _png(p['K'] / 'faces' / 'frame_3.png',
                              np.zeros((SAMPLE_HEIGHT, SAMPLE_WIDTH), np.uint8))),
    Case('animate', ('--input', '{K}', '--out', '{tmp}/out.gif'), r'--out {tmp}/out.gif: sa-animate writes .mp4'),
    Case('animate', ('--input', '{K}', *ANIMATE_OUT), r'outputs exist: {tmp}/out.mp4; pass --overwrite',
         setup=lambda p: _write(p['tmp'] / 'out.mp4', b'mine')),
    Case('animate', ('--input', '{K}', *ANIMATE_OUT, '--overwrite'),
         r'output {tmp}/out.mp4 exists and is not an sa-animate output',
         setup=lambda p: _write(p['tmp'] / 'out.mp4' / 'notes.txt', 'mine')),
    Case('animate', ('--reference', '{K}/reference.png', '--poses', '{tmp}/out_frames', '--face-embedding',
                     '{K}/face_embedding.npy', *ANIMATE_OUT, '--overwrite'),
         r'output {tmp}/out_frames is or holds the input {tmp}/out_frames',
         setup=lambda p: shutil.copytree(p['K'] / 'poses', p['tmp'] / 'out_frames')),
    Case('animate', ('--input', '{K}', *ANIMATE_OUT, '--overwrite'),
         r'output {tmp}/out.mp4 exists and is not an sa-animate output',
         setup=lambda p: shutil.copy2(p['video'], p['tmp'] / 'out.mp4')),     # a video it did not write
    Case('animate', ('--input', '{K}', *ANIMATE_OUT, '--overwrite'),
         r'output {tmp}/out_frames exists and is not an sa-animate output',
         setup=lambda p: shutil.copytree(p['K'] / 'poses', p['tmp'] / 'out_frames')),   # frames it did not write
    Case('animate', ('--input', '{K}', '--out', '{tmp}/out.m4v'), r'--out {tmp}/out.m4v: sa-animate writes .mp4'),
    Case('animate', ('--input', '{K}', '--out', '{tmp}/file.txt/out.mp4'),
         r'cannot write the videos into {tmp}/file.txt: {tmp}/file.txt is not a folder',
         setup=lambda p: _write(p['tmp'] / 'file.txt', 'mine')),
    Case('animate', ('--input', '{K}', *ANIMATE_OUT), r'not enough free space for the videos in {tmp}', no_space=True),
    Case('animate', ('--checkpoint', '{tmp}/nowhere', '--input', '{K}', *ANIMATE_OUT),
         r'{tmp}/nowhere is not an sa-jax checkpoint: no config.json'),
    Case('animate', ('--checkpoint', '{tmp}/ckpt', '--input', '{K}', *ANIMATE_OUT),
         r'{tmp}/ckpt/config.json: not valid JSON', setup=lambda p: _checkpoint_config(p, lambda d: '{"models": {')),
    Case('animate', ('--checkpoint', '{tmp}/ckpt', '--input', '{K}', *ANIMATE_OUT),
         r"{tmp}/ckpt/config.json: .*unknown keys \['sheduler'\]",
         setup=lambda p: _checkpoint_config(p, lambda d: {**d, 'sheduler': {}})),
    Case('animate', ('--checkpoint', '{tmp}/ckpt', '--input', '{K}', '--hjb', *ANIMATE_OUT),
         r'needs the face embedder, which {tmp}/ckpt lacks',
         setup=lambda p: _checkpoint_config(p, lambda d: {**d, 'models': {k: v for k, v in d['models'].items()
                                                                           if k != 'face_embedder'}})),
    Case('animate', ('--checkpoint', '{tmp}/ckpt', '--input', '{K}', *ANIMATE_OUT),
         r'checkpoint {tmp}/ckpt is truncated or corrupt', setup=lambda p: _truncated_checkpoint(p), loads=True),
    Case('animate', ('--input', '{K}', '--mesh', 'data=1000', *ANIMATE_OUT), r'needs 1000 devices, \d+ available'),
    Case('animate', ('--input', '{K}', '--mesh', 'foo=2', *ANIMATE_OUT), r"unknown mesh axis 'foo'"),
    Case('animate', ('--input', '{K}', '--mesh', 'data=4,context=2', *ANIMATE_OUT), r'splits frames over context'),
    Case('animate', ('--input', '{K}', '--config.sampler.num_step=3', *ANIMATE_OUT), r'num_step', code=2),
    Case('animate', ('--input', '{K}', '--reference', '{K}/reference.png', *ANIMATE_OUT),
         r'give either --input or --reference/--poses, not both', code=2),
    Case('animate', ('--input', '{K}', '--steps', 'many', *ANIMATE_OUT), r"argument --steps: invalid int value",
         code=2),
]

PREP_MODELS = ('--dwpose-dir', '{D}', '--insightface-root', '{I}')
PREP = [
    Case('prep', ('--reference', '{ref}', '--video', '{tmp}/missing.mp4', '--out', '{tmp}/o', *PREP_MODELS),
         r'video not found: {tmp}/missing.mp4'),
    Case('prep', ('--reference', '{ref}', '--video', '{video}', '--out', '{tmp}/o', *PREP_MODELS),
         r'cannot read video {video}', setup=lambda p: _write(p['video'], b'\x00' * 100)),
    Case('prep', ('--reference', '{ref}', '--frames', '{tmp}/empty', '--out', '{tmp}/o', *PREP_MODELS),
         r'frame folder {tmp}/empty has no images', setup=lambda p: (p['tmp'] / 'empty').mkdir()),
    Case('prep', ('--video', '{video}', '--out', '{tmp}/o', *PREP_MODELS), r'needs a reference image'),
    Case('prep', ('--reference', '{ref}', '--video', '{video}', '--out', '{tmp}/o', *PREP_MODELS),
         r'cannot read image {ref}', setup=lambda p: _truncate(p['ref'])),
    Case('prep', ('--reference', '{tmp}/missing.png', '--video', '{video}', '--out', '{tmp}/o', *PREP_MODELS),
         r'image not found: {tmp}/missing.png'),
    Case('prep', ('--reference', '{ref}', '--video', '{video}', '--out', '{tmp}/o', '--dwpose-dir', '{tmp}/nowhere',
                  '--insightface-root', '{I}'),
         r'DWPose person detector not found: looked for yolox_l.onnx in the DWPose folder {tmp}/nowhere'),
    Case('prep', ('--reference', '{ref}', '--video', '{video}', '--out', '{tmp}/o', '--dwpose-dir', '{D}',
                  '--insightface-root', '{tmp}/nowhere'),
         r'antelopev2 models not found under --insightface-root {tmp}/nowhere'),
    Case('prep', ('--reference', '{ref}', '--video', '{video}', '--out', '{tmp}/o', '--width', '0', *PREP_MODELS),
         r'generation size 0x512 must be positive'),
    Case('prep', ('--reference', '{ref}', '--video', '{video}', '--out', '{tmp}/o', '--stride', '0', *PREP_MODELS),
         r'stride is 0, expected >= 1'),
    Case('prep', ('--reference', '{ref}', '--video', '{video}', '--out', '{tmp}/o', '--max-frames', '0',
                  *PREP_MODELS), r'max_frames is 0, expected >= 1'),
    Case('prep', ('--reference', '{ref}', '--video', '{video}', '--out', '{tmp}/file.txt', *PREP_MODELS),
         r'output {tmp}/file.txt exists and is not a folder', setup=lambda p: _write(p['tmp'] / 'file.txt', 'x')),
    Case('prep', ('--reference', '{ref}', '--video', '{video}', '--out', '{tmp}/mine', *PREP_MODELS),
         r'output folder {tmp}/mine is not empty; pass --overwrite',
         setup=lambda p: _write(p['tmp'] / 'mine' / 'notes.txt', 'x')),
    Case('prep', ('--reference', '{ref}', '--video', '{video}', '--out', '{tmp}/mine', '--overwrite', *PREP_MODELS),
         r'output {tmp}/mine exists and is not an sa-prep output folder',
         setup=lambda p: _write(p['tmp'] / 'mine' / 'notes.txt', 'x')),
    Case('prep', ('--reference', '{ref}', '--frames', '{tmp}/frames', '--out', '{tmp}/frames', '--overwrite',
                  *PREP_MODELS), r'output {tmp}/frames is or holds the input {tmp}/frames', setup=_frames_folder),
    Case('prep', ('--reference', '{ref}', '--video', '{video}', '--out', '{tmp}', '--overwrite', *PREP_MODELS),
         r'output {tmp} is or holds the input'),
    Case('prep', ('--video', '{video}', '--no-align', '--aspect-correct', '--out', '{tmp}/o', *PREP_MODELS),
         r'--aspect-correct corrects the alignment; it does nothing with --no-align'),
    Case('prep', ('--reference', '{ref}', '--video', '{video}', '--out', '{tmp}/file.txt/o', *PREP_MODELS),
         r'cannot write the prepared frames into {tmp}/file.txt: {tmp}/file.txt is not a folder',
         setup=lambda p: _write(p['tmp'] / 'file.txt', 'x')),
    Case('prep', ('--reference', '{ref}', '--video', '{video}', '--out', '{tmp}/o', *PREP_MODELS),
         r'not enough free space for the prepared frames in {tmp}', no_space=True),
    Case('prep', ('--reference', '{ref}', '--video', '{video}', '--out', '{tmp}/o', '--detector', '{tmp}/bad.onnx',
                  *PREP_MODELS), r'{tmp}/bad.onnx: not a readable ONNX model',
         setup=lambda p: _write(p['tmp'] / 'bad.onnx', b'not onnx' * 10), loads=True),
    Case('prep', ('--reference', '{ref}', '--frames', '{tmp}/frames', '--out', '{tmp}/o', *PREP_MODELS),
         r'cannot read image {tmp}/frames/frame_0.png', setup=lambda p: (_frames_folder(p), _truncate(
             p['tmp'] / 'frames' / 'frame_0.png'))),
    Case('prep', ('draw', '--keypoints', '{tmp}/kp.json', '--out', '{tmp}/frames', '--overwrite'),
         r'output {tmp}/frames exists and is not an sa-prep output', setup=lambda p: (_frames_folder(p), _keypoints(
             p, '{"format": "sa-prep keypoints 1", "frames": [], "alignment": null}'))),
    Case('prep', ('--reference', '{ref}', '--video', '{video}', '--frames', '{tmp}', '--out', '{tmp}/o'),
         r'argument --frames: not allowed with argument --video', code=2),
    Case('prep', ('draw', '--keypoints', '{tmp}/missing.json', '--out', '{tmp}/o'),
         r'keypoints file not found: {tmp}/missing.json'),
    Case('prep', ('draw', '--keypoints', '{tmp}/kp.json', '--out', '{tmp}/o'),
         r'{tmp}/kp.json: not a keypoints.json of sa-prep \(invalid JSON', setup=lambda p: _keypoints(p, '{"fo')),
    Case('prep', ('draw', '--keypoints', '{tmp}/kp.json', '--out', '{tmp}/o'), r"{tmp}/kp.json has format 'x'",
         setup=lambda p: _keypoints(p, '{"format": "x"}')),
    Case('prep', ('draw', '--keypoints', '{tmp}/kp.json', '--out', '{tmp}/o'), r'{tmp}/kp.json: malformed keypoints',
         setup=lambda p: _keypoints(p, '{"format": "sa-prep keypoints 1", "frames": [{"x": 1}]}')),
]


def _layout(tmp: Path, release_dir: Path, checkpoint_dir: Path, prep_inputs) -> dict[str, Path]:
  """The inputs each case may break, copied under `tmp` (the release as links into the reference set)."""
  shutil.copytree(release_dir, tmp / 'release', symlinks=True)
  shutil.copytree(animate.SAMPLE_DIR, tmp / 'case')
  shutil.copy2(prep_inputs.reference, tmp / 'ref.png')
  shutil.copy2(prep_inputs.video, tmp / 'drive.mp4')
  return dict(tmp=tmp, R=tmp / 'release', SVD=tmp / 'release' / 'SVD' / 'stable-video-diffusion-img2vid-xt',
              A=tmp / 'release' / 'Animation', K=tmp / 'case', ref=tmp / 'ref.png', video=tmp / 'drive.mp4',
              D=prep_inputs.dwpose_dir, I=prep_inputs.insightface_root, checkpoint=checkpoint_dir)


def _snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
  """Every path under `root` (links not followed) with its mode, size and modification time."""
  found = {}
  for folder, dirs, files in os.walk(root):
    for name in dirs + files:
      path = os.path.join(folder, name)
      info = os.lstat(path)
      found[os.path.relpath(path, root)] = (info.st_mode, info.st_size, info.st_mtime_ns)
  return found


def _case_id(case: Case) -> str:
  return f'{case.tool}-{re.sub(r"[^a-z0-9]+", "_", case.message.lower())[:48].strip("_")}'


def test_the_table_is_large_enough():
  assert len(CONVERT + ANIMATE + PREP) >= 40
  assert {c.tool for c in CONVERT + ANIMATE + PREP} == set(TOOLS)


@pytest.mark.filterwarnings('ignore:`estimate` is deprecated:FutureWarning')
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')  # tensorstore after a failed read
@pytest.mark.parametrize('case', CONVERT + ANIMATE + PREP, ids=_case_id)
def test_bad_input_is_one_line_error_and_changes_nothing(case, tmp_path, release_dir, checkpoint_dir,
                                                        inputs, capsys, monkeypatch):  # noqa: F811
  paths = _layout(tmp_path, release_dir, checkpoint_dir, inputs)
  if case.setup is not None:
    case.setup(paths)
  if case.no_space:
    monkeypatch.setattr(shutil, 'disk_usage', lambda path: shutil._ntuple_diskusage(10**9, 10**9, 0))
  if not case.loads:
    for module, name in LOADERS:
      monkeypatch.setattr(module, name, lambda *a, _name=name, **k: pytest.fail(f'{_name} called: the fault '
                                                                                'was not found before loading'))
  argv = [arg.format(**paths) for arg in case.argv]
  before = _snapshot(tmp_path)
  with pytest.raises(SystemExit) as stop:
    TOOLS[case.tool](argv)
  err = capsys.readouterr().err
  prefix = f'sa-{case.tool}: error: '
  if case.code == 2:                                     # argparse: usage, then the error line
    assert stop.value.code == 2
    line = err.strip().splitlines()[-1]
  else:
    assert isinstance(stop.value.code, str), f'exit status {stop.value.code}, expected an error message'
    line, *details = stop.value.code.splitlines()
    assert all(d.startswith('  ') for d in details), details
  assert 'Traceback' not in err
  assert line.startswith(prefix), line
  pattern = case.message.format(**{k: re.escape(str(v)) for k, v in paths.items()})
  assert re.search(pattern, line[len(prefix):]), f'{line!r} does not match {pattern!r}'
  assert _snapshot(tmp_path) == before, 'the failed run created, changed or removed files'
