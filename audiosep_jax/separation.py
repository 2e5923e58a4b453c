"""Annealed Langevin separation (BASIS, Jayaram & Thickstun 2020) and `--mode=separate`.

Levels sigma_1 > ... > sigma_L, steps_per_level steps at each, all sources and mixes
at once. One step at level i, for every source k:

  x_k <- x_k + eta_i * (score_k(x_k; sigma_i) + a_k / gamma_i^2 * (m - sum_j a_j x_j))
             + sqrt(2 eta_i) * eps,
  eta_i = delta * sigma_i^2 / sigma_L^2,   gamma_i = gamma_scale * sigma_i.

The second term is the gradient of the Gaussian mixing likelihood log N(m; sum_j a_j x_j,
gamma_i^2 I). The separator needs only `score_fn(level, x[B, K, T]) -> [B, K, T]`
(`make_score_fn` builds it from a family's stacked [L, K, ...] params with
`priors.stacked_level_score`; any JAX function will do). An outer `lax.scan` runs over
the levels and an inner one over the steps, so a separation is one compiled call
(`separate`, `get_separation_fn`). Keys: `init_key, run_key = split(key)`; step s of
level i uses fold_in(fold_in(run_key, i), s).
`loop_separation` drives the same steps from Python, one jitted step per call, with the
same result: --mode=separate uses it when config.separation.driver is 'loop'. The scan is
the default; since the WaveNet's convolutions became matmuls, the two drivers run equally
fast on a CPU (benchmarks/README.md).

Initialisation (config.separation.init): 'noise' draws x_k ~ N(0, (init_scale sigma_1)^2);
'mix' sets every x_k = m / sum_j a_j, which satisfies the mixing constraint exactly.
"""
import functools
import json
import os
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from audiosep_jax import distributed
from audiosep_jax import metrics
from audiosep_jax import priors
from audiosep_jax.data import pipeline
from audiosep_jax.data import toy

INITS = ("noise", "mix")
DRIVERS = ("scan", "loop")


class Settings(NamedTuple):
  """The typed fields of config.separation that the sampler reads."""
  steps_per_level: int
  delta: float
  gamma_scale: float
  init: str
  init_scale: float
  driver: str
  prior_loop: str


def settings_from_config(separation_config):
  """config.separation -> Settings, with a clear error for bad values."""
  settings = Settings(
      steps_per_level=int(separation_config.steps_per_level),
      delta=float(separation_config.delta),
      gamma_scale=float(separation_config.gamma_scale),
      init=str(separation_config.init),
      init_scale=float(separation_config.init_scale),
      driver=str(separation_config.driver),
      prior_loop=str(separation_config.prior_loop))
  if settings.steps_per_level < 1:
    raise ValueError(f"config.separation.steps_per_level must be >= 1, got "
                     f"{settings.steps_per_level}.")
  for name in ("delta", "gamma_scale"):
    if not getattr(settings, name) > 0:
      raise ValueError(f"config.separation.{name} must be positive, got "
                       f"{getattr(settings, name)}.")
  if settings.init not in INITS:
    raise ValueError(f"Unknown config.separation.init {settings.init!r}; choose one of "
                     f"{', '.join(INITS)}.")
  if settings.driver not in DRIVERS:
    raise ValueError(f"Unknown config.separation.driver {settings.driver!r}; choose one of "
                     f"{', '.join(DRIVERS)}.")
  if settings.prior_loop not in priors.PRIOR_LOOPS:
    raise ValueError(f"Unknown config.separation.prior_loop {settings.prior_loop!r}; choose "
                     f"one of {', '.join(priors.PRIOR_LOOPS)}.")
  if settings.init_scale < 0:
    raise ValueError(f"config.separation.init_scale must be >= 0, got {settings.init_scale}.")
  return settings


