"""Autoregressive WaveNet prior: a causal WaveNet over the continuous waveform, a
categorical over quantised sample values, exact log densities and a cached sampler.

  input     x [B, T] shifted right by one sample (first input 0), as a channel [B, T, 1]:
            the logits at t see x_{<t} only, as continuous numbers (PnF), so log p(x) is
            differentiable in the history.
  network   `wavenet.WaveNet(causal=True)` -> logits [B, T, num_bins] of x_t given x_{<t}.
  bins      `num_bins` bins covering [-1, 1]: 'linear' (equal widths 2 / num_bins), or
            'mu_law' (equal widths in mu-law space, so narrow near 0 and wide near +-1).
            Linear is the default for separation: mixing is linear in the waveform, and
            a mu-law density is far more peaked near 0 than near +-1 (PnF).

Densities, nats per sample of the waveform (comparable with the flow):
  log_prob(x)_t        = log P(bin of x_t | x_{<t}) - log(width of that bin in the waveform):
                         the categorical read as a piecewise-uniform density on [-1, 1],
                         so log 0 = -inf for x_t outside [-1, 1] (a noise probe beyond
                         +-1 is impossible under it, not rated as the edge bin). Training
                         clips its targets into [-1, 1] (`build_prior`). Differentiable
                         in x through the history; the bin membership of x_t is piecewise
                         constant, so its gradient through the target is zero. That is why
                         Langevin separation uses the smoothed density below.
  level_log_prob(x, s)_t = log of that piecewise-uniform density convolved with N(0, s^2),
                         evaluated at x_t, history x_{<t} as given (noisy):
                           log sum_b P(b | x_{<t}) * (Phi((hi_b - x_t) / s) - Phi((lo_b - x_t) / s))
                                                   / (hi_b - lo_b),
                         the exact density of y = x + s * eps when x_t follows the
                         categorical (PnF's smoothing, with uniform bins instead of point
                         masses at their centres; s = 0 gives log_prob, finite everywhere
                         for s > 0). Smooth in x_t as well as in the history. It is the
                         density of noisy audio when the params were fine-tuned on noisy
                         histories with clean targets (`history_log_prob(params, noisy,
                         clean)`, PnF).

Sampling: `cached_sample_bins` runs one new sample per `lax.scan` step with a ring buffer
of past inputs per layer (O(layers) work per sample; lm1b temperature_sampler style, a
pure step over the params tree); `naive_sample_bins` reruns the whole network over the
whole length for every sample. Both draw step t with `jax.random.fold_in(key, t)`, so they
sample the same bins for the same key. Samples are bin centres (midpoints in the waveform).
"""
import functools
import math
from typing import Callable, NamedTuple, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from audiosep_jax import priors
from audiosep_jax.models import wavenet

QUANTIZATIONS = ("linear", "mu_law")


# Quantisation --------------------------------------------------------------------------


def mu_law_encode(x, mu):
  """Waveform [-1, 1] -> mu-law [-1, 1] (elementwise)."""
  return jnp.sign(x) * jnp.log1p(mu * jnp.abs(x)) / np.log1p(mu)


def mu_law_decode(y, mu):
  """Inverse of `mu_law_encode` (elementwise, in numpy: the bin edges, float64)."""
  return np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu


def check_quantization(num_bins, quantization, mu):
  if quantization not in QUANTIZATIONS:
    raise ValueError(f"config.model.quantization={quantization!r}; choose one of "
                     f"{', '.join(QUANTIZATIONS)}.")
  if num_bins < 2:
    raise ValueError(f"config.model.num_bins must be >= 2, got {num_bins}.")
  if quantization == "mu_law" and not mu > 0:
    raise ValueError(f"config.model.mu must be > 0 for mu-law bins, got {mu}.")


def bin_edges(num_bins, quantization, mu):
  """The num_bins + 1 increasing bin edges in the waveform, from -1 to 1 (float64 numpy)."""
  check_quantization(num_bins, quantization, mu)
  edges = np.linspace(-1.0, 1.0, num_bins + 1)
  if quantization == "mu_law":
    edges = mu_law_decode(edges, mu)
  return edges


