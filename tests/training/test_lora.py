"""LoRA fine-tuning (sa_jax/training/lora.py): zero adapters are the base model, only the adapters
train, and an export merges them into release files the converter reads back."""

from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from configs import train as train_configs
from sa_jax import checkpoint
from sa_jax.data import synthetic
from sa_jax.training import lora, optimizer, trainer
from tools import train as train_tool

REPO = Path(__file__).resolve().parents[2]
SIZE, FRAMES, STEPS, RANK = 32, 2, 3, 2
LEARNING_RATE = 1e-3


def _lora(rank=RANK, alpha=4.0, targets='to_q,to_k,to_v,to_out'):
  return lora.LoraConfig.from_config(ml_collections.ConfigDict(dict(rank=rank, alpha=alpha, targets=targets)), 0)


@pytest.fixture(scope='module')
def model(micro_checkpoint):
  return checkpoint.load(micro_checkpoint)


def test_targets_are_the_named_projections_of_the_trained_blocks(model):
  params, _ = model
  config = _lora()
  paths = lora.target_paths(params, config)
  flat = traverse_util.flatten_dict(params)
  want = [p[:-1] for p in flat if p[-1] == 'kernel' and p[-2] in config.targets and optimizer.is_trainable(p[0], p[1:])]
  assert paths == want and len(paths) >= 4
  assert all(any(part.startswith('attentions') for part in p) for p in paths if p[0] == 'unet')
  assert {p[-1] for p in paths} == set(config.targets)
  with pytest.raises(ValueError, match=r"lora.targets \['to_qq'\] name no projection"):
    lora.target_paths(params, _lora(targets='to_q,to_qq'))
  with pytest.raises(ValueError, match='lora.rank is -1'):
    _lora(rank=-1)


def test_zero_adapters_are_the_base_model(model):
  """B starts at zero, so `W + scale A B` is W bit for bit: the adapted networks are the base ones."""
  params, _ = model
  config = _lora()
  adapters = lora.init_adapters(params, config)
  adapted = lora.apply(params, adapters, config)
  for (path, want), got in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(adapted)):
    np.testing.assert_array_equal(got, want, err_msg=jax.tree_util.keystr(path))
  flat = traverse_util.flatten_dict(adapters)
  for path in lora.target_paths(params, config):
    a, b = flat[path + (lora.DOWN,)], flat[path + (lora.UP,)]
    fan_in, fan_out = traverse_util.flatten_dict(params)[path + ('kernel',)].shape
    assert a.shape == (fan_in, RANK) and b.shape == (RANK, fan_out) and not b.any()
    assert 0 < np.abs(a).max() <= 1 / np.sqrt(fan_in), 'A ~ U(+-1/sqrt(in)), as torch Linear / PEFT'
  # A nonzero B adds the scaled product to each kernel, and only there.
  ones = jax.tree.map(np.ones_like, adapters)
  changed = traverse_util.flatten_dict(lora.apply(params, ones, config))
  for path, value in traverse_util.flatten_dict(params).items():
    if path[:-1] in lora.target_paths(params, config) and path[-1] == 'kernel':
      np.testing.assert_allclose(changed[path], value + config.scale * RANK, rtol=1e-6)
    else:
      np.testing.assert_array_equal(changed[path], value)


def adam_step_bound(t, b1=0.9, b2=0.999):
  """The most one Adam step t moves an entry, in units of lr: |m^ / sqrt(v^)| over all gradient
  histories. By Cauchy-Schwarz, |sum a_i g_i| <= sqrt(sum a_i^2 / c_i) sqrt(sum c_i g_i^2) with
  a_i = (1 - b1) b1^(t-i), c_i = (1 - b2) b2^(t-i) (eps only lowers it): 1 at t = 1, 1.0014 at 2."""
  i = np.arange(1, t + 1)
  a, c = (1 - b1) * b1 ** (t - i), (1 - b2) * b2 ** (t - i)
  return np.sqrt(np.sum(a ** 2 / c)) * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)


