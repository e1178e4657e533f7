"""Kernel axes, rules from config, the video axes, and the UNet on meshes of 8 simulated CPU devices vs
one device."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec

from sa_jax import sharding
from sa_jax.models import random_init, unet
from sa_jax.nn import linear

DATA, FSDP, CONTEXT, TENSOR = sharding.DATA, sharding.FSDP, sharding.CONTEXT, sharding.TENSOR
# The first kernels of pairs (`sharding.IN_PROJ`) by module name; every other kernel is `OUT_PROJ`.
PAIR_FIRSTS = ('to_q', 'to_k', 'to_v', 'id_to_k', 'id_to_v', 'linear_1', 'conv1', 'time_emb_proj',
               'ff/proj_in', 'ff_in/proj_in')


def _mesh(shape):
  if jax.device_count() < 8:
    raise RuntimeError('needs 8 devices: tests/conftest.py sets '
                       'XLA_FLAGS=--xla_force_host_platform_device_count=8 before JAX starts')
  return sharding.make_mesh(shape, jax.devices()[:8])


@pytest.fixture(scope='module')
def tiny():
  """Two levels, one layer each: every block type, a fast compile. -> (model, boxed params, inputs)."""
  config = unet.UNetConfig.from_dict(dict(
      block_out_channels=[32, 64], num_attention_heads=[1, 2], layers_per_block=1,
      down_block_types=['CrossAttnDownBlockSpatioTemporal', 'DownBlockSpatioTemporal'],
      up_block_types=['UpBlockSpatioTemporal', 'CrossAttnUpBlockSpatioTemporal'],
      cross_attention_dim=64, addition_time_embed_dim=16, projection_class_embeddings_input_dim=48))
  rng = np.random.default_rng(0)
  b, f, h, w = 2, 4, 16, 8
  inputs = (rng.standard_normal((b, f, h, w, 8), np.float32), np.array([0.3, -0.2], np.float32),
            rng.standard_normal((b, 5, 64), np.float32), np.array([[6, 127, 0.02]] * b, np.float32),
            rng.standard_normal((b, f, h, w, 32), np.float32))
  return unet.UNet(config), unet.abstract_params(config), inputs


@pytest.fixture(scope='module')
def single_device(tiny):
  """-> (params, output on one device)."""
  model, boxed, inputs = tiny
  params = random_init.random_params(boxed, seed=1)
  return params, jax.jit(model.apply)({'params': params}, *inputs)


def _specs(boxed, mesh, rules=sharding.LOGICAL_RULES):
  """`{'a/b/kernel': PartitionSpec}` of every parameter."""
  flat = traverse_util.flatten_dict(sharding.param_shardings(boxed, mesh, rules))
  return {'/'.join(path): s.spec for path, s in flat.items()}


def test_make_mesh_checks_device_count():
  with pytest.raises(ValueError, match='needs 16 devices'):
    sharding.make_mesh({DATA: 4, FSDP: 4}, jax.devices()[:8])
  with pytest.raises(ValueError, match='unknown mesh axes'):
    sharding.make_mesh({'model': 2}, jax.devices()[:2])
  assert sharding.make_mesh({DATA: -1}, jax.devices()[:8]).shape[DATA] == 8


def test_projections_carry_megatron_kernel_axes(tiny):
  specs = _specs(tiny[1], _mesh({DATA: 2, FSDP: 2, TENSOR: 2}))
  state = (FSDP, CONTEXT)   # EMBED: the state is split over every axis that splits a video
  column, row = PartitionSpec(state, TENSOR), PartitionSpec(TENSOR, state)
  spatial = 'down_blocks_0/attentions_0/transformer_blocks_0'
  temporal = 'down_blocks_0/attentions_0/temporal_transformer_blocks_0'
  for attn in ('attn1', 'attn2'):
    for proj in ('to_q', 'to_k', 'to_v'):
      assert specs[f'{spatial}/{attn}/{proj}/kernel'] == column
    assert specs[f'{spatial}/{attn}/to_out/kernel'] == row
    assert specs[f'{spatial}/{attn}/to_out/bias'] == PartitionSpec(state)
  for proj in ('id_to_k', 'id_to_v'):
    assert specs[f'{spatial}/attn2/{proj}/kernel'] == column
  for ff in (f'{spatial}/ff', f'{temporal}/ff_in', f'{temporal}/ff'):
    assert specs[f'{ff}/proj_in/kernel'] == column
    assert specs[f'{ff}/proj_in/bias'] == PartitionSpec(TENSOR)
    assert specs[f'{ff}/proj_out/kernel'] == row
  for proj in ('proj_in', 'proj_out'):   # they write the streams the pairs above read whole
    assert specs[f'down_blocks_0/attentions_0/{proj}/kernel'] == row
  resnet = 'down_blocks_0/resnets_0/spatial_res_block'
  assert specs[f'{resnet}/conv1/kernel'] == PartitionSpec(None, None, state, TENSOR)
  assert specs[f'{resnet}/conv2/kernel'] == PartitionSpec(None, None, TENSOR, state)
  # The whole tree: the last two kernel axes are `[state, tensor]` for the first of a pair,
  # `[tensor, state]` otherwise (every tiny width divides by 2: nothing falls back to replication).
  kernels = {path: spec for path, spec in specs.items() if path.endswith('/kernel')}
  for path, spec in kernels.items():
    first = any(path.endswith(f'/{name}/kernel') for name in PAIR_FIRSTS)
    assert tuple(spec[-2:]) == tuple(column if first else row) and not any(spec[:-2]), (path, spec)


def test_rules_from_config():
  default = {'batch': [DATA, FSDP], 'frames': CONTEXT, 'rows': [DATA, FSDP, CONTEXT], 'length': None,
             'embed': [FSDP, CONTEXT], 'mlp': TENSOR, 'norm': None}
  assert sharding.rules_from_config(default) == sharding.LOGICAL_RULES
  assert sharding.rules_from_config(dict(sharding.LOGICAL_RULES)) == sharding.LOGICAL_RULES   # the configs' form
  assert sharding.rules_from_config({'mlp': [TENSOR, FSDP], 'embed': []}) == (
      (sharding.EMBED, None), (sharding.MLP, (TENSOR, FSDP)))
  with pytest.raises(ValueError, match=r"unknown logical axes \['emb', 'heads'\]; expected a subset of"):
    sharding.rules_from_config({'emb': FSDP, 'heads': TENSOR, 'mlp': TENSOR})
  with pytest.raises(ValueError, match=r"logical axis 'batch' maps to unknown mesh axes \['model'\]"):
    sharding.rules_from_config({'batch': [DATA, 'model']})
  with pytest.raises(ValueError, match=r"'mlp' maps to \['tensor', 'tensor'\], which repeats"):
    sharding.rules_from_config({'mlp': [TENSOR, TENSOR]})
  with pytest.raises(ValueError, match="'embed' maps to 2; expected a mesh axis name"):
    sharding.rules_from_config({'embed': 2})


def test_rules_from_config_drive_param_shardings(tiny):
  mesh = _mesh({DATA: 2, FSDP: 2, TENSOR: 2})
  specs = _specs(tiny[1], mesh, sharding.rules_from_config({'embed': FSDP}))
  assert not any(TENSOR in spec for spec in specs.values())
  assert specs['conv_in/kernel'] == PartitionSpec(None, None, None, FSDP)
  batch = sharding.batch_sharding(mesh, 3, sharding.rules_from_config({'batch': TENSOR}))
  assert batch.spec == PartitionSpec(TENSOR, None, None)


def test_parse_mesh_shape():
  assert sharding.parse_mesh_shape('data=2, fsdp=4') == {DATA: 2, FSDP: 4}
  assert sharding.parse_mesh_shape('data=2,fsdp=2,context=2') == {DATA: 2, FSDP: 2, CONTEXT: 2}
  assert sharding.parse_mesh_shape('tensor=2,data=-1') == {TENSOR: 2, DATA: -1}
  for text, error in [('', "'' is not axis=size"), ('data:2', "'data:2' is not axis=size"),
                      ('data=2,model=2', "unknown mesh axis 'model'"),
                      ('data=2,data=4', "'data' is given twice"),
                      ('fsdp=two', "size 'two' of 'fsdp' is not an integer"),
                      ('fsdp=0', "size 0 of 'fsdp'; expected >= 1 or -1")]:
    with pytest.raises(ValueError, match=error):
      sharding.parse_mesh_shape(text)


def test_video_axes_split_frames_over_context():
  mesh = _mesh({DATA: 2, FSDP: 2, CONTEXT: 2})
  assert dict(mesh.shape) == {DATA: 2, FSDP: 2, CONTEXT: 2, TENSOR: 1}
  assert sharding.make_mesh({DATA: 2}, jax.devices()[:2]).shape[CONTEXT] == 1
  # [B, F, ...] batch fields: videos over the batch axes, each video's frames over context.
  assert sharding.video_sharding(mesh, 5).spec == PartitionSpec((DATA, FSDP), CONTEXT, None, None, None)
  assert sharding.batch_sharding(mesh, 4).spec == PartitionSpec((DATA, FSDP), None, None, None)
  # The merged rows [BF, ...]: B major, so a device's rows are consecutive frames of one video.
  rows = nn.logical_to_mesh_axes((sharding.ROWS, None), sharding.LOGICAL_RULES)
  assert rows == PartitionSpec((DATA, FSDP, CONTEXT), None)
  assert sharding.video_sharding(mesh, 3, sharding.rules_from_config({'batch': DATA})).spec == \
      PartitionSpec(DATA, None, None)


def test_constrain_pins_only_layouts_the_mesh_holds():
  mesh = _mesh({DATA: 2, FSDP: 2, CONTEXT: 2})
  video = (sharding.BATCH, sharding.FRAMES, None)
  x = jnp.zeros((4, 6, 3))
  assert sharding.constrain(x, video) is x                      # outside a mesh with rules: unchanged

  def spec_of(shape):
    text = jax.jit(lambda x: sharding.constrain(x, video) * 2).lower(jnp.zeros(shape)).as_text()
    return re.findall(r'sdy.sharding_constraint[^\n]*', text)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    pinned = spec_of((4, 6, 3))
    assert len(pinned) == 1 and '{"data", "fsdp"}, {"context"}' in pinned[0], pinned
    assert not spec_of((2, 6, 3)) and not spec_of((4, 3, 3))   # 2 videos on 4 shards, 3 frames on 2


@pytest.mark.parametrize('kernel_axes', [sharding.IN_PROJ, sharding.OUT_PROJ])
def test_temporal_conv_with_sharded_frames_matches_single_device(kernel_axes):
  """Frames sharded over fsdp, tensor unused by the input: XLA miscomputes a lax convolution here."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 4, 4, 4, 32), np.float32)                # [B, F, H, W, C]
  conv = linear.temporal_conv(64, kernel_axes=kernel_axes)
  boxed = jax.eval_shape(conv.init, jax.random.key(0), x)['params']
  params = random_init.random_params(boxed, seed=1)
  loss = lambda params, x: jnp.sum(jnp.sin(conv.apply({'params': params}, x)))
  value_and_grads = jax.jit(jax.value_and_grad(loss, (0, 1)))
  want = value_and_grads(params, x)
  mesh = _mesh({DATA: 2, FSDP: 2, TENSOR: 2})
  params = jax.device_put(params, sharding.param_shardings(boxed, mesh))
  x = jax.device_put(x, NamedSharding(mesh, PartitionSpec(DATA, FSDP)))
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    got = value_and_grads(params, x)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    # float32 rounding of sums whose terms reach max|w|, in another order.
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=0, atol=1e-5 * float(np.abs(w).max()))


