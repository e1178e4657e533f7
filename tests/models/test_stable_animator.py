"""The table of networks: every network converts, exports and builds from it; configs round-trip."""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax import traverse_util

from configs import svd_xt
from convert import release
from convert import state_dict as sd
from sa_jax import checkpoint, diffusion
from sa_jax.models import stable_animator
from sa_jax.models.stable_animator import NETWORKS, ModelConfigs


def test_every_network_has_a_config_field_and_a_converter():
  names = [n.name for n in NETWORKS]
  assert names == [f.name for f in dataclasses.fields(ModelConfigs)]
  assert set(release.CONVERTERS) == set(names)
  assert [n.name for n in NETWORKS if n.trained] == ['unet', 'pose_net', 'face_encoder']


def test_tiny_config_round_trips_through_json():
  models = ModelConfigs.from_dict(svd_xt.get_config('tiny').to_dict())
  assert models.names == tuple(n.name for n in NETWORKS)
  assert ModelConfigs.from_dict(models.to_dict()) == models
  config = checkpoint.CheckpointConfig(models=models, scheduler=diffusion.ScheduleConfig(), source='test')
  assert checkpoint.CheckpointConfig.from_json(config.to_json()) == config
  without = ModelConfigs.from_dict({k: v for k, v in models.to_dict().items() if k != 'face_embedder'})
  assert without.face_embedder is None and 'face_embedder' not in without.names
  with pytest.raises(ValueError, match=r"lack \['vae'\]"):
    ModelConfigs.from_dict({k: v for k, v in models.to_dict().items() if k != 'vae'})


def test_every_network_converts_exports_and_builds_from_the_table(release_dir):
  """Each release file converts with the table's converter into exactly the table's abstract
  parameter tree, and exports back to the tensors it was read from."""
  paths = release.ReleasePaths.from_checkpoints_dir(release_dir)
  params, config = release.convert_release(paths)
  files = dict(unet=paths.unet, pose_net=paths.pose_net, face_encoder=paths.face_encoder,
               face_embedder=paths.face_embedder, vae=sd.find_weights(paths.vae, 'diffusion_pytorch_model'),
               image_encoder=sd.find_weights(paths.image_encoder, 'model'))
  for network in NETWORKS:
    tree = params[network.name]
    abstract = nn.unbox(network.abstract_params(getattr(config.models, network.name)))
    shapes = lambda t: {k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(t).items()}
    assert shapes(tree) == shapes(abstract), network.name
    original = sd.load_state_dict(files[network.name])
    exported = release.CONVERTERS[network.name].export(tree)
    assert exported, network.name
    for key, value in exported.items():
      np.testing.assert_array_equal(value, original[key].astype(np.float32), err_msg=f'{network.name} {key}')
    # What export leaves out is only what the converter ignores (counters, position ids).
    left_out = set(original) - set(exported)
    assert all(k.endswith(('num_batches_tracked', 'position_ids')) for k in left_out), (network.name, left_out)


def test_load_reads_only_the_networks_asked_for(checkpoint_dir):
  params, config = checkpoint.load(checkpoint_dir, ('pose_net', 'face_encoder'))
  assert set(params) == {'pose_net', 'face_encoder'}
  assert set(config.models.names) == {n.name for n in NETWORKS}
  with pytest.raises(ValueError, match=r"has no \['nope'\]"):
    checkpoint.load(checkpoint_dir, ('nope',))


def test_conditioning_is_batched_and_per_video():
  """Each video's conditioning is what it gets alone (the noise augmentation comes from its own key)."""
  models = ModelConfigs.from_dict(svd_xt.get_config('tiny').to_dict())
  from sa_jax import animate
  params, _ = animate.tiny_model()
  rng = np.random.default_rng(0)
  reference = rng.integers(0, 256, (2, 64, 64, 3), np.uint8)
  poses = rng.integers(0, 256, (2, 3, 64, 64, 3), np.uint8)
  embedding = rng.standard_normal((2, 512)).astype(np.float32)
  keys = jax.vmap(jax.random.key)(np.arange(2))
  run = jax.jit(lambda r, p, e, k: stable_animator.condition(
      params, models, r, r, p, e, k, fps=7, motion_bucket_id=127.0, noise_aug_strength=0.02,
      image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5)))
  both = run(reference, poses, embedding, keys)
  assert both.context.shape == (2, 1 + models.unet.num_face_tokens, models.unet.cross_attention_dim)
  assert both.pose_latents.shape == (2, 3, 8, 8, models.unet.block_out_channels[0])
  for b in range(2):
    alone = run(reference[b:b + 1], poses[b:b + 1], embedding[b:b + 1], keys[b:b + 1])
    for name, x, y in zip(both._fields, both, alone):
      scale = float(np.abs(np.asarray(y)).max())
      # float32 rounding of the same maths at another batch size: a few ulps of the magnitude.
      np.testing.assert_allclose(np.asarray(x)[b:b + 1], y, rtol=0, atol=1e-5 * max(scale, 1.0), err_msg=name)
