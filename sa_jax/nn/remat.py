"""Rematerialisation whose work waits for the pass that needs it (UNet and VAE decoder blocks).

`nn.remat` (`jax.checkpoint`) keeps only a block's inputs and recomputes the block for its
backward pass, but the recomputation depends on those inputs alone (its `optimization_barrier`
only prevents CSE, and XLA:CPU removes it before scheduling): the scheduler is free to run it
early, and XLA:CPU runs the recomputations of many blocks back to back before their backward
passes, so their activations are alive together. XLA's estimate for the release VAE decoder's
gradient (4 frames at 576x1024, bfloat16): 79.2 GB with `nn.remat` per block, 78.6 GB per
spatio-temporal resnet.

`remat_call` recomputes the module inside a custom VJP whose backward pass first makes the saved
inputs and the parameters depend on the output cotangent, so a block is recomputed only once the
backward pass has reached it, and one block's activations are alive at a time: 20.1 GB per
spatio-temporal resnet, 17.4 GB per spatial and temporal resnet (docs/performance.md).

The parameters are tied to the data in the forward pass too (to the block's inputs): what is made
of them (their compute-dtype casts, XLA:CPU's float32 copies of bfloat16 operands, their
all-gathers under fsdp) depends on parameters alone, so XLA would compute it for every block at
the start of the program, once for both passes, and hold it to the end. XLA's temporaries for the
release train step (LoRA, bfloat16, 8 frames at 256x256, one device): 13.9 GiB with only the
inputs tied, 10.0 with the parameters tied in the backward pass, 5.0 in both passes.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def _after(x: Any, token: Any) -> Any:
  """`x`, but computable only once `token` is: adds `0 * t` for t the larger of two token elements.

  A data dependency, because XLA:CPU drops `optimization_barrier`s before scheduling. XLA keeps the
  addition (`0 * t` is not 0 for an infinite or NaN t) and fuses it into x's consumers. t is a
  reduction so that XLA makes it once, as a buffer of its own: an element read directly (a slice)
  went, with the multiplication, into every fusion that reads a tied parameter, and XLA:CPU took
  2.5x as long to compile the gradient of tests/models/test_unet.py's small UNet with remat
  (247 k HLO instructions instead of 110 k; 114 s instead of 46 s).
  """
  t = jnp.max(jax.tree.leaves(token)[0].reshape(-1)[:2].astype(jnp.float32))
  zero = 0 * t
  return jax.tree.map(lambda a: a + zero.astype(a.dtype), x)


def remat_call(module: nn.Module, *inputs: Any, static: tuple = (), enabled: bool = True) -> Any:
  """`module(*inputs, *static)`, keeping only the inputs (and the parameters) for the backward pass.

  Args:
    module: a submodule declared in the caller's compact method (parameters under its name, as
      when called directly).
    inputs: the differentiable arguments (pytrees of arrays, or None).
    static: further arguments that are not differentiated (Python values).
    enabled: False calls the module directly.
  Returns:
    The module's output. The parameter and input gradients equal those of the direct call.
  """
  if not enabled:
    return module(*inputs, *static)
  unbound = module.clone(parent=None, name=None)

  def call(mdl, *args):
    return mdl(*args, *static)

  def forward(mdl, *args):
    params = mdl.variables['params']
    return unbound.apply({'params': _after(params, args)}, *args, *static), (params, args)

  def backward(saved, cotangent):
    params, args = _after(saved, cotangent)
    _, vjp = jax.vjp(lambda p, a: unbound.apply({'params': p}, *a, *static), params, args)
    params_ct, args_ct = vjp(cotangent)
    return ({'params': params_ct}, *args_ct)

  return nn.custom_vjp(call, forward, backward)(module, *inputs)
