"""Tolerances of the parity tests, each derived from the quantity that bounds the error.

Nothing here is fitted to one reference set: every bound is computed from the case at hand (its
operand magnitudes, its recorded float64 spread, its learning rates and Adam iterations), so a set
with other shapes, seeds, step counts or learning rates gets its own bounds.

Rounding model. A correctly rounded float32 operation is within EPS32/2 of the exact result
(relative), so two float32 implementations of one operation (the reference and the port, which may
order or fuse operations differently) differ by at most EPS32 x |result|: the bounds below count
EPS32 per rounding and per operand magnitude, propagated to the output to first order.
Transcendental functions are not correctly rounded: numpy's float32 log/tan/exp are validated to
4/4/3 ulp (`numpy/_core/tests/data/umath-validation-set-*.csv`), so each implementation counts
`LIBM_ULPS` ulp, i.e. twice that for two implementations.
"""

import math

import numpy as np

from sa_jax.sampling import hjb

EPS32 = float(np.finfo(np.float32).eps)   # 2**-23: one float32 ulp of 1
LIBM_ULPS = 4.0
# Networks: the port differs from the float32 reference by about the sum of two float32 errors,
# each of the size the generator measured against float64 on this very case (case.json
# `fp32_vs_fp64` / `fp64_vs_fp32`, tabulated in reference/README.md). The factor is 2 for the two
# float32 results times 5 because that record is the maximum of one sample and other kernels
# (summation order, fused ops) reach a few times another sample's maximum.
SPREAD_FACTOR = 10.0
# Floor of a spread-based tolerance: a few roundings of the largest output, so that an output the
# float64 run happened to reproduce exactly does not demand bit-equality.
FLOOR_ULPS = 4.0


def _max_abs(x) -> float:
  return float(np.abs(np.asarray(x, np.float64)).max(initial=0.0))


# ---------------------------------------------------------------------------------------------
# Recorded float64 spread and network tolerances.
# ---------------------------------------------------------------------------------------------

def float64_record(case) -> dict:
  """The case's float32-vs-float64 record (either spelling the generator uses), `{}` if absent."""
  return case.meta.get('fp32_vs_fp64', case.meta.get('fp64_vs_fp32', {}))


def float64_spread(case, output: str, expected, run: str | None = None) -> float | None:
  """Recorded max |float32 - float64| of `output` (of pipeline `run`), in units of `expected`.

  An output without its own record (e.g. `posterior_logvar`, a keyword variant of a forward) gets
  the largest recorded relative spread (max abs diff / max |ref|) of the same network times its own
  max |ref|. None when the case records no float64 comparison (generator run with --no-fp64).
  """
  record = float64_record(case)
  if run is not None:
    record = record.get(run, {})
  entries = {k: v for k, v in record.items() if isinstance(v, dict) and 'max_abs' in v}
  if output in entries:
    return float(entries[output]['max_abs'])
  if not entries:
    return None
  rel = max(float(v['max_abs_over_max_ref']) for v in entries.values())
  return rel * _max_abs(expected)


def network_atol(case, output: str, expected, guidance: float, run: str | None = None) -> float:
  """Absolute tolerance of a network output: SPREAD_FACTOR x its recorded float64 spread.

  Without a float64 record, `guidance` is reference/README.md's absolute figure for outputs of
  order one (modules 1e-4 "to be safe", UNet 1e-4, pipeline without HJB 1e-2), scaled by
  max(1, max |ref|) so that a set with larger values is not held to a tighter relative bound.
  """
  peak = _max_abs(expected)
  spread = float64_spread(case, output, expected, run)
  if spread is None:
    return guidance * max(1.0, peak)
  return max(SPREAD_FACTOR * spread, FLOOR_ULPS * EPS32 * peak)


# ---------------------------------------------------------------------------------------------
# EDM / Euler arithmetic (float32 on both sides; operands are the recorded float32 arrays).
# ---------------------------------------------------------------------------------------------

