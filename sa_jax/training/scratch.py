"""A model to train from scratch (the demo's): random networks, a VAE trained on the clips, a face
embedder trained on their identities.

The release trains PoseNet, the face encoder and the UNet's attention from SVD's trained UNet, VAE
and CLIP; a model of new widths has none of those. `initial_params` gives what `sa-train
--config.trained=all` then trains from: UNet, PoseNet and face encoder initialised for training
(`training_init`), the VAE trained on the clips' frames (`autoencoder.py`; or the VAE of an earlier
such checkpoint, `trained_vae`, to try another UNet on the same latents), CLIP with random weights
(frozen: its image embedding is a fixed random projection of the reference, which the UNet learns
to read), and the face embedder that `sa-make-dataset` trained (`face_embedder.py`).
"""

import dataclasses
import functools
from pathlib import Path
from typing import Any

import numpy as np
from flax import traverse_util

from sa_jax import checkpoint, diffusion
from sa_jax.models import random_init, stable_animator
from sa_jax.models.stable_animator import ModelConfigs
from sa_jax.models.vae import VAEConfig
from sa_jax.prep import frames as frame_io

CLIP_FRAMES = 'images'
MIX_FACTOR = 0.5                            # diffusers' merge_factor / AlphaBlender alpha of SVD's UNet
POSE_SCALE = 2.0                            # PoseNet's output scale (SPEC §3.1)


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


def training_init(name: str, abstract: Any, seed: int) -> dict[str, Any]:
  """Parameters of network `name` (its abstract tree) to train from: kernels ~ N(0, 1/fan_in)
  (`random_init`), biases 0, norm scales 1, mix factors `MIX_FACTOR`, and the original's starting
  points: PoseNet's `final_proj` 0 (its features enter the UNet as 0) and scale `POSE_SCALE`, the face
  encoder's `proj_out` 0 (SPEC §3.2), and each `id_to_k`/`id_to_v` a copy of its attention's
  `to_k`/`to_v` (SPEC §2)."""
  drawn = traverse_util.flatten_dict(random_init.random_params(abstract, seed))
  out = {}
  for path, value in drawn.items():
    if path[-1] == 'kernel':
      value = drawn[path[:-2] + (path[-2][3:], 'kernel')] if path[-2] in ('id_to_k', 'id_to_v') else value
    elif path[-1] == 'mix_factor':
      value = np.full_like(value, MIX_FACTOR)
    elif path[-1] == 'scale':
      value = np.full_like(value, POSE_SCALE if (name, path) == ('pose_net', ('scale',)) else 1.0)
    else:
      value = np.zeros_like(value)
    if (name, path[:-1]) in (('pose_net', ('final_proj',)), ('face_encoder', ('fusion_model', 'proj_out'))):
      value = np.zeros_like(value)
    out[path] = value
  return traverse_util.unflatten_dict(out)


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
      init = random_init.random_params if name == 'image_encoder' else functools.partial(training_init, name)
      params[name] = init(abstract, seed + i)
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