@pytest.mark.parametrize('shape', [{DATA: 2, FSDP: 4}, {DATA: 2, FSDP: 2, TENSOR: 2}],
                         ids=['data2_fsdp4', 'data2_fsdp2_tensor2'])
def test_unet_sharded_matches_single_device(tiny, single_device, shape):
  model, boxed, inputs = tiny
  params, expected = single_device
  mesh = _mesh(shape)
  param_shardings = sharding.param_shardings(boxed, mesh)
  split_over = {axis for s in jax.tree.leaves(param_shardings) for entry in s.spec if entry
                for axis in ((entry,) if isinstance(entry, str) else entry)}
  for axis in (FSDP, TENSOR):
    if mesh.shape[axis] > 1:
      assert axis in split_over, f'no parameter is sharded over {axis}'
  sharded = jax.device_put(params, param_shardings)
  data = NamedSharding(mesh, PartitionSpec(DATA))
  inputs = jax.device_put(inputs, data)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    out = jax.jit(model.apply, out_shardings=data)({'params': sharded}, *inputs)
  assert out.sharding.spec == data.spec
  np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=2e-5, rtol=0)


def test_unet_with_frames_split_matches_single_device_and_gathers_no_activation(tiny, single_device):
  """data=2 x context=4: each device holds one frame of one video. The parameters are replicated on
  this mesh, so an all-gather could only gather activations: the temporal resnets exchange boundary
  frames (collective-permute) and the temporal transformers re-split their sequences (all-to-all)."""
  model, _, inputs = tiny
  params, expected = single_device
  mesh = _mesh({DATA: 2, CONTEXT: 4})
  video, data = NamedSharding(mesh, PartitionSpec(DATA, CONTEXT)), NamedSharding(mesh, PartitionSpec(DATA))
  inputs = [jax.device_put(x, video if x.ndim == 5 else data) for x in inputs]
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    compiled = jax.jit(model.apply, out_shardings=video).lower({'params': params}, *inputs).compile()
  out = compiled({'params': params}, *inputs)
  np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=2e-5, rtol=0)
  ops = re.findall(r' (all-gather|all-to-all|collective-permute|all-reduce|reduce-scatter)(?:-start)?\(',
                   compiled.as_text())
  assert 'all-gather' not in ops and {'all-to-all', 'collective-permute'} <= set(ops), sorted(set(ops))
