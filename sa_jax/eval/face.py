"""Face similarity (CSIM) of generated frames to the reference face, with one of two embedders.

CSIM of a frame is the cosine similarity (hjb.cosine_similarity: torch semantics, norms clamped to
>= 1e-8) of the frame's face embedding and the reference's. A frame without a face gets NaN, and a
clip's score is the mean over the frames with a face, the frames without one counted beside it
(`FaceSimilarity`), never averaged in.

  * IResNet (`iresnet_*`): the release's HJB face embedder (`glintr100_torch.pth`, SPEC §3.5), faces
    cropped exactly as the HJB correction crops them (SPEC §4.5, `sampling/hjb.py`): uint8 -> [-1, 1]
    (`(x / 255 - 0.5) / 0.5`), the inclusive box of the mask's 255 pixels, bilinear 112 x 112 without
    antialias (`stable_animator.crop_faces`). Boxes of the generated frames are those of the clip's
    per-frame face masks (`faces/`, the driving video's faces at the generation size); no face
    detector runs on the generated frames. The reference embedding is the same crop of `reference.png`
    in the box of `reference_face_mask.png`, as HJB's target `r`. Params and config come from the
    caller (`convert.iresnet.load_face_embedder` on the `.pth`, or `checkpoint.load(dir,
    ['face_embedder'])`): the library does not import `convert/`.
  * insightface antelopev2 (`insightface_*`): SCRFD detects faces in each generated frame (fed as BGR),
    the largest one's raw glintr100 embedding (5-point aligned crop, insightface's own) is compared
    with the clip's `face_embedding.npy`, which `sa-prep` computed the same way on the reference photo.

"No face": for the IResNet path a mask with no 255 pixel, or with every pixel 255 (what `sa-prep`
writes when it detected no face: docs/prep.md); for the insightface path, no detection.

Shapes: `F` frames, `H x W` generation size, `H0 x W0` reference size, `E` embedding width.
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sa_jax.models import iresnet
from sa_jax.models.stable_animator import crop_faces
from sa_jax.prep import faces
from sa_jax.sampling import hjb

DEFAULT_BATCH = 8           # faces per IResNet call (one compiled program per clip size)


class FaceSimilarity(NamedTuple):
  """CSIM of one clip.

  Attributes:
    per_frame: float32 `[F]` cosine similarity to the reference face, NaN where the frame has no face.
    frames_without_face: how many frames have no face (the NaN entries).
    mean: mean of `per_frame` over the frames with a face; NaN when no frame has one.
  """
  per_frame: np.ndarray
  frames_without_face: int
  mean: float


def summarize(per_frame: np.ndarray) -> FaceSimilarity:
  """`[F]` similarities, NaN where no face -> `FaceSimilarity` (mean over the finite entries only)."""
  per_frame = np.asarray(per_frame, np.float32).reshape(-1)
  found = ~np.isnan(per_frame)
  mean = float(np.mean(per_frame[found], dtype=np.float64)) if found.any() else float('nan')
  return FaceSimilarity(per_frame, int(np.sum(~found)), mean)


@jax.jit
def cosine(embeddings: jax.Array, reference: jax.Array) -> jax.Array:
  """`[N, E]` embeddings and the `[E]` reference embedding -> `[N]` cosine similarities."""
  return hjb.cosine_similarity(jnp.asarray(embeddings, jnp.float32), jnp.asarray(reference, jnp.float32)[None])


def _check_reference(reference_embedding: np.ndarray, width: int | None = None) -> np.ndarray:
  reference_embedding = np.asarray(reference_embedding, np.float32)
  if reference_embedding.ndim != 1 or (width is not None and reference_embedding.shape[0] != width):
    raise ValueError(f'reference embedding has shape {reference_embedding.shape}, expected '
                     f'[{width if width is not None else "E"}]')
  if not np.isfinite(reference_embedding).all() or not reference_embedding.any():
    raise ValueError('reference embedding is all zeros or not finite (sa-prep writes zeros when it found no '
                     'face in the reference): face similarity is undefined')
  return reference_embedding


def _check_frames(frames: np.ndarray) -> np.ndarray:
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] == 0:
    raise ValueError(f'frames have shape {frames.shape} and dtype {frames.dtype}, expected uint8 [F, H, W, 3] '
                     'with F >= 1')
  return frames


# ----------------------------------------------------------------------------- IResNet (HJB crops)

def mask_boxes(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Face boxes of face masks, as `hjb.face_box` finds them.

  Args:
    masks: uint8 `[F, H, W]`, 255 on faces.
  Returns:
    int32 `[F, 4]` inclusive boxes `[y_min, y_max, x_min, x_max]` (the whole frame where there is no
    face) and bool `[F]` whether the mask has a face: some pixel is 255 and not all are.
  """
  masks = np.asarray(masks)
  if masks.ndim != 3:
    raise ValueError(f'face masks have shape {masks.shape}, expected [F, H, W]')
  height, width = masks.shape[1:]
  face = masks == 255                                                   # [F, H, W]
  has_face = face.any(axis=(1, 2)) & ~face.all(axis=(1, 2))
  boxes = np.tile(np.array([0, height - 1, 0, width - 1], np.int32), (masks.shape[0], 1))
  for i in np.flatnonzero(has_face):
    boxes[i] = hjb.face_box(masks[i], f'face mask {i}')
  return boxes, has_face


