"""The whole animation pipeline against the reference runs of every 'pipeline' case (SPEC §4).

Runs without HJB are compared step by step; the HJB run is compared tightly up to the first Adam
update and loosely after it, as reference/README.md prescribes (Adam's first step is about
`lr * sign(grad)`, so rounding-level gradient differences flip individual updates).
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import animate as animate_config
from convert import release
from sa_jax import animate, checkpoint, diffusion
from sa_jax.models import stable_animator
from sa_jax.sampling import hjb, pipeline, sampler
from tests.parity import bounds, reference

pytestmark = [pytest.mark.parity, pytest.mark.heavy]

CASES = reference.cases('pipeline')
PLAIN_RUNS = [pytest.param(c, name, id=f'{c}-{name}') for c in CASES
              for name, r in c.meta['runs'].items() if not r['refine_steps']]
HJB_RUNS = [pytest.param(c, name, id=f'{c}-{name}') for c in CASES
            for name, r in c.meta['runs'].items() if r['refine_steps']]


def _nhwc(x):
  return np.moveaxis(np.asarray(x), -3, -1)


def _video(x):
  """`[1, F, C, h, w]` -> `[F, h, w, C]`."""
  return _nhwc(x[0])


@pytest.fixture(scope='module', params=CASES, ids=str)
def setup(request, tmp_path_factory):
  """The case's weights converted and saved by the converter, then loaded as sa-animate loads them."""
  case = request.param
  folder = tmp_path_factory.mktemp('pipeline') / 'ckpt'
  checkpoint.save(folder, *release.convert_release(case.release_paths()))
  params, config = checkpoint.load(folder)
  embedding = folder.parent / 'face_embedding.npy'
  np.save(embedding, case.io['id_embedding'])
  return case, params, config, embedding


def _run_settings(case, run):
  """sa-animate's run settings (configs/animate.py) set to the recorded run."""
  r = case.meta['runs'][run]
  args = case.meta['common_call_args']
  settings = animate_config.get_config()
  settings.sampler.update(num_steps=r['steps'], guidance=r['gmax'], min_guidance=r['gmin'], tile_size=r['tile'],
                          tile_overlap=r['overlap'], decode_chunk_size=int(args['decode_chunk_size']))
  settings.hjb.update(enabled=bool(r['refine_steps']), start=r['start'], end=r['end'], iterations=r['iters'],
                      eta=float(args['eta_scheduler']))
  settings.conditioning.update(fps=int(args['fps']), motion_bucket_id=float(args['motion_bucket_id']),
                               noise_aug_strength=float(args['noise_aug_strength']))
  settings.io.update(width=case.meta['width'], height=case.meta['height'], num_frames=r['F'])
  return settings


def _request(setup, run):
  """The case's input files read by sa-animate's reader, as a batch of one."""
  case, _, config, embedding = setup
  files = case.meta['files']
  inputs = animate.Inputs(reference=case.path / 'reference.png', poses=case.path / 'poses',
                          face_masks=case.path / 'faces', reference_face_mask=case.path / 'reference_mask.png',
                          face_embedding=embedding)
  assert all((case.path / name.split('/')[0]).exists() for name in files), files
  settings = _run_settings(case, run)
  settings.hjb.enabled = True                      # read the masks too
  request = animate.load_request(inputs, settings, config.models.face_encoder.id_embeddings_dim)
  frames = case.meta['runs'][run]['F']
  np.testing.assert_array_equal(request.reference, case.io['reference_image_uint8'])
  np.testing.assert_array_equal(request.poses, case.io['pose_images_uint8'][:frames])
  np.testing.assert_array_equal(request.face_boxes, case.io['face_boxes'][:frames])
  np.testing.assert_array_equal(request.reference_face_box, case.io['reference_face_box'])
  return pipeline.Request.stack([request])


def _sampler_config(case, run, config):
  return sampler.SamplerConfig.from_config(_run_settings(case, run), config.scheduler, case.meta['runs'][run]['F'])


