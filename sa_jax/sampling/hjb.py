"""The HJB face correction: refine the predicted clean latent towards the reference identity (SPEC §4.5).

At refine steps the sampler optimises x0 with a fresh Adam for a few iterations on

  loss(z) = mean_k |1 - cos(IResNet(crop_resize_112(clamp(decode(z)), box_k)), r)|

and takes the Euler step with the refined x0. Face boxes are data (one compiled program serves
any boxes). `decode` and `embed` are passed in as functions of the latent / face crops only, so
this module depends on no particular model.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sa_jax.models.stable_animator import crop_faces

COSINE_EPS = 1e-8


def face_box(mask: np.ndarray, name: str = 'mask') -> np.ndarray:
  """Inclusive bounding box `[y_min, y_max, x_min, x_max]` of the pixels equal to 255."""
  ys, xs = np.nonzero(np.asarray(mask) == 255)
  if ys.size == 0:
    raise ValueError(f'{name}: no face pixel (value 255) in the mask; the HJB correction needs a '
                     'face box in every frame (turn it off or fix the mask)')
  return np.array([ys.min(), ys.max(), xs.min(), xs.max()], np.int32)


def clamp_inclusive(x: jax.Array, lo: float, hi: float) -> jax.Array:
  """`clip` whose gradient is 1 on the closed interval [lo, hi], like torch `clamp` (SPEC §7.18)."""
  return jnp.where((x >= lo) & (x <= hi), x, jnp.clip(x, lo, hi))


def to_unit_range(frames: jax.Array) -> jax.Array:
  """Decoded frames -> [-1, 1] the way the reference post-processes them (through 0..255, unrounded)."""
  x = clamp_inclusive(frames / 2 + 0.5, 0.0, 1.0) * 255.0
  return clamp_inclusive(x, 0.0, 255.0) / 255.0 * 2.0 - 1.0


def cosine_similarity(a: jax.Array, b: jax.Array) -> jax.Array:
  """Cosine similarity over the last axis, each norm clamped to >= 1e-8 (torch semantics)."""
  na = jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), COSINE_EPS)
  nb = jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), COSINE_EPS)
  return jnp.sum((a / na) * (b / nb), axis=-1)


def face_loss(z0: jax.Array, boxes: jax.Array, reference_embedding: jax.Array,
              decode: Callable[[jax.Array], jax.Array], embed: Callable[[jax.Array], jax.Array]
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Identity loss of the clean-latent estimates of a batch of videos.

  Each video's term is its own mean over frames, and the terms are summed, so the gradient with
  respect to one video's x0 is exactly that video's loss gradient (Adam then acts elementwise).

  Args:
    z0: `[B, F, h, w, 4]` scaled latents (x0).
    boxes: `[B, F, 4]` int inclusive face boxes `[y_min, y_max, x_min, x_max]` in frame pixels.
    reference_embedding: `[B, E]` embeddings of the reference faces.
    decode: one video's scaled latents `[F, h, w, 4]` -> frames `[F, H, W, 3]` in about [-1, 1].
    embed: faces `[N, 112, 112, 3]` -> embeddings `[N, E]`.
  Returns:
    (loss, aux) with aux `faces` `[B, F, 112, 112, 3]` and `embeddings` `[B, F, E]`.
  """
  b, f = boxes.shape[:2]
  frames = to_unit_range(jax.vmap(decode)(z0).astype(jnp.float32))              # [B, F, H, W, 3]
  faces = crop_faces(frames.reshape((b * f,) + frames.shape[2:]), boxes.reshape(b * f, 4))
  embeddings = embed(faces).reshape(b, f, -1)                                    # [BF, E] -> [B, F, E]
  cos = cosine_similarity(embeddings, reference_embedding[:, None, :])           # [B, F]
  loss = jnp.sum(jnp.mean(jnp.abs(1.0 - cos), axis=1))
  return loss, dict(faces=faces.reshape((b, f) + faces.shape[1:]), embeddings=embeddings)


def adam() -> optax.GradientTransformation:
  """torch `Adam` defaults (betas 0.9/0.999, eps 1e-8, no weight decay), without the learning rate."""
  return optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8)


def refine(z0: jax.Array, learning_rate: jax.Array, iterations: int,
           loss: Callable[[jax.Array], tuple[jax.Array, dict]]) -> jax.Array:
  """`iterations` Adam steps on `loss` from `z0` with a fresh optimiser state; returns the new x0."""
  tx = adam()
  grad_fn = jax.grad(lambda z: loss(z)[0])

  def body(_, carry):
    z, state = carry
    updates, state = tx.update(grad_fn(z), state, z)
    return z - learning_rate * updates, state

  z, _ = jax.lax.fori_loop(0, iterations, body, (z0, tx.init(z0)))
  return z