def _f64(x):
  return np.asarray(x, np.float64)


def scale_model_input_rtol() -> float:
  """`x / sqrt(sigma^2 + 1)`, relative to the result.

  In units of one rounding u = EPS32/2, per implementation: sigma^2 (u), +1 (2u accumulated), the
  square root (half its argument's error plus one ulp, allowing `** 0.5` as pow: 3u), the divide
  (2u as reciprocal-multiply): <= 5u; two implementations 10u = 5 EPS32.
  """
  return 5 * EPS32


def predict_x0_bound(v, x, sigma) -> np.ndarray:
  """Elementwise bound on two float32 evaluations of `v * (-s / sqrt(s^2+1)) + x / (s^2+1)`.

  Relative errors per implementation in u = EPS32/2 (as in `scale_model_input_rtol`): the root 3u,
  c_out = -s / root 5u, a = v c_out 6u; s^2 + 1 2u, b = x / (s^2 + 1) 4u; the final add rounds
  its operands (u (|a| + |b|)). So <= 7u (|a| + |b|), 7 EPS32 (|a| + |b|) for two implementations.
  """
  s = float(sigma)
  a = np.abs(_f64(v)) * s / math.sqrt(s * s + 1.0)
  b = np.abs(_f64(x)) / (s * s + 1.0)
  return 7 * EPS32 * (a + b)


def euler_step_bound(x, x0, sigma, sigma_next, x0_bound=0.0) -> np.ndarray:
  """Elementwise bound on two float32 evaluations of `x + (x - x0) / s * (s' - s)`.

  With t = (x - x0) (s' - s) / s, per implementation in u = EPS32/2: x - x0 (u), / s (2u as
  reciprocal-multiply), s' - s (u), the product (u) give <= 5u |t|; the final add rounds its
  operands x and t (u (|x| + |t|)). So <= EPS32 (|x| + 6 |t|) for two implementations: the
  error scales with the inputs |x|, |x0| and the ratio |s' - s| / s, not with the result, which at
  s ~ 700 is the small remainder of x + t ~ x - 0.9 x. A difference `x0_bound` already present in
  x0 reaches the result with weight |s' - s| / s (<= 1).
  """
  s, s_next = float(sigma), float(sigma_next)
  ratio = abs(s_next - s) / s
  x = _f64(x)
  t = np.abs(x - _f64(x0)) * ratio
  return EPS32 * (np.abs(x) + 6 * t) + ratio * x0_bound


def training_sigma_rtol(u, image_d=64.0, noise_d_low=32.0, noise_d_high=64.0, sigma_data=0.5,
                        sigma_min=0.002, sigma_max=700.0) -> np.ndarray:
  """Elementwise relative bound on two float32 evaluations of the interpolated-cosine sigma law.

  The error is dominated by the float32 argument t of tan near pi/2 (u -> 0): tan amplifies an
  absolute error e_t of t by 2 / sin(2t). Per implementation (in float64 here, first order):
  e_t <= EPS32/2 (|t_min| + 2 |u (t_max - t_min)| + |t|) for rounding t_min, the range, the product
  and the sum; tan and log add LIBM_ULPS ulp each; the affine steps round their operands; exp adds
  LIBM_ULPS ulp. Doubled for two implementations.
  """
  u = _f64(u)
  eps = EPS32
  logsnr_min = -2 * math.log(sigma_min / sigma_data)
  logsnr_max = -2 * math.log(sigma_max / sigma_data)

  def shifted(noise_d):
    """(value, absolute error) of the shifted cosine logsnr for `noise_d`."""
    shift = 2 * math.log(noise_d / image_d)
    lo, hi = logsnr_min - shift, logsnr_max - shift
    t_min, t_max = math.atan(math.exp(-0.5 * hi)), math.atan(math.exp(-0.5 * lo))
    step = u * (t_max - t_min)
    t = t_min + step
    e_t = eps / 2 * (abs(t_min) + 2 * np.abs(step) + np.abs(t))
    log_tan = np.log(np.tan(t))
    e_log = e_t * 2 / np.abs(np.sin(2 * t)) + LIBM_ULPS * eps + LIBM_ULPS * eps * np.abs(log_tan)
    value = -2 * log_tan + shift
    return value, 2 * e_log + eps / 2 * (abs(shift) + np.abs(value))

  low, e_low = shifted(noise_d_low)
  high, e_high = shifted(noise_d_high)
  logsnr = low + u * (high - low)
  e_logsnr = (e_low + u * (e_low + e_high)
              + eps / 2 * (np.abs(high - low) + np.abs(u * (high - low)) + np.abs(logsnr)))
  per_impl = e_logsnr / 2 + LIBM_ULPS * eps + eps / 2
  return 2 * per_impl