def bin_index(x, num_bins, quantization, mu):
  """x [...] -> the int32 index of its bin; values outside [-1, 1] go to the edge bins."""
  y = jnp.clip(x, -1.0, 1.0)
  if quantization == "mu_law":
    y = mu_law_encode(y, mu)
  return jnp.clip(jnp.floor((y + 1.0) * (0.5 * num_bins)), 0, num_bins - 1).astype(jnp.int32)


class Bins(NamedTuple):
  """Per-bin constants, float32: edges [num_bins + 1], the others [num_bins]."""
  edges: jax.Array
  centre: jax.Array  # midpoint in the waveform
  log_width: jax.Array


def make_bins(num_bins, quantization, mu):
  edges = bin_edges(num_bins, quantization, mu)
  lower, upper = edges[:-1], edges[1:]
  return Bins(*(jnp.asarray(a, jnp.float32) for a in
                (edges, 0.5 * (lower + upper), np.log(upper - lower))))


# Densities from logits -----------------------------------------------------------------


# From this many standard deviations on, the normal tail is its asymptotic series
# (float32 erfc underflows near 13); the first term left out is below 1e-7 relative there.
ASYMPTOTIC_TAIL_FROM = 10.0
SQRT_HALF = math.sqrt(0.5)


def log_ndtr_lower(t):
  """log Phi(-t) for t >= 0 (elementwise), one log each: log(erfc(t / sqrt 2) / 2) below
  ASYMPTOTIC_TAIL_FROM, above it log of phi(t) / t (1 - t^-2 + 3 t^-4 - 15 t^-6 + 105 t^-8)."""
  near = t < ASYMPTOTIC_TAIL_FROM
  t_near = jnp.where(near, t, 0.0)
  t_far = jnp.where(near, ASYMPTOTIC_TAIL_FROM, t)
  u = 1.0 / jnp.square(t_far)
  series = (1.0 + u * (-1.0 + u * (3.0 + u * (-15.0 + u * 105.0)))) / t_far
  mantissa = jnp.where(near, 0.5 * jax.lax.erfc(t_near * SQRT_HALF), series)
  exponent = jnp.where(near, 0.0, -0.5 * jnp.square(t_far) - priors.LOG_SQRT_2PI)
  return exponent + jnp.log(mantissa)


def bin_log_density(log_probs, target, bins, num_bins, quantization, mu):
  """log_probs [B, T, n] (normalised), target [B, T] -> log density of target [B, T]:
  log P(bin) - log width inside [-1, 1], -inf outside (the bins cover [-1, 1] only)."""
  index = bin_index(target, num_bins, quantization, mu)
  picked = jnp.take_along_axis(log_probs, index[..., None], axis=-1)[..., 0]
  return jnp.where(jnp.abs(target) <= 1.0, picked - bins.log_width[index], -jnp.inf)


