r"""Run settings of `sa-animate`: the release scripts' defaults (SPEC §4.6), each written once here.

  sa-animate --checkpoint ckpt/ --input case/ --out out/case.mp4
  sa-animate --config configs/animate.py --config.sampler.num_steps=30 --config.hjb.enabled=True ...
  sa-animate --checkpoint ckpt/ --input cases/ --out out/ --config.io.batch_size=4 --mesh data=4

The short flags of `sa-animate` (`--steps`, `--guidance`, `--hjb`, ...) override the same fields.
Unknown fields are refused (`--config.sampler.num_step=3` is an error naming the key).
"""

import ml_collections
from ml_collections import config_dict

from sa_jax import sharding


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.sampler = dict(
      num_steps=25,                 # Euler steps
      guidance=3.0,                 # classifier-free guidance at the last frame
      min_guidance=config_dict.placeholder(float),  # at the first frame; None: `guidance` (no ramp)
      tile_size=16,                 # frames per UNet tile (shrunk to a shorter clip)
      tile_overlap=4,               # frames shared by neighbouring tiles
      decode_chunk_size=4,          # frames per VAE decoder call (changes the result, as in the reference)
      unet_batch_size=config_dict.placeholder(int),   # UNet rows per call (bounds memory); None: all
      query_chunk_size=config_dict.placeholder(int),  # spatial attention query chunk; None: no chunking
      dtype='float32',              # compute dtype: float32 or bfloat16
  )
  config.hjb = dict(
      enabled=False,                # HJB face correction (needs face masks and the face embedder)
      start=0,                      # first refine step (0-based)
      end=20,                       # last refine step (inclusive)
      iterations=3,                 # Adam iterations per refine step
      eta=0.1,                      # learning rate scale: step i uses eta * (1 - i / num_steps)
  )
  config.conditioning = dict(
      fps=7,                        # conditioning fps (as fps - 1) and output frame rate
      motion_bucket_id=127.0,       # SVD motion conditioning
      noise_aug_strength=0.02,      # noise added to the reference latents
  )
  config.io = dict(
      width=512,                    # generation size, multiples of 64; 0 takes the reference's size
      height=512,
      num_frames=0,                 # use the first N poses; 0: all
      seed=23123134,                # seed of each video's initial noise and noise augmentation
      batch_size=1,                 # videos per compiled program (same-sized cases are batched)
      compile_cache=True,           # JAX's persistent compilation cache
      compile_cache_dir='',         # '': $XDG_CACHE_HOME/sa-jax/jax (default ~/.cache/sa-jax/jax)
  )
  config.mesh = dict(
      shape='',                     # e.g. 'data=2,fsdp=4'; '': one device
      rules=dict(sharding.LOGICAL_RULES),   # logical axis -> mesh axes (names in sa_jax/sharding.py)
  )
  return config
