"""Low-rank adapters (LoRA) on the attention projections, as a transformation of the parameter tree.

A kernel `W [in, out]` of a targeted projection is used as `W + (alpha / rank) A B` with
`A [in, rank]` and `B [rank, out]`; only the adapters are trained, every network parameter is
frozen. The networks never know: the step builds the adapted tree (`apply`) before calling them, so
sampling, export and the release `.pth` files see plain kernels with the product merged in.

Targets are module names (`to_q`, `to_k`, `to_v`, `to_out`, `id_to_k`, ...) among the parameters
the release fine-tunes (`optimizer.is_trainable`: the UNet's attention blocks, PoseNet, the face
encoder), e.g. every `to_q` of the UNet's spatial and temporal attentions. `A` starts as the usual
Kaiming-uniform draw and `B` at zero, so the adapted model starts as the base model.

The adapters mirror the parameter tree with each targeted `kernel` replaced by `lora_a` and
`lora_b`: `{unet: {down_blocks_0: {attentions_0: {... to_q: {lora_a, lora_b}}}}}`.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from sa_jax.training import optimizer as optimizer_lib

KERNEL = 'kernel'
DOWN, UP = 'lora_a', 'lora_b'


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """The `lora` section of a training config.

  Attributes:
    rank: the adapters' rank; 0: no adapters (full fine-tuning of the release's subset).
    alpha: the product is scaled by `alpha / rank`.
    targets: module names whose kernels get adapters.
    seed: draws `A`.
  """
  rank: int
  alpha: float
  targets: tuple[str, ...]
  seed: int

  @classmethod
  def from_config(cls, config: Any, seed: int) -> 'LoraConfig':
    """From the `lora` section (`targets` comma-separated) and the run's seed."""
    targets = tuple(t.strip() for t in config.targets.split(',') if t.strip())
    made = cls(rank=int(config.rank), alpha=float(config.alpha), targets=targets, seed=seed)
    made.check()
    return made

  def check(self) -> None:
    if self.rank < 0:
      raise ValueError(f'lora.rank is {self.rank}, expected >= 0 (0: no adapters)')
    if self.rank and not self.targets:
      raise ValueError('lora.targets is empty: name the projections to adapt, e.g. to_q,to_k,to_v,to_out')
    if self.rank and self.alpha <= 0:
      raise ValueError(f'lora.alpha is {self.alpha}, expected > 0')

  @property
  def enabled(self) -> bool:
    return self.rank > 0

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


def target_paths(params: dict[str, Any], config: LoraConfig) -> list[tuple[str, ...]]:
  """Paths of the targeted modules (the kernel's path without `kernel`), in the tree's order.

  Raises:
    ValueError: when a target names no module, or a targeted kernel is not `[in, out]`.
  """
  flat = traverse_util.flatten_dict(params)
  paths = [p[:-1] for p in flat if p[-1] == KERNEL and p[-2] in config.targets
           and optimizer_lib.is_trainable(p[0], p[1:])]
  missing = sorted(set(config.targets) - {p[-1] for p in paths})
  if missing:
    raise ValueError(f'lora.targets {missing} name no projection among the trained parameters; '
                     f'kernels there are named {sorted({p[-2] for p in flat if p[-1] == KERNEL})}')
  for path in paths:
    shape = jnp.shape(nn.unbox(flat[path + (KERNEL,)]))
    if len(shape) != 2:
      raise ValueError(f'lora target {"/".join(path)} has a kernel of shape {shape}; expected [in, out]')
  return paths


def init_adapters(params: dict[str, Any], config: LoraConfig) -> dict[str, Any]:
  """Adapters for `params` (boxed or plain): `A` Kaiming-uniform, `B` zero (float32)."""
  flat = traverse_util.flatten_dict(params)
  paths = target_paths(params, config)
  adapters = {}
  for key, path in zip(jax.random.split(jax.random.key(config.seed), len(paths)), paths):
    fan_in, fan_out = jnp.shape(nn.unbox(flat[path + (KERNEL,)]))
    # torch's nn.Linear default (kaiming_uniform with a = sqrt(5)), which LoRA's A takes: U(+-1/sqrt(in)).
    adapters[path + (DOWN,)] = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')(
        key, (fan_in, config.rank), jnp.float32)
    adapters[path + (UP,)] = jnp.zeros((config.rank, fan_out), jnp.float32)
  return traverse_util.unflatten_dict(adapters)


def apply(params: dict[str, Any], adapters: dict[str, Any], config: LoraConfig) -> dict[str, Any]:
  """`params` with each adapted kernel replaced by `W + scale A B` (in `W`'s dtype)."""
  flat = traverse_util.flatten_dict(params)
  pairs = traverse_util.flatten_dict(adapters)
  for path, down in pairs.items():
    if path[-1] == DOWN:
      module = path[:-1]
      kernel = flat[module + (KERNEL,)]
      flat[module + (KERNEL,)] = kernel + (config.scale * down @ pairs[module + (UP,)]).astype(kernel.dtype)
  return traverse_util.unflatten_dict(flat)