def test_conditioning(setup):
  case, params, config, _ = setup
  io = case.io
  run = next(iter(case.meta['runs']))
  prefix = run.split('_')[0] + '_'
  request = _request(setup, run)
  args = case.meta['common_call_args']
  cond = stable_animator.condition(
      params, config.models, request.reference, request.reference_resized, request.poses, request.face_embedding,
      jax.vmap(jax.random.key)(np.zeros(1, np.uint32)), fps=int(args['fps']),
      motion_bucket_id=float(args['motion_bucket_id']), noise_aug_strength=float(args['noise_aug_strength']),
      image_mean=config.image_mean, image_std=config.image_std)
  # The unconditional branch is zeros, built by the sampler: the reference records both rows.
  np.testing.assert_array_equal(io[prefix + 'encoder_hidden_states'][0], 0.0)
  # CLIP + face encoder and the VAE encoder: README module guidance, scaled by max |ref| (the
  # pipeline case records no float64 spread of its conditioning).
  context = io[prefix + 'encoder_hidden_states'][1:]
  reference.assert_close(cond.context, context, bounds.guidance_atol(bounds.README_MODULE_ATOL, context),
                         name='context')
  image_latents = _nhwc(io[prefix + 'vae_image_latents'][1:])
  reference.assert_close(cond.image_latents, image_latents,
                         bounds.guidance_atol(bounds.README_MODULE_ATOL, image_latents), name='image latents')
  np.testing.assert_array_equal(io[prefix + 'vae_image_latents'][0], 0.0)
  # (fps - 1, motion bucket, noise strength): the same numbers rounded once to float32 each side.
  reference.assert_close(cond.added_time_ids, io[prefix + 'added_time_ids'][1:], 0.0, bounds.EPS32,
                         name='added time ids')


def _initial_noise(case, run):
  """The run's recorded tile of initial noise `[1, T, h, w, 4]` (before init_noise_sigma)."""
  r = case.meta['runs'][run]
  return _video(case.io['init_latents_tiled' if r['tile'] < r['F'] else 'init_latents'])[None]


def _run(setup, run):
  """The whole run through `Animator`, the entry point sa-animate uses, with the recorded noise."""
  case, params, config, _ = setup
  prefix = run.split('_')[0] + '_'
  animator = pipeline.Animator(config, _sampler_config(case, run, config),
                               pipeline.ConditioningConfig.from_config(_run_settings(case, run)), trace=True)
  out = animator.run(params, _request(setup, run), [0], noise=_initial_noise(case, run))
  trajectory = jax.tree.map(lambda x: x[:, 0], out.trajectory)              # [steps, 1, ...] -> [steps, ...]
  return prefix, out.latents[0], trajectory, out.decoded[0], out.frames[0]


@pytest.mark.parametrize('setup, run', PLAIN_RUNS, indirect=['setup'])
def test_runs_without_hjb(setup, run):
  prefix, final, trajectory, decoded, frames = _run(setup, run)
  case = setup[0]
  io = case.io
  # The guided model output itself is not compared: at the last sigma (0.002) it enters x0 with
  # weight ~sigma, so rounding-level latent differences make it differ by ~1e-1 harmlessly.
  # Per step: the run's recorded float64 spread x SPREAD_FACTOR plus the x0 formula's and Euler
  # step's own float32 rounding from this step's operand magnitudes (bounds.pipeline_step_atols).
  for i in range(trajectory.latents.shape[0]):
    x0_atol, latents_atol = bounds.pipeline_step_atols(case, run, i)
    reference.assert_close(trajectory.x0[i], _video(io[prefix + 'step_pred_original'][i]), x0_atol,
                           name=f'{prefix}x0 {i}')
    reference.assert_close(trajectory.latents[i], _video(io[prefix + 'step_latents'][i]), latents_atol,
                           name=f'{prefix}latents {i}')
  reference.assert_close(final, _video(io[prefix + 'final_latents']),
                         bounds.pipeline_atol(case, run, 'final_latents', io[prefix + 'final_latents']),
                         name=f'{prefix}final')
  decoded_err, _ = reference.assert_close(decoded, np.moveaxis(io[prefix + 'decoded'][0], 0, -1),
                                          bounds.pipeline_atol(case, run, 'decoded', io[prefix + 'decoded']),
                                          name=f'{prefix}decoded')
  # The frames are a fixed function of the decoded values: their levels follow the decoded error.
  diff = np.abs(np.asarray(frames, np.int16) - io[prefix + 'frames_uint8'].astype(np.int16))
  levels = bounds.uint8_levels(decoded_err)
  assert diff.max() <= levels, f'{prefix}frames differ by up to {diff.max()} levels > {levels}'