def check_sigmas(sigmas):
  """Noise levels as a float32 array [L]; they must be positive and strictly descending."""
  array = np.asarray(sigmas, np.float64)
  if array.ndim != 1 or array.size == 0:
    raise ValueError(f"sigmas must be a non-empty 1-D sequence, got {sigmas!r}.")
  if not np.all(array > 0):
    raise ValueError(f"sigmas must be positive, got {array.tolist()}.")
  if np.any(np.diff(array) >= 0):
    raise ValueError(f"sigmas must be strictly descending (sigma_1 > ... > sigma_L), got "
                     f"{array.tolist()}.")
  return jnp.asarray(array, jnp.float32)


def step_sizes(sigmas, delta):
  """eta_i = delta * sigma_i^2 / sigma_L^2: sigmas [L] -> [L]."""
  return delta * jnp.square(sigmas) / jnp.square(sigmas[-1])


def mixing_residual(x, mix, weights):
  """m - sum_k a_k x_k: x [B, K, T], mix [B, T], weights [K] -> [B, T]."""
  return mix - toy.mix(x, weights)


def mixing_gradient(x, mix, weights, gamma):
  """Gradient in x of log N(m; sum_k a_k x_k, gamma^2 I): [B, K, T]."""
  residual = mixing_residual(x, mix, weights)
  return weights[:, None] * residual[:, None, :] / jnp.square(gamma)


def langevin_step(key, x, drift, eta):
  """x + eta * drift + sqrt(2 eta) * eps, eps ~ N(0, I): x, drift [B, K, T]."""
  noise = jax.random.normal(key, x.shape, x.dtype)
  return x + eta * drift + jnp.sqrt(2.0 * eta) * noise


def init_sources(key, mix, weights, first_sigma, settings):
  """The sampler's start [B, K, T] (see the module docstring)."""
  shape = (mix.shape[0], weights.shape[0], mix.shape[1])
  if settings.init == "noise":
    return settings.init_scale * first_sigma * jax.random.normal(key, shape, mix.dtype)
  return jnp.broadcast_to((mix / jnp.sum(weights))[:, None, :], shape)


def _rms(x, axes):
  return jnp.sqrt(jnp.mean(jnp.square(x), axis=axes))


class Sampler(NamedTuple):
  """The pieces of one separation, shared by the scan and the Python-loop drivers.

  start(key, mix) -> (x [B, K, T], run_key)
  step(run_key, x, mix, level, step) -> (x, score_rms [B])   one Langevin step
  level_trace(x, mix, level, score_rms [B], references) -> {name: value at this level}
  """
  start: Callable
  step: Callable
  level_trace: Callable
  num_levels: int
  steps_per_level: int


def get_sampler(score_fn, sigmas, weights, settings):
  """The Sampler of the update in the module docstring; every piece is pure and jit-able.

  score_fn: (level int32 scalar, x [B, K, T]) -> [B, K, T]; weights: [K].
  """
  sigmas = check_sigmas(sigmas)
  weights = jnp.asarray(weights, jnp.float32)
  etas = step_sizes(sigmas, settings.delta)
  gammas = settings.gamma_scale * sigmas

  def start(key, mix):
    if mix.ndim != 2:
      raise ValueError(f"mix must be [B, T], got shape {mix.shape}.")
    init_key, run_key = jax.random.split(key)
    return init_sources(init_key, mix, weights, sigmas[0], settings), run_key

  def step(run_key, x, mix, level, step_index):
    score = score_fn(level, x)
    if score.shape != x.shape:
      raise ValueError(f"score_fn returned shape {score.shape} for x of shape {x.shape}.")
    drift = score + mixing_gradient(x, mix, weights, gammas[level])
    key = jax.random.fold_in(jax.random.fold_in(run_key, level), step_index)
    return langevin_step(key, x, drift, etas[level]), _rms(score, (1, 2))

  def level_trace(x, mix, level, score_rms, references):
    trace = {"sigma": sigmas[level],
             "residual_rms": _rms(mixing_residual(x, mix, weights), 1),
             "score_rms": score_rms}
    if references is not None:
      if references.shape != x.shape:
        raise ValueError(f"references {references.shape} must be [B, K, T] = {x.shape}.")
      trace["si_sdr"] = metrics.si_sdr(x, references)
    return trace

  return Sampler(start, step, level_trace, int(sigmas.shape[0]), settings.steps_per_level)


