"""A model to train from scratch (the demo's): random networks, a VAE trained on the clips, a face
embedder trained on their identities.

The release trains PoseNet, the face encoder and the UNet's attention from SVD's trained UNet, VAE
and CLIP; a model of new widths has none of those. `initial_params` gives what `sa-train
--config.trained=all` then trains from: UNet, PoseNet and face encoder with random weights
(`random_init`), the VAE trained on the clips' frames (`autoencoder.py`; or the VAE of an earlier
such checkpoint, `trained_vae`, to try another UNet on the same latents), CLIP with random weights
(frozen: its image embedding is a fixed random projection of the reference, which the UNet learns
to read), and the face embedder that `sa-make-dataset` trained (`face_embedder.py`).
"""

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from sa_jax import checkpoint, diffusion
from sa_jax.models import random_init, stable_animator
from sa_jax.models.stable_animator import ModelConfigs
from sa_jax.models.vae import VAEConfig
from sa_jax.prep import frames as frame_io

CLIP_FRAMES = 'images'


def read_clip_frames(folders: list[Path], num_frames: int) -> np.ndarray:
  """uint8 `[N, num_frames, H, W, 3]`: the first `num_frames` frames of each clip's `images/`."""
  clips = []
  for folder in folders:
    files = frame_io.list_images(folder / CLIP_FRAMES)
    if len(files) < num_frames:
      raise ValueError(f'clip {folder}: {len(files)} frames in {CLIP_FRAMES}/, expected at least {num_frames}')
    clips.append(np.stack([frame_io.load_rgb(f) for f in files[:num_frames]]))
  shapes = {c.shape for c in clips}
  if len(shapes) != 1:
    raise ValueError(f'clips of several frame sizes {sorted(s[1:3] for s in shapes)}; expected one')
  return np.stack(clips)


def initial_params(models: ModelConfigs, vae: tuple[dict[str, Any], VAEConfig],
                   embedder: dict[str, Any] | None, seed: int = 0
                   ) -> tuple[dict[str, Any], checkpoint.CheckpointConfig]:
  """The networks of `models` to train from (see the module docstring) and their checkpoint config.

  `vae`: the trained VAE's parameters and config (`autoencoder.train`, or `trained_vae` of an earlier
  checkpoint), which replaces `models.vae` (its measured `scaling_factor`).
  """
  vae_params, vae_config = vae
  models = dataclasses.replace(models, vae=vae_config)
  if embedder is None:
    models = dataclasses.replace(models, face_embedder=None)
  params = {}
  for i, name in enumerate(models.names):
    if name == 'vae':
      params[name] = vae_params
    elif name == 'face_embedder':
      params[name] = embedder
    else:
      abstract = stable_animator.BY_NAME[name].abstract_params(getattr(models, name))
      params[name] = random_init.random_params(abstract, seed + i)
  return params, checkpoint.CheckpointConfig(models=models, scheduler=diffusion.ScheduleConfig(),
                                             source='sa-init-model: from scratch')


def trained_vae(checkpoint_dir: str | Path, config: VAEConfig) -> tuple[dict[str, Any], VAEConfig]:
  """The VAE of an sa-jax checkpoint (another model's first checkpoint), refused unless its architecture
  is `config`'s (the scaling factor is the checkpoint's: it was measured on its latents)."""
  theirs = checkpoint.load_config(checkpoint_dir).models.vae
  if dataclasses.replace(theirs, scaling_factor=config.scaling_factor) != config:
    raise ValueError(f'checkpoint {checkpoint_dir}: its VAE is {theirs}, expected the architecture of {config}')
  params, _ = checkpoint.load(checkpoint_dir, ('vae',))
  return params['vae'], theirs