# ---------------------------------------------------------------------------------------------
# Adam (HJB face correction).
# ---------------------------------------------------------------------------------------------

ADAM_EPS = hjb.ADAM_EPS          # torch Adam's default eps (reference/README.md: default betas/eps)


def adam_step_bound(k: int, b1: float = 0.9, b2: float = 0.999) -> float:
  """Bound on |m_hat / sqrt(v_hat)| at Adam iteration k (1-based), whatever the gradients.

  Cauchy-Schwarz on m_k = (1-b1) sum_j b1^j g_{k-j} against v_k = (1-b2) sum_j b2^j g_{k-j}^2:
  (1-b1)/(1-b1^k) sqrt((1-b2^k)/(1-b2)) sqrt(sum_{j<k} (b1^2/b2)^j). Iteration 1 gives exactly 1
  (the update is lr * g / (|g| + eps), ~ lr sign(g)); iteration 2 gives 1.0018 with torch's
  defaults. Adam's eps only shrinks the update.
  """
  if k < 1:
    raise ValueError(f'Adam iterations count from 1, got {k}')
  geometric = sum((b1 * b1 / b2) ** j for j in range(k))
  return (1 - b1) / (1 - b1 ** k) * math.sqrt((1 - b2 ** k) / (1 - b2)) * math.sqrt(geometric)


def adam_flip_weight(grad, grad_atol: float, first: bool = False) -> np.ndarray:
  """Elementwise share of one Adam iteration's full swing (2 lr) two implementations may differ by.

  An element whose recorded gradient is within the gradient's rounding error `grad_atol` may get
  the opposite sign (Adam moves it by ~lr either way: weight 1). Elsewhere the signs agree. At the
  first iteration the update is g / (|g| + eps): two gradients of one sign within grad_atol give
  updates within eps grad_atol / (|g| (|g| - grad_atol)). Later the update m_hat / sqrt(v_hat) is
  homogeneous of degree 0 in the gradients, so a relative gradient error grad_atol / |g| changes
  it by at most about that fraction.
  """
  g = np.abs(_f64(grad))
  flip = g <= grad_atol
  g = np.where(flip, 1.0, g)                       # placeholder where the weight is 1 anyway
  if first:
    other = ADAM_EPS * grad_atol / (2 * g * (g - grad_atol + 1e-300))
  else:
    other = grad_atol / g
  return np.where(flip, 1.0, np.minimum(1.0, other))


def refine_bound(lr: float, grads, grad_atol: float) -> np.ndarray:
  """Elementwise bound on |refined x0 (port) - refined x0 (reference)| of one HJB refine step.

  Both start from the same x0. Iteration 1 sees the same gradient up to `grad_atol`, so an element
  differs by 2 lr times its flip weight. From iteration 2 on the iterates may already differ where
  a sign flipped, so the gradients are no longer comparable: each later iteration k may differ by
  its full swing 2 lr `adam_step_bound(k)`. `grads`: the recorded gradients `[iterations, ...]`.
  """
  grads = np.asarray(grads)
  bound = 2 * lr * adam_step_bound(1) * adam_flip_weight(grads[0], grad_atol, first=True)
  return bound + 2 * lr * sum(adam_step_bound(k) for k in range(2, grads.shape[0] + 1))


