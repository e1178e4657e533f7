"""The training state and the pure train step `(state, batch, key) -> (state, metrics)`.

The state is a plain dict (big_vision style), a pytree:

  step        int32 `[]`, the number of steps taken
  params      the trained parameters `{unet: <attentions only, or all>, pose_net, face_encoder}`, or
              with LoRA the adapters (`lora.py`)
  opt_state   the optimiser state of `params`
  ema         (only with `ema_decay > 0`) an exponential moving average of `params`
  frozen      the frozen parameters (VAE, CLIP, the rest of the UNet; with LoRA every network
              parameter), not differentiated

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
from sa_jax.training import lora as lora_lib
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
    query_chunk_size: spatial attention queries per chunk (`nn.attention`), None for all at once.
    encode_chunk_size: frames of each video per VAE encoder pass (`loss.encode_frames`), None for all.
    dtype: compute dtype of the networks (the loss is float32 either way).
    image_mean, image_std: CLIP normalisation of the checkpoint.
    lora: low-rank adapters (rank 0: full fine-tuning of the release's subset).
    trained: `optimizer.SUBSETS`: the release's subset, or 'all' of UNet, PoseNet and face encoder.
  """
  models: ModelConfigs
  loss: loss_lib.LossConfig
  optimizer: optimizer_lib.OptimizerConfig
  ema_decay: float
  remat: bool
  query_chunk_size: int | None
  encode_chunk_size: int | None
  dtype: Dtype
  image_mean: tuple[float, ...]
  image_std: tuple[float, ...]
  lora: lora_lib.LoraConfig
  trained: str = 'release'


def init_state(params: dict[str, Any], tx: optax.GradientTransformation, config: StepConfig) -> State:
  """The state at step 0 from a full `{network: params}` tree."""
  if config.lora.enabled:
    trainable, frozen = lora_lib.init_adapters(params, config.lora), params
  else:
    trainable, frozen = optimizer_lib.partition(params, config.trained)
  state = dict(step=jnp.zeros((), jnp.int32), params=trainable, opt_state=tx.init(trainable), frozen=frozen)
  if config.ema_decay > 0:
    state['ema'] = jax.tree.map(jnp.copy, trainable)
  return state


def full_params(trained: dict[str, Any], frozen: dict[str, Any], config: StepConfig) -> dict[str, Any]:
  """The `{network: params}` tree the networks run with: the two halves merged, or the adapters
  applied to the frozen kernels."""
  if config.lora.enabled:
    return lora_lib.apply(frozen, trained, config.lora)
  return optimizer_lib.merge(trained, frozen)


def make_batch_loss(config: StepConfig) -> Callable[..., tuple[jax.Array, tuple[loss_lib.Encoded, loss_lib.Draws]]]:
  """`batch_loss(trained, frozen, batch, key) -> (loss, (inputs, draws))`: the loss a step
  differentiates with respect to `trained` (the frozen networks encode the batch outside the
  gradient), computed in `config.dtype` with float32 parameters and a float32 loss."""
  networks = make_networks(config.models, config.dtype, remat=config.remat,
                           query_chunk_size=config.query_chunk_size)

  def batch_loss(trained, frozen, batch: loss_lib.Batch, key: jax.Array):
    encode_key, draw_key = jax.random.split(key)
    inputs = loss_lib.encode(frozen, config.models, batch, encode_key, config.loss, image_mean=config.image_mean,
                             image_std=config.image_std, dtype=config.dtype,
                             encode_chunk_size=config.encode_chunk_size)
    draws = loss_lib.draw(draw_key, inputs.latents.shape, config.loss)
    value, _ = loss_lib.loss(full_params(trained, frozen, config), config.models, networks.unet, inputs, draws,
                             config.loss, config.dtype)
    return value, (inputs, draws)

  return batch_loss


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
  batch_loss = make_batch_loss(config)

  def train_step(state: State, batch: loss_lib.Batch, key: jax.Array):
    step_key = jax.random.fold_in(key, state['step'])
    (value, (inputs, draws)), grads = jax.value_and_grad(batch_loss, has_aux=True)(
        state['params'], state['frozen'], batch, step_key)
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
