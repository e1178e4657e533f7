"""What StableAnimator trains and how (SPEC §5): the trainable subset and the optimiser.

Trainable: every PoseNet and face-encoder parameter, and the UNet parameters under an
`attentions` block (the TransformerSpatioTemporal models: norms, projections, spatial and temporal
blocks with the ID adapter's `id_to_k`/`id_to_v`, `time_pos_embed`, `time_mixer`). Everything
else (VAE, CLIP, UNet resnets, resamplers, conv_in/out, time embeddings) is frozen: it is split
off the parameter tree before differentiation, so it is neither differentiated nor held by the
optimiser. The release AdamW (lr 1e-5, betas (0.9, 0.999), eps 1e-8, weight decay 1e-2 on all
parameters, constant schedule, no clipping, no EMA) is the default of `configs/train.py`.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import optax
from flax import traverse_util

from sa_jax.models.stable_animator import BY_NAME

TRAINED_BLOCK = 'attentions'   # UNet sub-tree prefix that is trained (`down_blocks_0/attentions_0/...`)
SUBSETS = ('release', 'all')    # what trains: the reference's subset, or every parameter of the trained
                                # networks (UNet, PoseNet, face encoder: training from scratch)


def is_trainable(network: str, path: tuple[str, ...], subset: str = 'release') -> bool:
  """Whether the parameter at `path` of `network` is trained: the reference's name test for
  `subset='release'`, every parameter of UNet, PoseNet and face encoder for 'all'."""
  if not BY_NAME[network].trained:
    return False
  return subset == 'all' or network != 'unet' or any(part.startswith(TRAINED_BLOCK) for part in path)


def partition(params: Mapping[str, Any], subset: str = 'release') -> tuple[dict[str, Any], dict[str, Any]]:
  """`{network: tree}` -> `(trainable, frozen)`, two nested dicts with disjoint leaves; `merge` undoes it."""
  flat = traverse_util.flatten_dict(dict(params))
  trainable = {p: v for p, v in flat.items() if is_trainable(p[0], p[1:], subset)}
  frozen = {p: v for p, v in flat.items() if p not in trainable}
  return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def merge(trainable: Mapping[str, Any], frozen: Mapping[str, Any]) -> dict[str, Any]:
  """The full parameter tree from `partition`'s two halves."""
  flat = traverse_util.flatten_dict(dict(frozen))
  flat.update(traverse_util.flatten_dict(dict(trainable)))
  return traverse_util.unflatten_dict(flat)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """AdamW with an optional schedule and clipping (the `optimizer` section of a training config).

  Attributes:
    learning_rate: peak learning rate.
    schedule: 'constant' (the reference), 'cosine' (decay to 0 at `decay_steps`) or 'linear'.
    warmup_steps: linear warmup from 0 (the reference's constant schedule ignores its warmup: 0).
    decay_steps: length of the cosine/linear decay (steps after warmup).
    b1, b2, eps, weight_decay: AdamW.
    max_grad_norm: clip the global gradient norm to this (0: no clipping, the reference).
  """
  learning_rate: float
  schedule: str
  warmup_steps: int
  decay_steps: int
  b1: float
  b2: float
  eps: float
  weight_decay: float
  max_grad_norm: float

  SCHEDULES = ('constant', 'cosine', 'linear')

  @classmethod
  def from_config(cls, config: Any) -> 'OptimizerConfig':
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in dict(config.items()).items() if k in fields}
    unknown = sorted(set(dict(config.items())) - fields)
    if unknown:
      raise ValueError(f'optimizer config: unknown keys {unknown}; expected {sorted(fields)}')
    made = cls(**values)
    made.check()
    return made

  def check(self) -> None:
    if self.schedule not in self.SCHEDULES:
      raise ValueError(f'optimizer.schedule {self.schedule!r}; expected one of {self.SCHEDULES}')
    if self.learning_rate <= 0 or self.warmup_steps < 0 or self.max_grad_norm < 0:
      raise ValueError(f'optimizer: learning_rate {self.learning_rate} must be > 0, warmup_steps '
                       f'{self.warmup_steps} and max_grad_norm {self.max_grad_norm} >= 0')
    if self.schedule != 'constant' and self.decay_steps < 1:
      raise ValueError(f'optimizer.schedule {self.schedule!r} needs decay_steps >= 1, got {self.decay_steps}')


def learning_rate(config: OptimizerConfig) -> optax.Schedule:
  """The learning rate per step."""
  peak = config.learning_rate
  if config.schedule == 'constant':
    decay = optax.constant_schedule(peak)
  elif config.schedule == 'cosine':
    decay = optax.cosine_decay_schedule(peak, config.decay_steps)
  else:
    decay = optax.linear_schedule(peak, 0.0, config.decay_steps)
  if config.warmup_steps == 0:
    return decay
  warmup = optax.linear_schedule(0.0, peak, config.warmup_steps)
  return optax.join_schedules([warmup, decay], [config.warmup_steps])


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
  """AdamW as torch's (decoupled decay `lr * wd * p` on every parameter), optionally clipped first."""
  adamw = optax.adamw(learning_rate(config), b1=config.b1, b2=config.b2, eps=config.eps,
                      weight_decay=config.weight_decay)
  if config.max_grad_norm > 0:
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), adamw)
  return adamw