def _smoothed_parts(log_probs, target, sigma, bins):
  """`smoothed_log_density` and what its derivatives need: (log density [B, T], z [B, T,
  n + 1], the bins' shares of the density [B, T, n])."""
  z = (bins.edges - target[..., None]) / sigma
  tail = log_ndtr_lower(jnp.abs(z))  # the smaller normal tail at each edge
  lower, upper = tail[..., :-1], tail[..., 1:]
  # A bin on one side of the target: Phi at its nearer edge minus Phi at its farther one,
  # both in the smaller tail; the guard keeps log(0) out where they round to one float.
  near, far = jnp.maximum(lower, upper), jnp.minimum(lower, upper)
  log_mass = near + jnp.log(-jnp.expm1(jnp.minimum(far - near, -1e-30)))
  # The bin holding the target (at most one per sample): two error functions that add.
  holds = (z[..., :-1] < 0) & (z[..., 1:] > 0)
  z_lower = jnp.sum(jnp.where(holds, z[..., :-1], 0.0), axis=-1)
  z_upper = jnp.sum(jnp.where(holds, z[..., 1:], 0.0), axis=-1)
  log_held = jnp.log(0.5 * (jax.lax.erf(z_upper * SQRT_HALF) - jax.lax.erf(z_lower * SQRT_HALF)))
  log_mass = jnp.where(holds, log_held[..., None], log_mass)
  terms = log_probs - bins.log_width + log_mass
  peak = jnp.max(terms, axis=-1, keepdims=True)
  scaled = jnp.exp(terms - peak)
  total = jnp.sum(scaled, axis=-1)
  return peak[..., 0] + jnp.log(total), z, scaled / total[..., None]


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def smoothed_log_density(log_probs, target, sigma, bins):
  """The piecewise-uniform density of log_probs [B, T, n] convolved with N(0, sigma^2),
  at target [B, T] -> [B, T]; sigma > 0 scalar, bins constant (no derivative).

  The normal tail is evaluated once per bin edge (n + 1 per sample, `log_ndtr_lower`),
  each bin's log mass from its two edges. Derivatives are written out, one exp per bin
  and edge: d/d log_probs_b is bin b's share of the density, and d/d target (d/d sigma)
  sums P_b / width_b (phi(z_upper) - phi(z_lower)) / density over the bins, times -1 / sigma
  (with each phi(z) times z) -- rather than differentiating through the tails.
  """
  return _smoothed_parts(log_probs, target, sigma, bins)[0]


@smoothed_log_density.defjvp
def _smoothed_log_density_jvp(bins, primals, tangents):
  log_probs, target, sigma = primals
  d_log_probs, d_target, d_sigma = tangents
  out, z, shares = _smoothed_parts(log_probs, target, sigma, bins)
  # shares_b / mass_b = P_b / (width_b density), so no bin's mass appears alone.
  level = log_probs - bins.log_width - out[..., None]
  log_phi = -0.5 * jnp.square(z) - priors.LOG_SQRT_2PI
  at_upper = jnp.exp(level + log_phi[..., 1:])
  at_lower = jnp.exp(level + log_phi[..., :-1])
  by_target = -jnp.sum(at_upper - at_lower, axis=-1) / sigma
  by_sigma = -jnp.sum(at_upper * z[..., 1:] - at_lower * z[..., :-1], axis=-1) / sigma
  return out, jnp.sum(shares * d_log_probs, axis=-1) + by_target * d_target + by_sigma * d_sigma


# The network ---------------------------------------------------------------------------


class ARSettings(NamedTuple):
  """The typed fields of `config.model` for the autoregressive prior."""
  n_layers: int
  dilation_cycle: int
  width: int
  kernel_size: int
  num_bins: int
  quantization: str
  mu: float
  residual_stream: str
  split_gate: bool


def settings_from_config(model_config):
  settings = ARSettings(
      n_layers=int(model_config.n_layers), dilation_cycle=int(model_config.dilation_cycle),
      width=int(model_config.width), kernel_size=int(model_config.kernel_size),
      num_bins=int(model_config.num_bins), quantization=str(model_config.quantization),
      mu=float(model_config.mu), residual_stream=str(model_config.residual_stream),
      split_gate=bool(model_config.split_gate))
  check_quantization(settings.num_bins, settings.quantization, settings.mu)
  wavenet.check_residual_stream(settings.residual_stream, "config.model.residual_stream")
  for name in ("n_layers", "dilation_cycle", "width", "kernel_size"):
    if getattr(settings, name) < 1:
      raise ValueError(f"config.model.{name} must be >= 1, got {getattr(settings, name)}.")
  return settings


def network(settings):
  """The causal WaveNet, [B, T, 1] -> logits [B, T, num_bins]; its params live under
  'wavenet' in the prior's params."""
  return wavenet.WaveNet(
      out_channels=settings.num_bins, width=settings.width, n_layers=settings.n_layers,
      kernel_size=settings.kernel_size, dilation_cycle=settings.dilation_cycle, causal=True,
      residual_stream=settings.residual_stream, split_gate=settings.split_gate)


def receptive_field(settings):
  """Number of past samples x_{t-R} ... x_{t-1} that the logits at t depend on."""
  return wavenet.receptive_field(settings.n_layers, settings.dilation_cycle,
                                 settings.kernel_size)


