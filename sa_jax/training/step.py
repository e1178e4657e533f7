"""The training state and the pure train step `(state, batch, key) -> (state, metrics)`.

The state is a plain dict (big_vision style), a pytree:

  step        int32 `[]`, the number of steps taken
  params      the trainable parameters `{unet: <attentions only>, pose_net, face_encoder}`
  opt_state   the optimiser state of `params`
  ema         (only with `ema_decay > 0`) an exponential moving average of `params`
  frozen      the frozen parameters (VAE, CLIP, the rest of the UNet; not differentiated)

`make_train_step` returns the pure step; jit, shardings and donation are applied where the loop
is assembled (`trainer.py`). The step's key is `fold_in(key, step)`, so step n draws the same
numbers however the run got there (resumed or not, any mesh).
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from sa_jax.models.stable_animator import ModelConfigs, make_networks
from sa_jax.training import loss as loss_lib
from sa_jax.training import optimizer as optimizer_lib

Dtype = Any
State = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Everything the step computes with besides its arguments.

  Attributes:
    models: the architectures.
    loss: the training conditioning.
    optimizer: AdamW and schedule.
    ema_decay: EMA of the trainable parameters (0: none, the reference).
    remat: recompute UNet blocks in the backward pass (the reference's gradient checkpointing).
    dtype: compute dtype of the networks (the loss is float32 either way).
    image_mean, image_std: CLIP normalisation of the checkpoint.
  """
  models: ModelConfigs
  loss: loss_lib.LossConfig
  optimizer: optimizer_lib.OptimizerConfig
  ema_decay: float
  remat: bool
  dtype: Dtype
  image_mean: tuple[float, ...]
  image_std: tuple[float, ...]


def init_state(params: dict[str, Any], tx: optax.GradientTransformation, ema_decay: float) -> State:
  """The state at step 0 from a full `{network: params}` tree."""
  trainable, frozen = optimizer_lib.partition(params)
  state = dict(step=jnp.zeros((), jnp.int32), params=trainable, opt_state=tx.init(trainable), frozen=frozen)
  if ema_decay > 0:
    state['ema'] = jax.tree.map(jnp.copy, trainable)
  return state


def make_train_step(config: StepConfig) -> tuple[Callable[..., tuple[State, dict[str, jax.Array]]],
                                                 optax.GradientTransformation]:
  """The pure train step and the optimiser it updates with.

  `train_step(state, batch: loss.Batch, key) -> (state, metrics)`: one AdamW update on the
  batch's loss. The update is skipped (the state is kept, the step still counts) when the loss or
  the gradients are not finite (the caller stops the run: metric `finite` is 0) or when no video of
  the batch is valid.
  """
  tx = optimizer_lib.make_optimizer(config.optimizer)
  schedule = optimizer_lib.learning_rate(config.optimizer)
  networks = make_networks(config.models, config.dtype, remat=config.remat)

  def train_step(state: State, batch: loss_lib.Batch, key: jax.Array):
    step_key = jax.random.fold_in(key, state['step'])
    encode_key, draw_key = jax.random.split(step_key)
    frozen = state['frozen']
    inputs = loss_lib.encode(frozen, config.models, batch, encode_key, config.loss, image_mean=config.image_mean,
                             image_std=config.image_std, dtype=config.dtype)
    draws = loss_lib.draw(draw_key, inputs.latents.shape)

    def objective(trainable):
      params = optimizer_lib.merge(trainable, frozen)
      return loss_lib.loss(params, config.models, networks.unet, inputs, draws, config.loss, config.dtype)

    (value, _), grads = jax.value_and_grad(objective, has_aux=True)(state['params'])
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    new = dict(state, params=optax.apply_updates(state['params'], updates), opt_state=opt_state)
    if 'ema' in state:
      new['ema'] = optax.incremental_update(new['params'], state['ema'], 1.0 - config.ema_decay)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(value) & jnp.isfinite(grad_norm)
    valid = jnp.sum(inputs.valid)
    apply = finite & (valid > 0)
    new = jax.tree.map(lambda n, o: jnp.where(apply, n, o), new, state)
    new['step'] = state['step'] + 1
    metrics = dict(loss=value, grad_norm=grad_norm, learning_rate=schedule(state['step']),
                   valid_videos=valid, skipped_videos=inputs.valid.shape[0] - valid,
                   finite=finite.astype(jnp.float32), sigma_mean=jnp.mean(draws.sigma),
                   **{f'grad_norm/{name}': optax.tree.norm(g) for name, g in grads.items()})
    return new, metrics

  return train_step, tx
