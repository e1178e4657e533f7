"""`loss.encode_frames`: the VAE encoder in passes of a few frames per video, on one device and with
the frames split over `context`."""

import re

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from sa_jax import sharding
from sa_jax.models import random_init, vae
from sa_jax.training import loss as loss_lib
from tests.micro_model import micro_models


def test_encode_in_passes_equals_one_pass_and_stays_on_each_devices_frames():
  config = micro_models().vae
  params = random_init.random_params(vae.abstract_params(config), 0)
  pixels = np.random.default_rng(0).uniform(-1, 1, (2, 4, 64, 64, 3)).astype(np.float32)   # [B, F, H, W, 3]
  whole = jax.jit(lambda p, x: loss_lib.encode_frames(p, config, x))(params, pixels)
  # Each frame is encoded alone by the same convolutions: passes of 2 frames per video give the
  # posterior of one pass up to float32 reassociation (a few ulps of the moments' magnitude).
  passes = jax.jit(lambda p, x: loss_lib.encode_frames(p, config, x, 2))(params, pixels)
  for got, want in ((passes.mean, whole.mean), (passes.logvar, whole.logvar)):
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.abs(want).max()))
  # data=2 x context=2: each device holds 2 consecutive frames of one video, and a pass of 2 frames
  # per video encodes one of them on each device: no frame moves between devices.
  mesh = sharding.make_mesh({sharding.DATA: 2, sharding.CONTEXT: 2}, jax.devices()[:4])
  split = jax.device_put(pixels, NamedSharding(mesh, PartitionSpec(sharding.DATA, sharding.CONTEXT)))
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    compiled = jax.jit(lambda p, x: loss_lib.encode_frames(p, config, x, 2).mean).lower(params, split).compile()
  np.testing.assert_allclose(compiled(params, split), whole.mean, rtol=0, atol=1e-5 * float(np.abs(whole.mean).max()))
  ops = re.findall(r' (all-gather|all-to-all|collective-permute|all-reduce|reduce-scatter)(?:-start)?\(',
                   compiled.as_text())
  assert not ops, sorted(set(ops))