def shift_right(x):
  """x [B, T] -> [B, T] with x_{t-1} at t and 0 at t = 0."""
  if x.ndim != 2:
    raise ValueError(f"The WaveNet prior takes x [B, T], got shape {x.shape}.")
  return jnp.pad(x[:, :-1], ((0, 0), (1, 0)))


# The cached sampler's step -------------------------------------------------------------


class Cache(NamedTuple):
  """step: scalar int32, the index of the sample being drawn; buffers: per layer with a
  span, its last dilation * (kernel_size - 1) inputs [B, span, width] as a ring buffer
  (time t' at slot t' mod span); layers with span 0 hold an empty [B, 0, width]."""
  step: jax.Array
  buffers: Tuple[jax.Array, ...]


def layer_spans(settings):
  return tuple(d * (settings.kernel_size - 1)
               for d in wavenet.dilations(settings.n_layers, settings.dilation_cycle))


def init_cache(settings, batch):
  """The cache before the first sample: zeros, as the causal convolutions' padding."""
  return Cache(step=jnp.zeros((), jnp.int32),
               buffers=tuple(jnp.zeros((batch, span, settings.width), jnp.float32)
                             for span in layer_spans(settings)))


def _dense(h, conv):
  """A 1x1 flax Conv {kernel [1, in, out], bias [out]} on h [B, in] -> [B, out]."""
  return h @ conv["kernel"][0] + conv["bias"]


def make_step(settings):
  """Returns the pure step(params, cache, x_prev [B]) -> (logits [B, num_bins], cache).

  x_prev is the previous sample (0 before the first one). Each layer reads its
  kernel_size - 1 past inputs from its ring buffer, so one step costs O(n_layers).
  """
  spans = layer_spans(settings)
  dilation_list = wavenet.dilations(settings.n_layers, settings.dilation_cycle)
  k = settings.kernel_size

  def step(params, cache, x_prev):
    net = params["wavenet"]
    h = _dense(x_prev[:, None], net["input"])  # [B, W]
    skip_sum = jnp.zeros_like(h)
    buffers = []
    for i, (dilation, span) in enumerate(zip(dilation_list, spans)):
      layer = net[f"layer_{i}"]
      kernel = layer["dilated"]["kernel"]  # [k, W, 2W]; tap j reads time t - span + j * dilation
      z = h @ kernel[k - 1] + layer["dilated"]["bias"]
      buffer = cache.buffers[i]
      for j in range(k - 1):
        slot = (cache.step + j * dilation) % span
        past = jax.lax.dynamic_index_in_dim(buffer, slot, axis=1, keepdims=False)
        z = z + past @ kernel[j]
      if span:
        buffer = jax.lax.dynamic_update_index_in_dim(buffer, h, cache.step % span, axis=1)
      buffers.append(buffer)
      z = wavenet.gate(*jnp.split(z, 2, axis=-1))
      skip_sum = skip_sum + _dense(z, layer["skip"])
      h = (h + _dense(z, layer["residual"])) * np.float32(np.sqrt(0.5))
    out = jax.nn.relu(_dense(jax.nn.relu(skip_sum), net["head_hidden"]))
    return _dense(out, net["head_out"]), Cache(cache.step + 1, tuple(buffers))

  return step


# The prior -----------------------------------------------------------------------------


class ARFunctions(NamedTuple):
  """Every pure function of one source's autoregressive prior (see the module doc)."""
  init: Callable  # (key, x [B, T]) -> params
  logits: Callable  # (params, x [B, T]) -> [B, T, num_bins], of x_t given x_{<t}
  history_log_prob: Callable  # (params, history [B, T], target [B, T]) -> [B, T]
  log_prob: Callable  # (params, x [B, T]) -> [B, T]
  level_log_prob: Callable  # (params, x [B, T], sigma) -> [B, T]
  step: Callable  # (params, cache, x_prev [B]) -> (logits [B, n], cache)
  cached_sample_bins: Callable  # (params, key, batch, length) -> int32 [B, T]
  naive_sample_bins: Callable  # (params, key, batch, length, num_steps=None) -> int32 [B, T]
  sample: Callable  # (params, key, batch, length) -> bin centres [B, T]
  bins: Bins
  settings: ARSettings