@functools.partial(jax.jit, static_argnames='config')
def iresnet_embeddings(params: Any, config: iresnet.IResNetConfig, images: jax.Array, boxes: jax.Array
                       ) -> jax.Array:
  """IResNet embeddings of the faces in uint8 images, cropped as the HJB correction crops them.

  Args:
    params: IResNet parameters (the `face_embedder` tree).
    config: its `IResNetConfig` (static).
    images: uint8 `[N, H, W, 3]` RGB.
    boxes: int32 `[N, 4]` inclusive `[y_min, y_max, x_min, x_max]`.
  Returns:
    float32 `[N, E]` raw embeddings.
  """
  unit = (jnp.asarray(images, jnp.float32) / 255.0 - 0.5) / 0.5         # [N, H, W, 3] in [-1, 1], as SPEC §4.5
  return iresnet.IResNet(config).apply({'params': params}, crop_faces(unit, boxes))


def iresnet_reference_embedding(params: Any, config: iresnet.IResNetConfig, reference: np.ndarray,
                                reference_mask: np.ndarray) -> np.ndarray:
  """HJB's target embedding `r`: the reference face in the box of its mask (SPEC §4.5).

  Args:
    reference: uint8 `[H0, W0, 3]` RGB reference photo.
    reference_mask: uint8 `[H0, W0]`, 255 on the face.
  Returns:
    float32 `[E]`.
  """
  reference = _check_frames(np.asarray(reference)[None])[0]
  reference_mask = np.asarray(reference_mask)
  if reference_mask.shape != reference.shape[:2]:
    raise ValueError(f'reference face mask is {reference_mask.shape}, the reference {reference.shape[:2]}: '
                     'they must match')
  boxes, has_face = mask_boxes(reference_mask[None])
  if not has_face[0]:
    raise ValueError('reference face mask has no face (no pixel is 255, or all are: sa-prep found no face '
                     'in the reference): face similarity is undefined')
  return np.asarray(iresnet_embeddings(params, config, reference[None], boxes)[0])


def iresnet_similarity(params: Any, config: iresnet.IResNetConfig, frames: np.ndarray, masks: np.ndarray,
                       reference_embedding: np.ndarray, batch_size: int = DEFAULT_BATCH) -> FaceSimilarity:
  """CSIM of a clip with the IResNet embedder and the clip's face masks.

  Args:
    params, config: the IResNet (see `iresnet_embeddings`).
    frames: uint8 `[F, H, W, 3]` generated frames.
    masks: uint8 `[F, H, W]` face masks at the same size (`faces/frame_<i>.png`).
    reference_embedding: `[E]`, from `iresnet_reference_embedding`.
    batch_size: faces per call; the last batch is padded, so one program serves every batch.
  Returns:
    `FaceSimilarity`.
  """
  frames = _check_frames(frames)
  masks = np.asarray(masks)
  if masks.shape != frames.shape[:3]:
    raise ValueError(f'face masks have shape {masks.shape}, expected {frames.shape[:3]} (one per frame, '
                     'at the frame size)')
  if batch_size < 1:
    raise ValueError(f'batch_size is {batch_size}, expected >= 1')
  reference_embedding = _check_reference(reference_embedding, config.num_features)
  boxes, has_face = mask_boxes(masks)
  count = frames.shape[0]
  padded = -(-count // batch_size) * batch_size
  frames = np.concatenate([frames, np.zeros((padded - count,) + frames.shape[1:], np.uint8)])
  boxes = np.concatenate([boxes, np.repeat(boxes[:1], padded - count, axis=0)])
  similarity = np.concatenate([
      np.asarray(cosine(iresnet_embeddings(params, config, frames[i:i + batch_size], boxes[i:i + batch_size]),
                        reference_embedding))
      for i in range(0, padded, batch_size)])[:count]                   # [padded] -> [F]
  return summarize(np.where(has_face, similarity, np.nan))


# ----------------------------------------------------------------------------- insightface antelopev2

def insightface_embeddings(app: faces.FaceAnalysis, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Raw antelopev2 embeddings of the largest face detected in each frame.

  Args:
    app: from `faces.load_face_analysis`.
    frames: uint8 `[F, H, W, 3]` RGB (fed to insightface as BGR).
  Returns:
    float32 `[F, 512]` embeddings (zeros where no face) and bool `[F]` whether a face was detected.
  """
  frames = _check_frames(frames)
  embeddings = np.zeros((frames.shape[0], faces.EMBEDDING_DIM), np.float32)
  has_face = np.zeros(frames.shape[0], bool)
  for i, frame in enumerate(frames):
    embedding = faces.largest_face(app, frame)[1]
    if embedding is not None:
      embeddings[i], has_face[i] = embedding, True
  return embeddings, has_face


def insightface_similarity(app: faces.FaceAnalysis, frames: np.ndarray, reference_embedding: np.ndarray
                           ) -> FaceSimilarity:
  """CSIM of a clip with insightface antelopev2.

  Args:
    app: from `faces.load_face_analysis`.
    frames: uint8 `[F, H, W, 3]` generated frames.
    reference_embedding: `[512]`, the clip's `face_embedding.npy` (or `faces.reference_faces(...)[1]`).
  Returns:
    `FaceSimilarity`.
  """
  reference_embedding = _check_reference(reference_embedding, faces.EMBEDDING_DIM)
  embeddings, has_face = insightface_embeddings(app, frames)
  return summarize(np.where(has_face, np.asarray(cosine(embeddings, reference_embedding)), np.nan))