@pytest.mark.heavy
def test_lora_run_trains_only_the_adapters_and_exports_merged_files(tmp_path, micro_checkpoint, model):
  from convert import release
  clip_folders = synthetic.write_clips(tmp_path / 'clips', 2, num_frames=8, width=SIZE, height=SIZE, seed=5)
  config = train_configs.get_config('tiny')
  config.model.init = str(micro_checkpoint)
  config.data.roots = ','.join(map(str, clip_folders))
  config.data.update(width=SIZE, height=SIZE, num_frames=FRAMES, worker_count=0)
  config.update(num_steps=STEPS, log_every=1, compile_cache=False)
  config.optimizer.learning_rate = LEARNING_RATE
  config.checkpoint.update(every=STEPS, async_save=False)
  config.lora.update(rank=RANK, alpha=4.0)
  workdir = tmp_path / 'run'
  metrics = trainer.train(config, workdir, progress=False)
  assert np.isfinite(metrics['loss']) and metrics['valid_videos'] > 0

  params, ckpt = model
  lora_config = trainer.step_config(config, ckpt).lora
  manager_state = _restore(workdir, config, ckpt)
  # Every network parameter is frozen and comes back bit for bit.
  for (path, want), got in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                               jax.tree.leaves(manager_state['frozen'])):
    np.testing.assert_array_equal(got, want, err_msg=jax.tree_util.keystr(path))
  trained = traverse_util.flatten_dict(manager_state['params'])
  initial = traverse_util.flatten_dict(lora.init_adapters(params, lora_config))
  assert trained.keys() == initial.keys()
  # AdamW: p_t = (1 - lr wd) p_(t-1) - lr u_t with |u_t| <= adam_step_bound(t); float32 rounding of
  # entries below 1 adds < 1e-6.
  wd = config.optimizer.weight_decay
  steps = [adam_step_bound(t) for t in range(1, STEPS + 1)]
  for path, start in initial.items():
    if path[-1] == lora.DOWN:
      # dL/dA = scale dL/dW B^T is zero while B = 0 (step 1): A moves by the decay alone then.
      np.testing.assert_array_less(np.abs(trained[path] - (1 - LEARNING_RATE * wd) ** STEPS * start),
                                   LEARNING_RATE * sum(steps[1:]) + 1e-6)
    elif path[-3] == 'attn2' and (path[-2] == 'to_k' or path[-4].startswith('temporal') and path[-2] == 'to_q'):
      # Both cross-attentions attend to the one CLIP image token through to_k (the spatial one's
      # face tokens go through id_to_k, a softmax of their own): a softmax over one key is 1 whatever
      # the query and key, so to_k (and the temporal to_q, used nowhere else) get no gradient.
      assert not trained[path].any(), '/'.join(path)
    else:
      assert 0 < np.abs(trained[path]).max() <= LEARNING_RATE * sum(steps) + 1e-6, '/'.join(path)

  out = tmp_path / 'release'
  train_tool.main(['--config', f'{REPO}/configs/train.py:tiny', f'--workdir={workdir}', f'--export={out}'])
  merged = traverse_util.flatten_dict(lora.apply(params, manager_state['params'], lora_config))
  # The export merges W + scale A B in its own program: a product of `rank` terms and a sum, each
  # rounded in float32 (up to rank + 1 eps of |scale| |A| |B|, one eps of the result); every
  # parameter without an adapter comes back bit for bit.
  eps = np.finfo(np.float32).eps
  rounding = {path[:-1] + (lora.KERNEL,): (RANK + 1) * eps * abs(lora_config.scale) * np.abs(a) @ np.abs(
      trained[path[:-1] + (lora.UP,)]) for path, a in trained.items() if path[-1] == lora.DOWN}
  for name, file in release.TRAINED_FILES.items():
    exported = traverse_util.flatten_dict(release.CONVERTERS[name].load(out / file, getattr(ckpt.models, name)))
    for path, value in exported.items():
      want = merged[(name,) + path]
      atol = rounding[(name,) + path] + eps * np.abs(want) if (name,) + path in rounding else 0
      assert (np.abs(value - want) <= atol).all(), f'{name} {path}: off by {np.abs(value - want).max():.3g}'
  adapted = [p for p in lora.target_paths(params, lora_config) if p[0] == 'unet']
  assert any(not np.array_equal(merged[p + ('kernel',)], traverse_util.flatten_dict(params)[p + ('kernel',)])
             for p in adapted), 'the export holds the adapted kernels'


def _restore(workdir, config, ckpt):
  """The saved state of the run's last step, as numpy."""
  from sa_jax import sharding
  from sa_jax.training import checkpoints as run_checkpoints
  assembly = trainer.assemble(trainer.step_config(config, ckpt), sharding.make_mesh({'fsdp': -1}),
                              sharding.rules_from_config(config.mesh.rules))
  manager = run_checkpoints.RunCheckpoints(workdir, max_to_keep=1, async_save=False)
  try:
    return jax.device_get(manager.restore(STEPS, assembly.abstract_state))
  finally:
    manager.close()
