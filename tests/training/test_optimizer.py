"""The trainable subset and the optimiser: partition round trip, torch AdamW's update, schedules, checks."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
from flax import traverse_util

from configs import train as train_configs
from sa_jax.training import optimizer


def _config(**changes):
  values = dict(train_configs.get_config().optimizer)
  values.update(changes)
  return optimizer.OptimizerConfig(**values)


def test_trainable_subset_by_name():
  assert optimizer.is_trainable('unet', ('down_blocks_0', 'attentions_0', 'proj_in', 'kernel'))
  assert optimizer.is_trainable('unet', ('mid_block', 'attentions_0', 'transformer_blocks_0', 'attn2',
                                         'id_to_k', 'kernel'))
  assert not optimizer.is_trainable('unet', ('down_blocks_0', 'resnets_0', 'conv1', 'kernel'))
  assert not optimizer.is_trainable('unet', ('conv_in', 'kernel'))
  assert optimizer.is_trainable('pose_net', ('scale',))
  assert optimizer.is_trainable('face_encoder', ('norm', 'scale'))
  assert not optimizer.is_trainable('vae', ('encoder', 'conv_in', 'kernel'))
  assert not optimizer.is_trainable('image_encoder', ('visual_projection', 'kernel'))


def test_partition_and_merge_round_trip():
  params = {'unet': {'conv_in': {'kernel': 1}, 'up_blocks_1': {'attentions_0': {'norm': {'scale': 2}},
                                                               'resnets_0': {'conv1': {'kernel': 3}}}},
            'vae': {'decoder': {'kernel': 4}}, 'pose_net': {'scale': 5}}
  trainable, frozen = optimizer.partition(params)
  assert trainable == {'unet': {'up_blocks_1': {'attentions_0': {'norm': {'scale': 2}}}}, 'pose_net': {'scale': 5}}
  assert set(traverse_util.flatten_dict(frozen)) == {('unet', 'conv_in', 'kernel'), ('vae', 'decoder', 'kernel'),
                                                     ('unet', 'up_blocks_1', 'resnets_0', 'conv1', 'kernel')}
  assert optimizer.merge(trainable, frozen) == params
  # From scratch: every UNet parameter trains too; VAE and CLIP stay frozen.
  trainable, frozen = optimizer.partition(params, 'all')
  assert trainable == {'unet': params['unet'], 'pose_net': {'scale': 5}} and frozen == {'vae': params['vae']}
  assert optimizer.merge(trainable, frozen) == params


def test_adamw_is_torch_adamw():
  """Ten steps of ours and of `torch.optim.AdamW` with the release settings (bias correction and the
  decoupled decay order included) on the same gradients."""
  config = _config(learning_rate=1e-2, weight_decay=0.1)
  tx = optimizer.make_optimizer(config)
  rng = np.random.default_rng(0)
  p0 = rng.normal(size=(64,)).astype(np.float32)
  grads = rng.normal(size=(10, 64)).astype(np.float32) * np.logspace(-6, 1, 64, dtype=np.float32)
  p, state = jnp.asarray(p0), tx.init(jnp.asarray(p0))
  ref = torch.nn.Parameter(torch.from_numpy(p0.copy()))
  torch_opt = torch.optim.AdamW([ref], lr=config.learning_rate, betas=(config.b1, config.b2), eps=config.eps,
                                weight_decay=config.weight_decay)
  for g in grads:
    updates, state = tx.update(jnp.asarray(g), state, p)
    p = p + updates
    ref.grad = torch.from_numpy(g.copy())
    torch_opt.step()
  # float32 on both sides, ten steps of a few roundings each on values of order 1: 1e-6 relative
  # per step, summed, plus the same absolute floor for parameters near zero.
  np.testing.assert_allclose(np.asarray(p), ref.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_schedules_and_clipping():
  assert float(optimizer.learning_rate(_config())(12345)) == pytest.approx(1e-5)
  warm = optimizer.learning_rate(_config(schedule='cosine', warmup_steps=10, decay_steps=100))
  assert float(warm(0)) == 0.0 and float(warm(10)) == pytest.approx(1e-5) and float(warm(110)) == pytest.approx(0)
  linear = optimizer.learning_rate(_config(schedule='linear', decay_steps=10))
  assert float(linear(5)) == pytest.approx(5e-6)
  tx = optimizer.make_optimizer(_config(max_grad_norm=1.0, learning_rate=1.0, weight_decay=0.0))
  p = jnp.zeros(2)
  small, _ = tx.update(jnp.asarray([3.0, 4.0]), tx.init(p), p)
  np.testing.assert_allclose(small, [-1.0, -1.0], rtol=1e-5)  # clipped to norm 1, then Adam's sign step


@pytest.mark.parametrize('changes, message', [
    (dict(schedule='step'), "optimizer.schedule 'step'"),
    (dict(learning_rate=0.0), 'learning_rate 0.0 must be > 0'),
    (dict(schedule='cosine', decay_steps=0), 'needs decay_steps >= 1'),
])
def test_config_checks(changes, message):
  section = train_configs.get_config().optimizer
  section.update(changes)
  with pytest.raises(ValueError, match=message):
    optimizer.OptimizerConfig.from_config(section)


def test_unknown_optimizer_key():
  section = dict(train_configs.get_config().optimizer, betas=(0.9, 0.99))
  with pytest.raises(ValueError, match=r"unknown keys \['betas'\]"):
    optimizer.OptimizerConfig.from_config(ml_collections.ConfigDict(section))