def refine_mean_bound(lr: float, grads, grad_atols) -> float:
  """Bound on the mean over elements of |refined x0 (port) - refined x0 (reference)|.

  Each iteration k contributes 2 lr `adam_step_bound(k)` times the mean flip weight of the
  recorded gradient of that iteration (`adam_flip_weight` with that iteration's `grad_atols[k]`):
  only elements whose gradient is rounding-dominated swing the full 2 lr, the rest by their
  relative gradient uncertainty.
  """
  return float(sum(2 * lr * adam_step_bound(k + 1) * adam_flip_weight(g, a, first=k == 0).mean()
                   for k, (g, a) in enumerate(zip(grads, grad_atols))))


def correlation_bound(max_err: float, mean_err: float, expected) -> float:
  """Lowest Pearson correlation of `expected + d` with `expected` for |d| <= max_err, mean <= mean_err.

  ||d - mean d||^2 <= ||d||^2 <= N max_err mean_err, and the angle between the centred vectors is
  at most asin(r) with r^2 = that / ||expected - mean||^2, so corr >= sqrt(1 - r^2).
  """
  e = _f64(expected).ravel()
  r2 = max_err * mean_err * e.size / max(float(np.sum((e - e.mean()) ** 2)), 1e-300)
  return math.sqrt(max(0.0, 1.0 - r2))


def uint8_levels(decoded_err: float) -> int:
  """Frames are round(255 (x / 2 + 1/2)) of decoded x: a decoded error d moves them by at most
  127.5 d, and rounding either side of a level adds one."""
  return int(math.floor(127.5 * decoded_err)) + 1


# ---------------------------------------------------------------------------------------------
# reference/README.md guidance, used where the case records no float64 spread of the quantity.
# ---------------------------------------------------------------------------------------------

README_MODULE_ATOL = 1e-4     # single modules: "about 1e-5 absolute (1e-4 to be safe)"
README_UNET_ATOL = 1e-4       # "the UNet: about 1e-4 absolute"
README_PIPELINE_ATOL = 1e-2   # "pipeline runs without HJB: latents and decoded frames to about 1e-2"
README_GRAD_RTOL = 1e-3       # "gradient norms 1e-3 relative"


def guidance_atol(guidance: float, expected) -> float:
  """A README absolute figure (stated for outputs of order one) scaled by max(1, max |ref|)."""
  return guidance * max(1.0, _max_abs(expected))


# ---------------------------------------------------------------------------------------------
# SVD CLIP preprocessing (Gaussian blur, bicubic align_corners=True, normalisation).
# ---------------------------------------------------------------------------------------------

def _cubic_sums(a: float = -0.75) -> tuple[float, float]:
  """max over offsets t of sum |w| and sum |dw/dt| of torch's 4-tap cubic convolution kernel."""
  def w(x):
    x = np.abs(x)
    return np.where(x <= 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                    np.where(x < 2, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a, 0.0))
  t = np.linspace(0.0, 1.0, 1001)[:, None]
  offsets = t - np.array([-1.0, 0.0, 1.0, 2.0])
  h = 1e-6
  return (float(np.abs(w(offsets)).sum(-1).max()),
          float(np.abs((w(offsets + h) - w(offsets - h)) / (2 * h)).sum(-1).max()))


