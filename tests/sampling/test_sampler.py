"""The sampler is one compiled program: traced once, no recompiles across inputs, mesh = one device."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from sa_jax import diffusion, sharding
from sa_jax.models import iresnet, random_init, stable_animator, unet, vae
from sa_jax.sampling import pipeline, sampler

N, H, W = 5, 8, 8  # frames, latent size


def _config(num_steps, tile_size, tile_overlap, decode_chunk_size, min_guidance=3.0, max_guidance=3.0, hjb=None):
  return sampler.SamplerConfig(num_steps=num_steps, min_guidance=min_guidance, max_guidance=max_guidance,
                               tile_size=tile_size, tile_overlap=tile_overlap, decode_chunk_size=decode_chunk_size,
                               scheduler=diffusion.ScheduleConfig(), hjb=hjb)


@pytest.fixture(scope='module')
def model():
  configs = stable_animator.ModelConfigs.from_dict(dict(
      unet=dict(block_out_channels=[32, 32], num_attention_heads=[1, 1], layers_per_block=1,
                down_block_types=['CrossAttnDownBlockSpatioTemporal', 'DownBlockSpatioTemporal'],
                up_block_types=['UpBlockSpatioTemporal', 'CrossAttnUpBlockSpatioTemporal'],
                cross_attention_dim=32, addition_time_embed_dim=8,
                projection_class_embeddings_input_dim=24),
      vae=dict(block_out_channels=[32, 32], layers_per_block=1),
      image_encoder=dict(hidden_size=32, intermediate_size=32, num_hidden_layers=1, num_attention_heads=1,
                         patch_size=32, projection_dim=32),
      pose_net=dict(noise_latent_channels=32, spatial_factor=2),
      face_encoder=dict(cross_attention_dim=32, clip_embeddings_dim=32, heads=1, perceiver_depth=1),
      face_embedder=dict(layers=[1, 1, 1, 1], num_features=16)))
  params = {'unet': random_init.random_params(unet.abstract_params(configs.unet), 1),
            'vae': random_init.random_params(vae.abstract_params(configs.vae), 2),
            'face_embedder': random_init.random_params(iresnet.abstract_params(configs.face_embedder), 3)}
  return configs, params


def _latents(seed):
  return 700.0 * np.random.default_rng(seed).standard_normal((1, N, H, W, 4), np.float32)


def _inputs(seed, boxes):
  rng = np.random.default_rng(seed + 100)
  return sampler.SamplerInputs(
      context=rng.standard_normal((1, 5, 32), np.float32),
      image_latents=rng.standard_normal((1, H, W, 4), np.float32),
      added_time_ids=np.array([[6, 127, 0.02]], np.float32),
      pose_latents=rng.standard_normal((1, N, H, W, 32), np.float32),
      face_boxes=np.asarray(boxes, np.int32)[None], reference_embedding=rng.standard_normal((1, 16)).astype(np.float32))


@pytest.mark.heavy
def test_one_program_for_the_whole_loop(model):
  configs, params = model
  networks = stable_animator.make_networks(configs, remat=True)
  traces, steps = [], []

  def counting_unet(*args):
    traces.append(1)                      # runs only while tracing
    return networks.unet(*args)

  config = _config(num_steps=3, tile_size=4, tile_overlap=2, min_guidance=1.0, max_guidance=2.0,
                   decode_chunk_size=2, hjb=sampler.HJBConfig(start=1, end=1, iterations=2, eta=0.1))
  denoise = jax.jit(sampler.make_denoiser(
      stable_animator.Networks(counting_unet, networks.decode, networks.embed_faces), config,
      progress=steps.append), donate_argnums=1)
  latents = jnp.asarray(_latents(0))
  first, _ = denoise(params, latents, _inputs(0, [[0, 7, 0, 7]] * N))
  jax.block_until_ready(first)
  assert latents.is_deleted(), 'the initial latents are donated to the result'
  assert len(traces) == 1, 'the UNet must be traced once for all steps'
  assert sorted(steps) == [0, 1, 2], 'the progress callback reports every step from inside the program'

  other_boxes = [[2, 9, 3, 12], [0, 15, 0, 15], [4, 5, 6, 7], [1, 8, 1, 8], [0, 3, 0, 3]]
  second, _ = denoise(params, jnp.asarray(_latents(1)), _inputs(1, other_boxes))
  jax.block_until_ready(second)
  assert len(traces) == 1 and denoise._cache_size() == 1, 'other inputs and boxes must not recompile'
  assert len(steps) == 6
  assert np.isfinite(np.asarray(second)).all()
  assert not np.allclose(first, second)


@pytest.mark.heavy
def test_mesh_gives_the_same_frames(model):
  configs, params = model
  if jax.device_count() < 8:
    raise RuntimeError('needs the 8 simulated devices of tests/conftest.py')
  config = _config(num_steps=2, tile_size=4, tile_overlap=2, decode_chunk_size=2)
  networks = stable_animator.make_networks(configs)
  inputs = _inputs(2, np.zeros((N, 4)))
  expected, _ = jax.jit(sampler.make_denoiser(networks, config))(params, _latents(2), inputs)

  mesh = sharding.make_mesh({sharding.DATA: 2, sharding.FSDP: 4}, jax.devices()[:8])
  shardings = {'unet': sharding.param_shardings(unet.abstract_params(configs.unet), mesh)}
  sharded = {'unet': jax.device_put(params['unet'], shardings['unet'])}
  replicated = NamedSharding(mesh, PartitionSpec())
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    got, _ = jax.jit(sampler.make_denoiser(networks, config))(sharded, jax.device_put(_latents(2), replicated),
                                                              jax.device_put(inputs, replicated))
  # Sharded reductions sum in another order: float32 noise, grown a little by the two steps.
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=0,
                             atol=5e-5 * np.abs(expected).max())
  frames = lambda z: pipeline.decode_video(params['vae'], configs.vae, jnp.asarray(z), 2)[1]
  diff = np.abs(np.asarray(frames(got), np.int16) - np.asarray(frames(expected), np.int16))
  assert diff.max() <= 1
