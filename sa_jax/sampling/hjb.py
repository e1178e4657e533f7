"""The HJB face correction: refine the predicted clean latent towards the reference identity (SPEC §4.5).

At refine steps the sampler optimises x0 with a fresh Adam for a few iterations on

  loss(z) = mean_k |1 - cos(IResNet(crop_resize_112(clamp(decode(z)), box_k)), r)|

and takes the Euler step with the refined x0. The gradient is accumulated one decode chunk at a
time (`face_loss_grad`), so its memory does not grow with the clip. Face boxes are data (one
compiled program serves any boxes). `decode` and `embed` are passed in as functions of the
latent / face crops only, so this module depends on no particular model.
"""

import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sa_jax.models.stable_animator import crop_faces

COSINE_EPS = 1e-8
ADAM_EPS = 1e-8                                      # torch Adam's default


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


def _frame_terms(z: jax.Array, boxes: jax.Array, reference_embedding: jax.Array,
                 decode: Callable[[jax.Array], jax.Array], embed: Callable[[jax.Array], jax.Array]
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-frame identity terms `|1 - cos(e_k, r)|` of frames decoded from `z` `[B, n, h, w, 4]`.

  Returns (terms `[B, n]`, faces `[B, n, 112, 112, 3]`, embeddings `[B, n, E]`).
  """
  b, n = boxes.shape[:2]
  frames = to_unit_range(jax.vmap(decode)(z).astype(jnp.float32))               # [B, n, H, W, 3]
  faces = crop_faces(frames.reshape((b * n,) + frames.shape[2:]), boxes.reshape(b * n, 4))
  embeddings = embed(faces).reshape(b, n, -1)                                    # [Bn, E] -> [B, n, E]
  cos = cosine_similarity(embeddings, reference_embedding[:, None, :])           # [B, n]
  return jnp.abs(1.0 - cos), faces.reshape((b, n) + faces.shape[1:]), embeddings


def face_loss(z0: jax.Array, boxes: jax.Array, reference_embedding: jax.Array,
              decode: Callable[[jax.Array], jax.Array], embed: Callable[[jax.Array], jax.Array]
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Identity loss of the clean-latent estimates of a batch of videos, the whole clip at once.

  Each video's term is its own mean over frames, and the terms are summed, so the gradient with
  respect to one video's x0 is exactly that video's loss gradient (Adam then acts elementwise).
  Its reverse-mode gradient keeps the residuals of every frame (memory linear in F): the sampler
  takes `face_loss_grad`, which gives the same gradient one decode chunk at a time.

  Args:
    z0: `[B, F, h, w, 4]` scaled latents (x0).
    boxes: `[B, F, 4]` int inclusive face boxes `[y_min, y_max, x_min, x_max]` in frame pixels.
    reference_embedding: `[B, E]` embeddings of the reference faces.
    decode: one video's scaled latents `[F, h, w, 4]` -> frames `[F, H, W, 3]` in about [-1, 1].
    embed: faces `[N, 112, 112, 3]` -> embeddings `[N, E]`.
  Returns:
    (loss, aux) with aux `faces` `[B, F, 112, 112, 3]` and `embeddings` `[B, F, E]`.
  """
  terms, faces, embeddings = _frame_terms(z0, boxes, reference_embedding, decode, embed)
  return jnp.sum(jnp.mean(terms, axis=1)), dict(faces=faces, embeddings=embeddings)


def face_loss_grad(z0: jax.Array, boxes: jax.Array, reference_embedding: jax.Array,
                   decode: Callable[[jax.Array], jax.Array], embed: Callable[[jax.Array], jax.Array],
                   decode_chunk_size: int) -> tuple[jax.Array, jax.Array]:
  """`face_loss` and its gradient, accumulated one decode chunk at a time (memory flat in F).

  The decoder mixes frames only inside one call of `decode_chunk_size` frames (SPEC §4.4), and
  the loss is a sum over frames, `sum_b sum_k |1 - cos_bk| / F`. So chunk j's term (its frames of
  all B videos, summed, divided by F) depends only on chunk j's latents, and the gradient of the
  loss with respect to them is that term's gradient. The `K = F // c` equal chunks run one after
  another in a `lax.map` whose body decodes, crops, embeds and back-propagates one chunk: only
  the latents and the per-chunk gradients stay alive across chunks, never the frames or the
  residuals of another chunk. A shorter tail chunk, if any, is a second call (like `vae.decode`).

  Each frame's gradient is the same expression as in `jax.grad` of `face_loss` (cotangent 1/F on
  its term); only the loss value is summed in another order.

  Args:
    z0, boxes, reference_embedding, embed: as `face_loss`.
    decode: as `face_loss`; called on at most `decode_chunk_size` frames, which it must decode in
      one decoder call (the chunked `vae.decode` with that chunk size does).
    decode_chunk_size: frames per decoder call c (a static int >= 1).
  Returns:
    (loss, gradient `[B, F, h, w, 4]` of the loss with respect to z0).
  """
  if not isinstance(decode_chunk_size, numbers.Integral) or decode_chunk_size < 1:
    raise ValueError(f'decode_chunk_size must be a positive int, got {decode_chunk_size!r}')
  b, f = boxes.shape[:2]
  if z0.shape[:2] != (b, f):
    raise ValueError(f'z0 has batch and frames {z0.shape[:2]}, boxes {(b, f)}')

  def chunk(z, box):  # z [B, c, h, w, 4], box [B, c, 4] -> (term, grad [B, c, h, w, 4])
    term = lambda x: jnp.sum(_frame_terms(x, box, reference_embedding, decode, embed)[0]) / f
    return jax.value_and_grad(term)(z)

  size = min(int(decode_chunk_size), f)
  k = f // size
  head = k * size
  # [B, F, ...] -> [B, K, c, ...] (the first K c frames) -> [K, B, c, ...]
  split = lambda a: jnp.swapaxes(a[:, :head].reshape((b, k, size) + a.shape[2:]), 0, 1)
  terms, grads = jax.lax.map(lambda a: chunk(*a), (split(z0), split(boxes)))   # [K], [K, B, c, h, w, 4]
  grad = jnp.swapaxes(grads, 0, 1).reshape((b, head) + z0.shape[2:])          # -> [B, K c, h, w, 4]
  loss = jnp.sum(terms)
  if head < f:
    tail_term, tail_grad = chunk(z0[:, head:], boxes[:, head:])
    loss, grad = loss + tail_term, jnp.concatenate([grad, tail_grad], axis=1)
  return loss, grad


def adam() -> optax.GradientTransformation:
  """torch `Adam` defaults (betas 0.9/0.999, eps `ADAM_EPS`, no weight decay), without the learning rate."""
  return optax.scale_by_adam(b1=0.9, b2=0.999, eps=ADAM_EPS)


def refine(z0: jax.Array, learning_rate: jax.Array, iterations: int,
           grad_fn: Callable[[jax.Array], jax.Array]) -> jax.Array:
  """`iterations` Adam steps from `z0` with a fresh optimiser state; returns the new x0.

  `grad_fn(z)` is the loss gradient at z (`face_loss_grad`'s, or `jax.grad` of a loss).
  """
  tx = adam()

  def body(_, carry):
    z, state = carry
    updates, state = tx.update(grad_fn(z), state, z)
    return z - learning_rate * updates, state

  z, _ = jax.lax.fori_loop(0, iterations, body, (z0, tx.init(z0)))
  return z
