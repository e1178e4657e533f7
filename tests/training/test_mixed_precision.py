"""Mixed precision (`dtype=bfloat16`): bfloat16 compute with float32 master weights, optimiser state
and loss; the bfloat16 step's loss is the float32 one within bfloat16's rounding (the tiny config)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs import train as train_configs
from sa_jax.data import clips, synthetic
from sa_jax.training import loss as loss_lib
from sa_jax.training import optimizer
from sa_jax.training import step as step_lib
from sa_jax.training import trainer


def _setup(root, init=''):
  """A model (the tiny config's demo model, or the checkpoint `init`) and a batch of two synthetic
  videos at its smallest size."""
  config = train_configs.get_config('tiny')
  config.model.init = init
  ckpt = trainer.model_config(config)
  size = trainer.size_multiple(ckpt.models)
  synthetic.write_clips(root, 2, num_frames=4, width=size, height=size, seed=11)
  config.data.update(roots=str(root), width=size, height=size, num_frames=2, worker_count=0)
  local = next(iter(clips.make_loader(trainer.data_config(config), batch_size=2)))
  batch = loss_lib.Batch(*(jnp.asarray(local[name]) for name in loss_lib.Batch._fields))
  return config, ckpt, trainer.load_model(config), batch


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  return _setup(tmp_path_factory.mktemp('clips'))


def _step_config(setup, dtype):
  config, ckpt, _, _ = setup
  return dataclasses.replace(trainer.step_config(config, ckpt), dtype=dtype)


def test_bfloat16_step_keeps_float32_weights_optimiser_state_and_loss(tmp_path, micro_checkpoint):
  """(The micro model: which dtypes the step keeps does not depend on the model's size.)"""
  micro = _setup(tmp_path, str(micro_checkpoint))
  _, _, params, batch = micro
  step_config = _step_config(micro, jnp.bfloat16)
  train_step, tx = step_lib.make_train_step(step_config)
  state = jax.eval_shape(lambda p: step_lib.init_state(p, tx, step_config), params)
  new_state, metrics = jax.eval_shape(train_step, state, batch, jax.random.key(0))
  floating = {x.dtype for x in jax.tree.leaves(new_state) if jnp.issubdtype(x.dtype, jnp.floating)}
  assert floating == {jnp.dtype(jnp.float32)}, 'master weights and moments stay float32'
  assert len(jax.tree.leaves(new_state['params'])) == len(jax.tree.leaves(optimizer.partition(params)[0]))
  assert all(metrics[name].dtype == jnp.float32 for name in ('loss', 'grad_norm'))


def test_bfloat16_loss_is_the_float32_loss_within_bfloat16_rounding(setup):
  _, ckpt, params, batch = setup
  trained, frozen = optimizer.partition(params)
  key = jax.random.key(0)
  losses = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    batch_loss = jax.jit(step_lib.make_batch_loss(_step_config(setup, dtype)))
    losses[dtype] = float(batch_loss(trained, frozen, batch, key)[0])
  relative = abs(losses[jnp.bfloat16] - losses[jnp.float32]) / losses[jnp.float32]
  # Each bfloat16 rounding (8 significant bits, to nearest) errs by at most 2^-9 relative, and
  # independent roundings add in quadrature: after N of them the activations err by ~sqrt(N) 2^-9,
  # and the squared error in the loss doubles that. N is at most the number of layers (kernels) of
  # the networks the step runs, a bound on the longest chain of roundings.
  kernels = sum(1 for name in ('unet', 'vae', 'image_encoder', 'pose_net', 'face_encoder')
                for path in traverse_util.flatten_dict(params[name]) if path[-1] == 'kernel')
  bound = 2 * np.sqrt(kernels) * 2.0 ** -9
  # And more than float32 noise (a sum of ~1e4 terms reordered, ~1e-6): the step really runs in bfloat16.
  assert 1e-5 < relative < bound, (losses, relative, bound)