def get_separation_fn(score_fn, sigmas, weights, settings):
  """A pure, jit-able fn(key, mix[B, T], references=None) -> (sources [B, K, T], trace):
  an outer lax.scan over the levels, an inner one over the steps.

  score_fn: (level int32 scalar, x [B, K, T]) -> [B, K, T].
  trace (values at the end of each level, leading axis L):
    sigma [L]; residual_rms [L, B] (RMS of m - sum_k a_k x_k); score_rms [L, B] (RMS of
    the prior score, averaged over the level's steps); si_sdr [L, B, K] in dB, only when
    references [B, K, T] are given.
  """
  sampler = get_sampler(score_fn, sigmas, weights, settings)

  def separation_fn(key, mix, references=None):
    x, run_key = sampler.start(key, mix)

    def level_body(x, level):
      step_body = lambda x, step_index: sampler.step(run_key, x, mix, level, step_index)
      x, score_rms = jax.lax.scan(step_body, x, jnp.arange(sampler.steps_per_level))
      return x, sampler.level_trace(x, mix, level, jnp.mean(score_rms, axis=0), references)

    return jax.lax.scan(level_body, x, jnp.arange(sampler.num_levels))

  return separation_fn


def loop_separation(sampler, key, mix, references=None):
  """The same separation as `get_separation_fn`, driven by a Python loop over the steps.

  sampler: a Sampler whose start, step and level_trace the caller has jitted (one compile
  each; level and step are passed as int32 arrays). Gives the same sources and trace as
  the scan (same keys); for debugging and profiling single steps (on a CPU as fast as
  the scan, benchmarks/README.md).
  """
  x, run_key = sampler.start(key, mix)
  traces = []
  for level in range(sampler.num_levels):
    level_index = jnp.int32(level)
    score_rms = []
    for step_index in range(sampler.steps_per_level):
      x, rms = sampler.step(run_key, x, mix, level_index, jnp.int32(step_index))
      score_rms.append(rms)
    traces.append(sampler.level_trace(x, mix, level_index, jnp.mean(jnp.stack(score_rms), 0),
                                      references))
  return x, jax.tree.map(lambda *v: jnp.stack(v), *traces)


def _settings_and_weights(config):
  num_sources = len(config.data.source_names)
  return settings_from_config(config.separation), toy.mix_weights(num_sources, config.data)


def separate(key, mix, score_fn, sigmas, config):
  """Annealed Langevin separation: mix [B, T] -> sources [B, K, T].

  K = len(config.data.source_names); weights a_k from config.data; sampler settings from
  config.separation; sigmas [L] descending. Pure and jit-able (config, score_fn and
  sigmas static).
  """
  settings, weights = _settings_and_weights(config)
  sources, _ = get_separation_fn(score_fn, sigmas, weights, settings)(key, mix)
  return sources


def separate_with_trace(key, mix, score_fn, sigmas, config, references=None):
  """`separate`, also returning the per-level trace of `get_separation_fn`."""
  settings, weights = _settings_and_weights(config)
  return get_separation_fn(score_fn, sigmas, weights, settings)(key, mix, references)


def make_score_fn(prior, stacked_params, sigmas, prior_loop="vmap", prior_groups=1) -> Callable:
  """score_fn(level, x [B, K, T]) -> [B, K, T] from params fine-tuned at L levels.

  stacked_params: [L, K, ...] in the order of `sigmas`; the score at level i is the
  gradient in x of sum log p_k(x_k) under `prior.level_log_prob` at sigma_i, the K priors
  run as `priors.map_priors(loop=prior_loop, groups=prior_groups)` says, each prior's
  gradient inside the loop (`priors.stacked_level_score`).
  """
  sigmas = jnp.asarray(sigmas, jnp.float32)
  num_levels = jax.tree.leaves(stacked_params)[0].shape[0]
  if num_levels != sigmas.shape[0]:
    raise ValueError(f"stacked_params hold {num_levels} levels but {sigmas.shape[0]} sigmas "
                     "were given.")

  def score_fn(level, x):
    params = priors.index_level(stacked_params, level)
    _, score = priors.stacked_level_score(prior, params, x, sigmas[level], prior_loop,
                                          prior_groups)
    return score

  return score_fn