def _unrefined_x0(case, run, step, config):
  """x0 of a refine step before the face correction, from the recorded model output and latents.

  The golden `hjb_z0_before_adam` entries cannot serve: the generator stored the tensor that Adam
  then updated in place, so every entry holds the *refined* x0 of its step (it equals
  `step_pred_original[step]`). This recomputes the value the first Adam step started from.
  """
  io = case.io
  prefix = run.split('_')[0] + '_'
  sigma = diffusion.sigmas(config.num_steps, config.scheduler)
  if step == 0:
    x = pipeline.initial_latents(_initial_noise(case, run), case.meta['runs'][run]['F'], config.scheduler)[0]
  else:
    x = _video(io[prefix + 'step_latents'][step - 1])
  return np.asarray(diffusion.predict_x0(_video(io[prefix + 'step_model_output'][step]), x, sigma[step]))


@pytest.mark.parametrize('setup, run', HJB_RUNS, indirect=['setup'])
def test_hjb_face_correction_steps(setup, run):
  """Reference face, crops, embeddings and gradient at the first Adam step match tightly; each
  refine step's Adam iterations from the recorded x0 land on the recorded refined x0."""
  case, params, config, _ = setup
  prefix = run.split('_')[0] + '_'
  io = case.io
  r = case.meta['runs'][run]
  cfg = _sampler_config(case, run, config)
  request = _request(setup, run)
  embedding = stable_animator.reference_face_embedding(params, config.models, request.reference,
                                                       request.reference_face_box)
  # Crops and embeddings before the first Adam step: VAE decode (bilinear resampling and the clamp do
  # not amplify its error) and IResNet, README module guidance scaled by max |ref|.
  ref_embedding = io[prefix + 'ref_face_embedding'][:1]
  reference.assert_close(embedding, ref_embedding, bounds.guidance_atol(bounds.README_MODULE_ATOL, ref_embedding),
                         name='reference face embedding')
  networks = stable_animator.make_networks(config.models, remat=True)
  terms = dict(boxes=jnp.asarray(request.face_boxes), reference_embedding=embedding,
               decode=lambda lat: networks.decode(params['vae'], lat, cfg.decode_chunk_size),
               embed=lambda faces: networks.embed_faces(params['face_embedder'], faces))
  # The sampler's gradient: accumulated one decode chunk at a time.
  grad_fn = lambda z: hjb.face_loss_grad(z[None], decode_chunk_size=cfg.decode_chunk_size, **terms)[1][0]

  first = min(r['refine_steps'])
  z0 = _unrefined_x0(case, run, first, cfg)
  _, aux = jax.jit(lambda z: hjb.face_loss(z[None], **terms))(z0)
  grad = jax.jit(grad_fn)(z0)
  faces = _nhwc(io[prefix + 'hjb_cropped_faces_first_call'][0])
  reference.assert_close(aux['faces'][0, 0], faces, bounds.guidance_atol(bounds.README_MODULE_ATOL, faces),
                         name='first face crop')
  embeddings = io[prefix + 'hjb_face_embeddings'][0]
  reference.assert_close(aux['embeddings'][0], embeddings,
                         bounds.guidance_atol(bounds.README_MODULE_ATOL, embeddings), name='face embeddings')
  # README: gradients to 1e-3 relative, here of max |g| (bounds.hjb_grad_atol). Elements above that
  # level cannot change sign, so Adam's first step (~lr sign(g)) agrees on them.
  expected_grad = _video(io[prefix + 'hjb_grad_z0'][0])
  grad_atol = bounds.hjb_grad_atol(expected_grad)
  reference.assert_close(grad, expected_grad, grad_atol, name='gradient')
  large = np.abs(expected_grad) > grad_atol
  np.testing.assert_array_equal(np.sign(np.asarray(grad))[large], np.sign(expected_grad)[large])

  refine = jax.jit(lambda z, lr: hjb.refine(z, lr, cfg.hjb.iterations, grad_fn))
  for step in sorted(r['refine_steps']):
    lr = cfg.hjb.eta * (1 - step / cfg.num_steps)
    refined = refine(_unrefined_x0(case, run, step, cfg), lr)
    err = np.abs(np.asarray(refined) - _video(io[prefix + 'step_pred_original'][step]))
    # A sign flip of a rounding-dominated gradient moves an element by 2 lr per Adam iteration; an
    # element with a gradient above its rounding level can only differ at iteration 1 by its
    # relative gradient error, later iterations by their full swing (bounds.refine_bound). The mean:
    # the recorded gradients' share of rounding-dominated elements (bounds.refine_mean_bound).
    bound, mean_bound = bounds.hjb_refine_bounds(case, run, step, lr)
    bound = _video(bound)
    worst = tuple(int(k) for k in np.unravel_index(np.argmax(err - bound), err.shape))
    assert (err <= bound).all(), (f'step {step}: refined x0 off by {err[worst]:.3g} > bound {bound[worst]:.3g} '
                                  f'(lr {lr:.3g}) at {worst}')
    assert err.mean() <= mean_bound, f'step {step}: mean refined x0 error {err.mean():.3g} > {mean_bound:.3g}'


