r"""Model configs of StableAnimator on SVD-xt: the released networks, and a tiny variant.

Each section uses the key names of the released config files (diffusers `config.json` for the
UNet and VAE, transformers `config.json` for CLIP, the constructor arguments of the StableAnimator
modules for the rest), so a config read from a checkpoint folder and one from here are the same
data. Full size: 1,550,182,122 UNet parameters including the ID adapter (SPEC §2.1).

  get_config()        the release (SVD-xt, ViT-H/14, PoseNet(320), FusionFaceId, IResNet-100)
  get_config('tiny')  small widths for tests (runs in seconds on a CPU)
  get_config('demo')  a small model trained from scratch on sa-make-dataset characters (64x64;
                      configs/train.py:demo): UNet 32/64/64/64 (one resnet per down level), VAE
                      32/64/64 (three levels: 4 pixels per latent, PoseNet likewise; 8 GroupNorm
                      groups), IResNet 16/32/64/16
"""

import ml_collections


def _unet(channels, heads, cross_attention_dim, time_dim, layers_per_block=2):
  return dict(
      in_channels=8, out_channels=4,
      down_block_types=['CrossAttnDownBlockSpatioTemporal'] * 3 + ['DownBlockSpatioTemporal'],
      up_block_types=['UpBlockSpatioTemporal'] + ['CrossAttnUpBlockSpatioTemporal'] * 3,
      block_out_channels=channels, num_attention_heads=heads, layers_per_block=layers_per_block,
      transformer_layers_per_block=1, cross_attention_dim=cross_attention_dim,
      addition_time_embed_dim=time_dim, projection_class_embeddings_input_dim=3 * time_dim,
      num_frames=25, num_face_tokens=4)


def _vae(channels, layers_per_block=2, **extra):
  return dict(in_channels=3, out_channels=3, down_block_types=['DownEncoderBlock2D'] * len(channels),
              block_out_channels=channels, layers_per_block=layers_per_block, latent_channels=4,
              scaling_factor=0.18215, force_upcast=True, **extra)


def _clip(hidden, intermediate, layers, heads, patch, projection):
  return dict(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
              num_attention_heads=heads, patch_size=patch, image_size=224, num_channels=3,
              projection_dim=projection, layer_norm_eps=1e-5, hidden_act='gelu')


def _face_encoder(dim, heads):
  return dict(cross_attention_dim=dim, id_embeddings_dim=512, clip_embeddings_dim=dim,
              num_tokens=4, perceiver_depth=4, dim_head=64, heads=heads, ff_mult=4)


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  """Returns the model configs; `variant` is '' (release), 'tiny' or 'demo'."""
  if variant == '':
    sections = dict(
        unet=_unet([320, 640, 1280, 1280], [5, 10, 20, 20], 1024, 256),
        vae=_vae([128, 256, 512, 512]),
        image_encoder=_clip(1280, 5120, 32, 16, 14, 1024),
        pose_net=dict(noise_latent_channels=320),
        face_encoder=_face_encoder(1024, 16),
        face_embedder=dict(layers=[3, 13, 30, 3], num_features=512),
    )
  elif variant == 'tiny':
    sections = dict(
        unet=_unet([32, 32, 32, 32], [1, 2, 2, 2], 128, 32),
        vae=_vae([32, 64, 32, 32]),
        image_encoder=_clip(64, 128, 2, 2, 32, 128),
        pose_net=dict(noise_latent_channels=32),
        face_encoder=_face_encoder(128, 2),
        face_embedder=dict(layers=[1, 1, 1, 1], num_features=512),
    )
  elif variant == 'demo':
    sections = dict(
        # One resnet (and transformer) per down level, two per up level: 4.2M parameters (6.4M with
        # two per level), its forward and backward in about half the time (docs/training.md)
        unet=_unet([32, 64, 64, 64], [1, 2, 2, 2], 128, 32, layers_per_block=1),
        # Three levels: a latent per 4x4 pixels (the release: 8x8), which keeps the 64x64 figure's
        # limbs; 8 GroupNorm groups: 4 to 8 channels per group, as the release's 4 to 16 (VAEConfig);
        # one resnet per level (two in the decoder): trained from scratch it learns faster
        # (docs/training.md)
        vae=_vae([32, 64, 64], layers_per_block=1, norm_num_groups=8),
        image_encoder=_clip(64, 128, 2, 2, 32, 128),
        pose_net=dict(noise_latent_channels=32, spatial_factor=4),
        face_encoder=_face_encoder(128, 2),
        # a 16-channel last stage: its 7x7 map feeds a 784 x 512 fc (with 64 channels 3136 x 512, 3 of
        # the embedder's 3.5 MB in bfloat16)
        face_embedder=dict(layers=[1, 1, 1, 1], num_features=512, widths=[16, 32, 64, 16]),
    )
  else:
    raise ValueError(f"unknown variant {variant!r}; expected '', 'tiny' or 'demo'")
  return ml_collections.ConfigDict(sections)