def build(model_config):
  """All the pure functions of the prior described by `config.model` (family 'wavenet')."""
  settings = settings_from_config(model_config)
  module = network(settings)
  bins = make_bins(settings.num_bins, settings.quantization, settings.mu)
  quant = (settings.num_bins, settings.quantization, settings.mu)
  step = make_step(settings)

  def init(key, x):
    return {"wavenet": module.init(key, shift_right(x)[..., None])["params"]}

  def logits(params, x):
    return module.apply({"params": params["wavenet"]}, shift_right(x)[..., None])

  def history_log_prob(params, history, target):
    """log density of target_t given history_{<t}: [B, T]."""
    log_probs = jax.nn.log_softmax(logits(params, history), axis=-1)
    return bin_log_density(log_probs, target, bins, *quant)

  def log_prob(params, x):
    return history_log_prob(params, x, x)

  def level_log_prob(params, x, sigma):
    """sigma: a scalar >= 0; a concrete negative one raises, a traced one acts as 0."""
    try:
      concrete = float(sigma)
    except jax.errors.ConcretizationTypeError:
      concrete = None
    if concrete is not None:
      if concrete < 0:
        raise ValueError(f"level_log_prob: sigma must be >= 0, got {sigma}.")
      if concrete == 0:
        return log_prob(params, x)
    log_probs = jax.nn.log_softmax(logits(params, x), axis=-1)
    positive = sigma > 0
    smoothed = smoothed_log_density(log_probs, x, jnp.where(positive, sigma, 1.0), bins)
    return jnp.where(positive, smoothed, bin_log_density(log_probs, x, bins, *quant))

  def draw(step_key, t, step_logits):
    return jax.random.categorical(jax.random.fold_in(step_key, t), step_logits).astype(jnp.int32)

  def cached_sample_bins(params, key, batch, length):
    def body(carry, t):
      cache, x_prev = carry
      step_logits, cache = step(params, cache, x_prev)
      index = draw(key, t, step_logits)
      return (cache, bins.centre[index]), index

    carry = (init_cache(settings, batch), jnp.zeros((batch,), jnp.float32))
    _, index = jax.lax.scan(body, carry, jnp.arange(length))
    return index.T

  def naive_sample_bins(params, key, batch, length, num_steps=None):
    """num_steps: draw only the first num_steps samples (the rest stay bin 0); every
    step runs the network over the whole length, so its cost does not depend on t."""
    def body(t, carry):
      x, index = carry
      step_logits = jax.lax.dynamic_index_in_dim(logits(params, x), t, axis=1, keepdims=False)
      new = draw(key, t, step_logits)
      return (x.at[:, t].set(bins.centre[new]), index.at[:, t].set(new))

    carry = (jnp.zeros((batch, length), jnp.float32), jnp.zeros((batch, length), jnp.int32))
    return jax.lax.fori_loop(0, length if num_steps is None else num_steps, body, carry)[1]

  def sample(params, key, batch, length):
    return bins.centre[cached_sample_bins(params, key, batch, length)]

  return ARFunctions(init, logits, history_log_prob, log_prob, level_log_prob, step,
                     cached_sample_bins, naive_sample_bins, sample, bins, settings)


def build_prior(model_config):
  """The `priors.Prior` of one source (latent_log_prob: None, there is no latent).

  Training (noisy_log_prob) scores the clean sample x_t given the noisy history (PnF's
  noise fine-tuning; the history is x itself at sigma 0), its targets clipped into
  [-1, 1]: the density is 0 outside, and one stray sample must not make the step's loss
  infinite (the step would be skipped).
  """
  fns = build(model_config)
  return priors.Prior(
      init=fns.init, log_prob=fns.log_prob, sample=fns.sample,
      level_log_prob=fns.level_log_prob, latent_log_prob=None,
      noisy_log_prob=lambda params, clean, noisy: fns.history_log_prob(
          params, noisy, jnp.clip(clean, -1.0, 1.0)))