def clip_pixel_atol(in_hw, image_size: int, std) -> float:
  """Bound on two float32 evaluations of the CLIP pixel values of an `in_hw` image in [-1, 1].

  Per axis (reference: a k-tap blur, then the 4-tap bicubic; a port may fold both into one k+3
  tap matrix): one rounding per tap and per computed weight (the Gaussian's exp LIBM_ULPS ulp,
  about 6 for a cubic polynomial), amplified by the bicubic's sum |w| (up to 1.375); and the source
  position `i (n_in - 1) / (n_out - 1)` computed in float32 on either side may differ by one ulp of
  n_in - 1, which moves the interpolant by that times its slope (sum |w'| times the half range 1).
  The second axis carries the first's error times sum |w|. Then (x + 1) / 2 halves it, and
  (x - mean) / std divides it by std and rounds twice more (values up to (1 + mean) / std).
  """
  sum_w, sum_dw = _cubic_sums()
  errors = []
  for n_in in in_hw:
    sigma = max((n_in / image_size - 1) / 2, 0.001)
    k = int(max(4 * sigma, 3))
    k += 1 - k % 2
    per_tap = EPS32 / 2 * (k + 4 + 2 * LIBM_ULPS + 6) * sum_w
    errors.append(2 * per_tap + EPS32 * (n_in - 1) * sum_dw)
  err = errors[1] * sum_w + errors[0]
  std = np.asarray(std, np.float64)
  return float(np.max(err / 2 / std + 2 * EPS32 * (1 + 1 / std)))


# ---------------------------------------------------------------------------------------------
# Pipeline runs ('pipeline' cases: arrays prefixed by the run letter, case.json `runs`).
# ---------------------------------------------------------------------------------------------

def _prefix(run: str) -> str:
  return run.split('_')[0] + '_'                   # case.json `array_prefixes`: 'A_cfg2_notile' -> 'A_'


def pipeline_atol(case, run: str, output: str, expected) -> float:
  """A run's latents/decoded tolerance: SPREAD_FACTOR x the float64 spread the generator recorded
  for this run's `output` ('final_latents' or 'decoded'); README's 1e-2 without a record."""
  return network_atol(case, output, expected, README_PIPELINE_ATOL, run=run)


def pipeline_step_atols(case, run: str, i: int) -> tuple[float, float]:
  """(x0, latents) tolerances of step i of a run without HJB.

  The UNet-amplified rounding is bounded by the final latents' tolerance (the record is per run,
  not per step; the last step's x0 is the final latents). The reference's float64 run kept the
  scheduler in float32 (case.json `fp64_note`), so the x0 formula's and the Euler step's own
  rounding, large in absolute terms at sigma ~ 700, are added from this step's operand
  magnitudes (largest |x|, |x0|, |v|, with x and x0 taken of opposite signs).
  """
  io, prefix = case.io, _prefix(run)
  sigma = io[prefix + 'sigmas']
  x_peak = _latents_before_peak(case, run, i)
  x0_peak = _max_abs(io[prefix + 'step_pred_original'][i])
  x0_round = x0_rounding(case, run, i)
  step_round = float(euler_step_bound(x_peak, -x0_peak, sigma[i], sigma[i + 1], x0_round))
  final = plain_latent_atol(case, run)
  return final + x0_round, final + step_round


def _latents_before_peak(case, run: str, i: int) -> float:
  """max |latents| entering step i (case.json `arrays_meaning`, 'latents before step i')."""
  io, r, prefix = case.io, case.meta['runs'][run], _prefix(run)
  if i == 0:                                       # the initial noise times init_noise_sigma
    init = io['init_latents_tiled' if r['tile'] < r['F'] else 'init_latents']
    return _max_abs(init) * math.sqrt(float(io[prefix + 'sigmas'][0]) ** 2 + 1)
  return _max_abs(io[prefix + 'step_latents'][i - 1])


def x0_rounding(case, run: str, i: int) -> float:
  """Bound on the rounding of step i's x0 recomputed from the recorded model output and latents."""
  io, prefix = case.io, _prefix(run)
  v_peak = _max_abs(io[prefix + 'step_model_output'][i])
  return float(predict_x0_bound(v_peak, _latents_before_peak(case, run, i), io[prefix + 'sigmas'][i]))