@pytest.mark.parametrize('setup, run', HJB_RUNS, indirect=['setup'])
def test_hjb_run_stays_within_the_learning_rates(setup, run):
  """After Adam, individual elements may differ by up to the summed learning rates."""
  case = setup[0]
  prefix, final, trajectory, decoded, frames = _run(setup, run)
  io = case.io
  refine = set(case.meta['runs'][run]['refine_steps'])
  first = min(refine)
  for i in range(first):
    reference.assert_close(trajectory.latents[i], _video(io[prefix + 'step_latents'][i]),
                           bounds.pipeline_step_atols(case, run, i)[1], name=f'{prefix}latents {i} (before HJB)')
  # Up to 2 lr per Adam iteration per element (sign flips), the mean by the recorded gradients'
  # share of rounding-dominated elements, decoded by the decoder's recorded gain
  # (bounds.hjb_run_bounds); the correlation follows from the max and mean bounds.
  bound = bounds.hjb_run_bounds(case, run)
  expected = _video(io[prefix + 'final_latents'])
  err = np.abs(np.asarray(final) - expected)
  assert err.max() <= bound['max'], f'max latent error {err.max():.3g} > {bound["max"]:.3g}'
  assert err.mean() <= bound['mean'], f'mean latent error {err.mean():.3g} > {bound["mean"]:.3g}'
  corr = np.corrcoef(np.asarray(final).ravel(), expected.ravel())[0, 1]
  min_corr = bounds.correlation_bound(bound['max'], bound['mean'], expected)
  assert corr >= min_corr, f'final latents correlate {corr:.4f} < {min_corr:.4f} with the reference'
  decoded_err = np.abs(np.asarray(decoded) - np.moveaxis(io[prefix + 'decoded'][0], 0, -1))
  assert decoded_err.max() <= bound['decoded'], \
      f'decoded frames off by {decoded_err.max():.3g} > {bound["decoded"]:.3g}'
