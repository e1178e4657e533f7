"""Test-session setup: 8 simulated CPU devices for the mesh tests and XLA's CPU backend at LLVM
optimisation level 0 (both set before JAX starts, and inherited by the tools the tests run), SIGINT
handled as in a terminal, one compilation cache for the whole session, the golden
weights laid out as the release and converted once per session, and the micro model
(tests/micro_model.py) written once per session."""

import os
import signal
from pathlib import Path

import pytest

from tests.parity import reference

# Most of the suite's time is tracing and compiling tiny models. LLVM's optimisation of the generated
# code is a large part of a CPU compile: at level 0 the micro model's train step compiles in 20.7 s
# instead of 43.7 s (two cores), and the whole suite took 33.7 min instead of 38.4, for slower
# elementwise loops, which these sizes barely run. No operation changes its semantics (there is no
# fast-math); a fused multiply-add may round differently, far inside every float32 tolerance.
# Production runs keep XLA's default.
def xla_flags(devices: int) -> str:
  """The XLA flags of the tests' processes: `devices` simulated CPU devices, LLVM level 0."""
  return f'--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0'


os.environ['XLA_FLAGS'] = ' '.join([os.environ.get('XLA_FLAGS', ''), xla_flags(8)]).strip()

# A shell starts background jobs with SIGINT ignored, and the tools respect an ignored signal (so
# do the child processes the tests start, which inherit it): the interrupt tests need it handled.
signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope='session', autouse=True)
def compile_cache_home(tmp_path_factory, worker_id):
  """$XDG_CACHE_HOME of the session: the tools' compilation cache and stored programs, and the JAX
  compilation cache of the test processes themselves. One folder for both xdist workers and the
  tools they start, so a program compiled once in the session is loaded everywhere else (the suite
  compiles the same tiny models in many places); no run touches ~/.cache. Without a size limit (as
  the tools run) JAX writes entries unlocked: an entry read while another process writes it fails
  to load, and JAX warns and compiles it again. (A size limit would add a lock, but also an access
  time file per entry that every later write reads, and a process killed between the two writes,
  as the interrupt tests do, would stop every later write in the session.)"""
  shared = tmp_path_factory.getbasetemp()
  if worker_id != 'master':
    shared = shared.parent                   # the folder above every worker's own (pytest-xdist)
  home = shared / 'xdg_cache'
  home.mkdir(exist_ok=True)
  os.environ['XDG_CACHE_HOME'] = str(home)
  import jax
  from sa_jax import animate
  jax.config.update('jax_compilation_cache_dir', str(animate.compile_cache_folder()))
  return home


@pytest.fixture(scope='session')
def release_dir(tmp_path_factory):
  """The golden reference weights laid out like the StableAnimator release `checkpoints/` folder."""
  ref = reference.reference_dir()
  root = tmp_path_factory.mktemp('release')
  svd = root / 'SVD' / 'stable-video-diffusion-img2vid-xt'
  animation = root / 'Animation'
  svd.mkdir(parents=True)
  animation.mkdir()
  links = {svd / 'unet': ref / 'unet' / 'unet', svd / 'vae': ref / 'vae' / 'vae',
           svd / 'image_encoder': ref / 'image_encoder' / 'image_encoder',
           svd / 'feature_extractor': ref / 'image_encoder' / 'feature_extractor',
           svd / 'scheduler': ref / 'scheduler' / 'scheduler',
           animation / 'unet.pth': ref / 'unet' / 'unet.pth',
           animation / 'pose_net.pth': ref / 'pose_net' / 'pose_net.pth',
           animation / 'face_encoder.pth': ref / 'face_encoder' / 'face_encoder.pth',
           animation / 'glintr100_torch.pth': ref / 'arcface' / 'arcface.pth'}
  for link, target in links.items():
    os.symlink(Path(target).resolve(), link)
  return root


@pytest.fixture(scope='session')
def checkpoint_dir(release_dir, tmp_path_factory):
  from tools import convert
  out = tmp_path_factory.mktemp('ckpt') / 'ckpt'
  convert.main(['--release', str(release_dir), '--out', str(out)])
  return out


@pytest.fixture(scope='session')
def micro_checkpoint(tmp_path_factory):
  """tests/micro_model.py's model as an sa-jax checkpoint (read only by the tests that use it)."""
  from tests import micro_model
  return micro_model.write_checkpoint(tmp_path_factory.mktemp('micro') / 'ckpt')