# Long inputs: overlapping chunks, crossfaded -------------------------------------------


def check_chunking(chunk_length, overlap):
  if chunk_length < 1:
    raise ValueError(f"config.separation.mix_length must be >= 1, got {chunk_length}.")
  if overlap < 0 or 2 * overlap > chunk_length:
    raise ValueError(f"config.separation.chunk_overlap={overlap} must be in [0, "
                     f"mix_length / 2 = {chunk_length // 2}].")


def split_chunks(signal, chunk_length, overlap):
  """signal [T] -> chunks [N, chunk_length] with hop chunk_length - overlap, zero-padded
  at the end so that the last chunk is full."""
  check_chunking(chunk_length, overlap)
  hop = chunk_length - overlap
  num = max(1, int(np.ceil((signal.shape[0] - overlap) / hop)))
  padded = np.zeros((num - 1) * hop + chunk_length, np.float32)
  padded[:signal.shape[0]] = signal
  return np.stack([padded[i * hop:i * hop + chunk_length] for i in range(num)])


def crossfade_window(chunk_length, overlap):
  """[chunk_length]: raised-cosine ramps over the first and last `overlap` samples, 1
  between. The falling ramp of one chunk and the rising ramp of the next sum to 1."""
  window = np.ones(chunk_length, np.float64)
  if overlap:
    rise = np.sin(0.5 * np.pi * (np.arange(overlap) + 0.5) / overlap) ** 2
    window[:overlap] = rise
    window[chunk_length - overlap:] = rise[::-1]
  return window


def overlap_add(chunks, overlap, length):
  """chunks [N, ..., C] -> [..., length]: windowed overlap-add, divided by the summed
  window (which is 1 wherever two chunks overlap; the divide fixes the outer ramps)."""
  num, chunk_length = chunks.shape[0], chunks.shape[-1]
  hop = chunk_length - overlap
  window = crossfade_window(chunk_length, overlap)
  total = (num - 1) * hop + chunk_length
  out = np.zeros(chunks.shape[1:-1] + (total,), np.float64)
  norm = np.zeros(total, np.float64)
  for i in range(num):
    out[..., i * hop:i * hop + chunk_length] += window * chunks[i]
    norm[i * hop:i * hop + chunk_length] += window
  return (out / norm)[..., :length].astype(np.float32)


# --mode=separate ------------------------------------------------------------------------


def level_sigmas(config):
  """The fine-tuned levels, descending: config.finetune.sigmas sorted."""
  return tuple(sorted((float(s) for s in config.finetune.sigmas), reverse=True))


def write_wav(path, audio, sample_rate, subtype="FLOAT"):
  """Writes audio [T] as a WAV of soundfile's `subtype` (float32 by default; 'PCM_16'
  for audio in [-1, 1]) atomically (temp name, then rename); process 0 only."""
  if not distributed.is_primary():
    return
  tmp = path + ".tmp"
  import soundfile  # pylint: disable=g-import-not-at-top
  soundfile.write(tmp, np.asarray(audio, np.float32), int(sample_rate), subtype=subtype,
                  format="WAV")
  os.replace(tmp, path)