def plain_latent_atol(case, run: str) -> float:
  """Latent tolerance of a run's rounding alone, without HJB sign flips.

  A run without HJB: its own `pipeline_atol`. An HJB run's record includes the flips, so it takes
  the largest tolerance among the case's runs without HJB (same networks and step counts), or
  README's 1e-2 guidance when the case has none.
  """
  io, runs = case.io, case.meta['runs']
  if not runs[run]['refine_steps']:
    return pipeline_atol(case, run, 'final_latents', io[_prefix(run) + 'final_latents'])
  plain = [pipeline_atol(case, name, 'final_latents', io[_prefix(name) + 'final_latents'])
           for name, r in runs.items() if not r['refine_steps']]
  return max(plain) if plain else guidance_atol(README_PIPELINE_ATOL, io[_prefix(run) + 'final_latents'])


def _hjb_steps(case, run: str) -> list[tuple[int, float, np.ndarray]]:
  """(refine step, recorded learning rate, recorded gradients `[iters, 1, F, C, h, w]`) per step."""
  io, r, prefix = case.io, case.meta['runs'][run], _prefix(run)
  iters = int(r['iters'])
  lrs, grads = io[prefix + 'hjb_adam_lr'], io[prefix + 'hjb_grad_z0']
  return [(step, float(lrs[j * iters]), grads[j * iters:(j + 1) * iters])
          for j, step in enumerate(sorted(r['refine_steps']))]


def hjb_grad_atol(grad) -> float:
  """Rounding level of a recorded face-loss gradient: README's 1e-3 relative, of its max |g|."""
  return README_GRAD_RTOL * _max_abs(grad)


def hjb_refine_bounds(case, run: str, step: int, lr: float) -> tuple[np.ndarray, float]:
  """(elementwise `[1, F, C, h, w]`, mean) bounds of one refine step's x0 from the recorded x0.

  `refine_bound` / `refine_mean_bound` with this step's recorded gradients and their rounding
  level, plus the rounding of the recomputed starting x0, which Adam carries unchanged.
  """
  (grads,) = [g for s, _, g in _hjb_steps(case, run) if s == step]
  start = x0_rounding(case, run, step)
  atols = [hjb_grad_atol(g) for g in grads]
  return refine_bound(lr, grads, atols[0]) + start, refine_mean_bound(lr, grads, atols) + start


def hjb_run_bounds(case, run: str) -> dict[str, float]:
  """Bounds on the final latents and decoded frames of a whole HJB run.

  Any element may flip at every Adam iteration (its gradient is rounding-dominated, or the
  iterates already differ): 2 lr `adam_step_bound(k)` summed over all iterations of all refine
  steps, on top of the rounding of a run without HJB. The Euler steps after a refine step mix x
  and x0 with weights sigma'/sigma and 1 - sigma'/sigma in [0, 1], so they do not amplify it; the
  last step returns its x0. The mean: the recorded gradients' mean flip weights
  (`refine_mean_bound`) per refine step. The decoded frames: the latent bound times the decoder's
  gain, the largest ratio of recorded float64 spreads decoded / final latents over the case's
  runs (1 without a record).
  """
  steps = _hjb_steps(case, run)
  plain = plain_latent_atol(case, run)
  swing = sum(2 * lr * sum(adam_step_bound(k) for k in range(1, g.shape[0] + 1)) for _, lr, g in steps)
  mean = sum(refine_mean_bound(lr, g, [hjb_grad_atol(gk) for gk in g]) for _, lr, g in steps)
  ratios = [v['decoded']['max_abs'] / v['final_latents']['max_abs']
            for v in float64_record(case).values()
            if isinstance(v, dict) and 'decoded' in v and 'final_latents' in v]
  gain = max(ratios) if ratios else 1.0
  return dict(max=swing + plain, mean=mean + plain, decoded=gain * (swing + plain))
