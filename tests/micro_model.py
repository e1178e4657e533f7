"""A micro variant of the tiny model config with seeded random weights, written as an sa-jax checkpoint.

For the tests whose point does not depend on the model's size (the training machinery, batched
cases, meshes, interrupts): one UNet level (a cross-attention down and up block), one layer per
block, one CLIP layer, a one-layer perceiver, no face embedder (for HJB, `face_embedder=True` adds an
IResNet of one 8-wide layer per stage). Every network of the pipeline and every kind of trained
parameter is there; its programs compile several times faster than the tiny demo model's (the
batched-cases programs ~2.3x, the train step ~1.4x on two cores).
"""

from pathlib import Path

from configs import svd_xt
from sa_jax import checkpoint, diffusion
from sa_jax.models import random_init
from sa_jax.models.stable_animator import BY_NAME, ModelConfigs


FACE_EMBEDDER = dict(layers=[1, 1, 1, 1], num_features=512, widths=[8, 8, 8, 8])


def micro_models(face_embedder: bool = False) -> ModelConfigs:
  sections = svd_xt.get_config('tiny').to_dict()
  sections.pop('face_embedder')
  if face_embedder:
    sections['face_embedder'] = FACE_EMBEDDER
  sections['unet'].update(block_out_channels=[32], num_attention_heads=[1], layers_per_block=1,
                          down_block_types=['CrossAttnDownBlockSpatioTemporal'],
                          up_block_types=['CrossAttnUpBlockSpatioTemporal'])
  sections['vae']['layers_per_block'] = 1
  sections['image_encoder']['num_hidden_layers'] = 1
  sections['face_encoder']['perceiver_depth'] = 1
  return ModelConfigs.from_dict(sections)


def write_checkpoint(out: Path, face_embedder: bool = False) -> Path:
  """The micro model (`micro_models(face_embedder)`) with seeded random weights, saved to `out`."""
  models = micro_models(face_embedder)
  params = {name: random_init.random_params(BY_NAME[name].abstract_params(getattr(models, name)), 7 + i)
            for i, name in enumerate(models.names)}
  checkpoint.save(out, params, checkpoint.CheckpointConfig(models=models, scheduler=diffusion.ScheduleConfig()))
  return out