def _finite_or_null(value):
  """value with every non-finite float (NaN, +-inf) replaced by None, for strict JSON."""
  if isinstance(value, dict):
    return {k: _finite_or_null(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite_or_null(v) for v in value]
  if isinstance(value, float) and not np.isfinite(value):
    return None
  return value


def write_json(path, value):
  """Writes value as strict JSON (non-finite floats as null) atomically (temp file, then
  rename), creating its folder; process 0 only."""
  if not distributed.is_primary():
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(_finite_or_null(value), f, indent=1, sort_keys=True, allow_nan=False)
  os.replace(tmp, path)


def _batched(separate_batch, key, mixes, batch_size, references=None):
  """Runs separate_batch over [N, T] mixes in batches of min(batch_size, N) (the last one
  zero-padded).

  Returns (estimates [N, K, T], trace with the mix axis concatenated: [L, N, ...]).
  """
  num = mixes.shape[0]
  batch_size = min(batch_size, num)
  estimates, traces = [], []
  for index, start in enumerate(range(0, num, batch_size)):
    stop = min(start + batch_size, num)
    pad = batch_size - (stop - start)
    mix = np.pad(mixes[start:stop], ((0, pad), (0, 0)))
    refs = None
    if references is not None:
      refs = np.pad(references[start:stop], ((0, pad), (0, 0), (0, 0)))
    sources, trace = separate_batch(jax.random.fold_in(key, index), mix, refs)
    estimates.append(np.asarray(sources)[:stop - start])
    traces.append(jax.tree.map(lambda v: np.asarray(v)[:, :stop - start]
                               if v.ndim > 1 else np.asarray(v), trace))
    logging.info("Separated mixes %d-%d of %d", start, stop - 1, num)
  trace = jax.tree.map(lambda *v: np.concatenate(v, axis=1) if v[0].ndim > 1 else v[0],
                       *traces)
  return np.concatenate(estimates), trace


def _per_source(values, names):
  return {n: float(v) for n, v in zip(names, values)}


def separate_test_mixes(config, separate_batch, key, out_dir):
  """Separates config.separation.num_mixes fixed-seed test mixes; writes WAVs and
  metrics.json under out_dir; returns the metrics dict."""
  sep, names = config.separation, tuple(config.data.source_names)
  test = pipeline.test_set(config)
  if test.shape[0] < sep.num_mixes or test.shape[2] < sep.mix_length:
    raise ValueError(
        f"config.separation asks for {sep.num_mixes} mixes of {sep.mix_length} samples, but "
        f"the test set holds {test.shape[0]} of {test.shape[2]} (config.data.test_size, "
        "config.data.test_length).")
  references = np.asarray(test[:sep.num_mixes, :, :sep.mix_length], np.float32)
  weights = toy.mix_weights(len(names), config.data)
  mixes = np.asarray(toy.mix(jnp.asarray(references), weights))
  start = time.time()
  estimates, trace = _batched(separate_batch, key, mixes, sep.batch_size, references)
  seconds = time.time() - start
  non_finite = int(np.sum(~np.all(np.isfinite(estimates), axis=-1)))
  if non_finite:
    logging.warning("%d of %d estimated sources hold NaN or inf: the sampler diverged "
                    "(config.separation.delta?); their metrics are null in metrics.json.",
                    non_finite, estimates.shape[0] * estimates.shape[1])
  result = jax.tree.map(np.asarray, metrics.separation_metrics(
      jnp.asarray(estimates), jnp.asarray(references), jnp.asarray(mixes)))
  rate = config.data.sample_rate
  for i in range(sep.num_mixes):
    mix_dir = os.path.join(out_dir, f"mix_{i}")
    os.makedirs(mix_dir, exist_ok=True)
    write_wav(os.path.join(mix_dir, "mix.wav"), mixes[i], rate)
    for k, name in enumerate(names):
      write_wav(os.path.join(mix_dir, f"true_{name}.wav"), references[i, k], rate)
      write_wav(os.path.join(mix_dir, f"estimate_{name}.wav"), estimates[i, k], rate)
  quantities = ("si_sdr", "si_sdri", "sdr", "mix_si_sdr")
  summary = {
      "family": config.model.family,
      "source_names": list(names),
      "sigmas": list(level_sigmas(config)),
      "steps_per_level": sep.steps_per_level,
      "delta": sep.delta,
      "gamma_scale": sep.gamma_scale,
      "init": sep.init,
      "init_scale": sep.init_scale,
      "driver": sep.driver,
      "mix_weights": [float(w) for w in weights],
      "num_mixes": sep.num_mixes,
      "mix_length": sep.mix_length,
      "sample_rate": rate,
      "seed": config.seed,
      "seconds": seconds,
      "audio_seconds_per_second": sep.num_mixes * sep.mix_length / rate / seconds,
      "non_finite_estimates": non_finite,
      "mean": {q: float(np.mean(result[q])) for q in quantities},
      "per_mix": [{q: _per_source(result[q][i], names) for q in quantities}
                  for i in range(sep.num_mixes)],
  }
  for q in quantities:
    summary[q] = _per_source(result[f"mean_{q}"], names)
  if sep.trace:
    summary["trace"] = {
        "residual_rms": np.mean(trace["residual_rms"], axis=1).tolist(),
        "score_rms": np.mean(trace["score_rms"], axis=1).tolist(),
        "si_sdr": {n: np.mean(trace["si_sdr"][:, :, k], axis=1).tolist()
                   for k, n in enumerate(names)},
    }
  write_json(os.path.join(out_dir, "metrics.json"), summary)
  logging.info("Separation (%s): SI-SDR %s | SI-SDRi %s | mix baseline %s", config.model.family,
               summary["si_sdr"], summary["si_sdri"], summary["mix_si_sdr"])
  return summary


def check_run_sizes(separation_config):
  """Clear errors for config.separation's mix count, length and batch size below 1."""
  for name in ("num_mixes", "mix_length", "batch_size"):
    if separation_config[name] < 1:
      raise ValueError(f"config.separation.{name} must be >= 1, got {separation_config[name]}.")


def check_file_input(separation_config, input_path):
  """Clear errors for a missing --input file or a chunking it cannot be cut into."""
  check_chunking(separation_config.mix_length, separation_config.chunk_overlap)
  if not os.path.isfile(input_path):
    raise FileNotFoundError(f"--input: no file at {input_path!r}.")


def separate_file(config, separate_batch, key, input_path, out_dir):
  """Separates a WAV file (any rate, mono or stereo; mixed down and resampled to
  config.data.sample_rate) in crossfaded chunks; writes the mono mix and the K estimates
  at the file's own rate under out_dir/input_<stem>/. Returns that folder."""
  import soundfile  # pylint: disable=g-import-not-at-top
  import soxr  # pylint: disable=g-import-not-at-top
  sep, names = config.separation, tuple(config.data.source_names)
  check_file_input(sep, input_path)
  try:
    audio, file_rate = soundfile.read(input_path, dtype="float32", always_2d=True)
  except RuntimeError as e:
    raise ValueError(f"--input: cannot read {input_path!r} as audio: {e}") from e
  if audio.shape[0] == 0:
    raise ValueError(f"--input: {input_path!r} has no samples.")
  mono = np.mean(audio, axis=1)
  model_rate = config.data.sample_rate
  resampled = soxr.resample(mono, file_rate, model_rate).astype(np.float32)
  chunks = split_chunks(resampled, sep.mix_length, sep.chunk_overlap)
  chunk_estimates, _ = _batched(separate_batch, key, chunks, sep.batch_size)
  estimates = overlap_add(chunk_estimates, sep.chunk_overlap, resampled.shape[0])  # [K, T]
  stem = os.path.splitext(os.path.basename(input_path))[0]
  file_dir = os.path.join(out_dir, f"input_{stem}")
  os.makedirs(file_dir, exist_ok=True)
  write_wav(os.path.join(file_dir, "mix.wav"), mono, file_rate)
  for k, name in enumerate(names):
    back = soxr.resample(estimates[k], model_rate, file_rate)
    back = np.pad(back, (0, max(0, mono.shape[0] - back.shape[0])))[:mono.shape[0]]
    write_wav(os.path.join(file_dir, f"estimate_{name}.wav"), back, file_rate)
  logging.info("Separated %s (%d chunks) into %s", input_path, chunks.shape[0], file_dir)
  return file_dir


def batch_separator(config, prior, stacked_params, sigmas, mesh=None):
  """fn(key, mix [B, T], references or None) -> (sources, trace) for the stacked
  [L, K, ...] params, compiled as config.separation.driver says; the params are passed to
  the compiled functions as arguments, not baked in as constants. The scan driver splits
  the mixes over the `data` axis of the ('data', 'prior') `mesh` and the K priors, with
  their sources, over its `prior` axis (default: `train.mesh_from_config`, config.training.num_devices and
  prior_devices); XLA partitions the score over K, and the mixing constraint's sum
  over the sources is the one cross-device reduction of a step. Each device runs its
  priors as config.separation.prior_loop says (the loop driver: one device)."""
  settings, weights = _settings_and_weights(config)
  if mesh is None:
    from audiosep_jax import train  # pylint: disable=g-import-not-at-top
    mesh = train.mesh_from_config(config)

  def make_sampler(params):
    return get_sampler(make_score_fn(prior, params, sigmas, settings.prior_loop), sigmas,
                       weights, settings)

  if settings.driver == "scan":
    def separation(params, key, mix, references=None):
      score_fn = make_score_fn(prior, params, sigmas, settings.prior_loop,
                               mesh.shape[pipeline.PRIOR_AXIS])
      return get_separation_fn(score_fn, sigmas, weights, settings)(key, mix, references)

    trace_axes = {"sigma": None, "residual_rms": 1, "score_rms": 1}
    with_references = distributed.map_rows(
        separation, mesh, num_batched=2, out_axes=(0, dict(trace_axes, si_sdr=1)))
    without_references = distributed.map_rows(separation, mesh, num_batched=1,
                                              out_axes=(0, trace_axes))

    params_on_mesh = jax.device_put(
        stacked_params, NamedSharding(mesh, PartitionSpec(None, pipeline.PRIOR_AXIS)))

    def separate_batch(key, mix, references):
      if references is None:
        return without_references(params_on_mesh, key, mix)
      return with_references(params_on_mesh, key, mix, references)

    return separate_batch
  sampler = make_sampler(stacked_params)
  step = jax.jit(lambda params, *args: make_sampler(params).step(*args))
  sampler = sampler._replace(
      start=jax.jit(sampler.start), step=functools.partial(step, stacked_params),
      level_trace=jax.jit(sampler.level_trace))
  return functools.partial(loop_separation, sampler)


def run(config, workdir, input_path=None):
  """--mode=separate for config.model.family: the test mixes, and `input_path` if given.

  Loads the params fine-tuned at config.finetune.sigmas (descending) from
  <workdir>/checkpoints/<family>/; writes <workdir>/separations/<family>/. Returns the
  test-mix metrics dict (the content of metrics.json).
  """
  from audiosep_jax import train  # pylint: disable=g-import-not-at-top
  check_run_sizes(config.separation)
  if input_path is not None:
    check_file_input(config.separation, input_path)
  family = config.model.family
  sigmas = level_sigmas(config)
  prior = priors.build(config.model)
  params = train.load_level_params(config, workdir, sigmas)
  separate_batch = batch_separator(config, prior, params, sigmas)
  out_dir = os.path.join(workdir, "separations", family)
  os.makedirs(out_dir, exist_ok=True)
  summary = separate_test_mixes(
      config, separate_batch,
      pipeline.seed_key(config.seed, pipeline.KEY_TAG_SEPARATION_MIXES), out_dir)
  if input_path is not None:
    separate_file(config, separate_batch,
                  pipeline.seed_key(config.seed, pipeline.KEY_TAG_SEPARATION_FILE),
                  input_path, out_dir)
  return summary
