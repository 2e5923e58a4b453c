"""Prior diagnostics: are the learned priors discriminative, and are they smooth?

All numbers are nats per sample, per-example means over time, on the fixed-seed test set
(`pipeline.test_set`, the first diagnostics.num_examples examples, cropped to
diagnostics.length). Level l is the prior fine-tuned at sigma_l (level 0: noiseless), and
its density is `prior.level_log_prob(params_l, x, sigma_l)` everywhere (flows: the exact
log p; the WaveNet: its categorical smoothed by N(0, sigma_l^2)).

  cross_log_prob[l][k][j]   mean log p_k(s_j), clean test data (the poster's grid)
  cross_log_prob_level_noise[l][k][j]
                            the same on s_j + sigma_l * eps: the inputs a separator
                            at level l feeds the prior
  cross_latent_log_prob_paper_clipped[l][k][j]
                            flows only: the 2020 paper's quantity, log N(f(s_j); 0, I)
                            without the log-det, clipped at paper_clip per sample, then
                            averaged
  auroc[l][k]               prior k: its own source's examples (positives) against the
                            other sources' examples, scored by per-example mean log p_k
  noise_sensitivity         table[l][i][k] = mean log p_k(s_k + test_sigmas[i] * eps)
  constant_probe            log_prob[l][k][c] of the constant signal values[c]
  noise_probe               log_prob[l][k][m] of pure N(0, stds[m]^2) noise
  score_norm                E_t (d/dx_t sum_t' log p(x)_t')^2 at x = s_k + tau_l * eps:
                            the squared norm of the example's score divided by its length
                            (per sample); tau_l = sigma_l, and smoothness_sigma at level 0.
                            NaN (null) for an example whose log p is -inf there (log 0
                            has no gradient), so its mean is null, as log_p_drop is
  log_p_drop                mean log p_k(s_k) - mean log p_k(s_k + smoothness_sigma * eps)

The noise eps of example n is drawn from fold_in(key, n), the same for every level, test
sigma and batch size, so the numbers are a function of (config, params) only.
`run(config, workdir)` writes <workdir>/diagnostics/<family>.json and prior samples under
<workdir>/diagnostics/samples/<family>/.
"""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from audiosep_jax import distributed
from audiosep_jax import priors
from audiosep_jax import separation
from audiosep_jax import train
from audiosep_jax.data import pipeline

# fold_in streams of the diagnostics key (`pipeline.KEY_TAG_DIAGNOSTICS` of config.seed).
NOISE_EXAMPLES, NOISE_PROBE, SAMPLES = 0, 1, 2

DENSITY = ("level_log_prob(params_l, x, sigma_l): the level-l prior's density at its own "
           "noise level, nats per sample")


# Pure functions --------------------------------------------------------------------------


def example_noise(key, indices, shape):
  """Standard normal noise [B, *shape]; row b depends only on (key, indices[b])."""
  return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), shape))(indices)


def example_cross_log_prob(prior, params, x, sigma):
  """Every prior on every source: params [K, ...], x [B, J, T] -> [B, K, J], mean over T."""
  b, j, t = x.shape
  flat = x.reshape(b * j, t)
  per_prior = jax.lax.map(
      lambda p: jnp.mean(prior.level_log_prob(p, flat, sigma), axis=-1), params)  # [K, B*J]
  return per_prior.reshape(-1, b, j).transpose(1, 0, 2)


def example_cross_latent_log_prob(prior, params, x, clip):
  """Flows: the paper's latent-only term, clipped at `clip` per sample: [B, K, J]."""
  b, j, t = x.shape
  flat = x.reshape(b * j, t)
  per_prior = jax.lax.map(
      lambda p: jnp.mean(jnp.maximum(prior.latent_log_prob(p, flat), clip), axis=-1), params)
  return per_prior.reshape(-1, b, j).transpose(1, 0, 2)


def noise_sensitivity(prior, params, x, eps, test_sigmas, sigma):
  """In-class log p on noised inputs: x, eps [B, K, T], test_sigmas [S] -> [B, S, K]."""
  per_sigma = jax.lax.map(
      lambda s: jnp.mean(priors.stacked_level_log_prob(prior, params, x + s * eps, sigma),
                         axis=-1), jnp.asarray(test_sigmas, x.dtype))  # [S, B, K]
  return per_sigma.transpose(1, 0, 2)


def probe_log_prob(prior, params, x, sigma):
  """Every prior on the same inputs: x [P, T] -> [K, P], mean over T."""
  return jax.lax.map(lambda p: jnp.mean(prior.level_log_prob(p, x, sigma), axis=-1), params)


def score_sq_norm(prior, params, x, sigma):
  """Mean over t of the squared score of each example: x [B, K, T] -> [B, K].

  The score is grad_x of the example's log density sum_t log p(x)_t (examples are
  independent, so one gradient of each prior's total gives every example's score;
  `priors.stacked_level_score`). NaN where that log density is not finite (the noiseless
  WaveNet outside [-1, 1]: log 0, whose gradient means nothing).
  """
  log_prob, score = priors.stacked_level_score(prior, params, x, sigma)
  norm = jnp.mean(jnp.square(score), axis=-1)
  return jnp.where(jnp.all(jnp.isfinite(log_prob), axis=-1), norm, jnp.nan)


def auroc(positive, negative):
  """Exact area under the ROC curve: P(pos > neg) + P(pos == neg) / 2 (Mann-Whitney U).

  Non-finite scores (NaN, -inf) rank lowest, tied with each other.
  """
  pos = np.asarray(positive, np.float64).ravel()
  neg = np.asarray(negative, np.float64).ravel()
  if not pos.size or not neg.size:
    raise ValueError(f"AUROC needs positives and negatives, got {pos.size} and {neg.size}.")
  scores = np.concatenate([pos, neg])
  scores = np.where(np.isfinite(scores) | (scores > 0), scores, -np.inf)
  _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
  average_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based, ties share the mean rank
  ranks = average_rank[inverse]
  u_stat = np.sum(ranks[:pos.size]) - pos.size * (pos.size + 1) / 2.0
  return float(u_stat / (pos.size * neg.size))


def prior_aurocs(cross):
  """cross [N, K, K] per-example mean log p_k(s_j) -> AUROC of each prior [K]."""
  num = cross.shape[1]
  return np.array([
      auroc(cross[:, k, k], np.delete(cross[:, k, :], k, axis=1)) for k in range(num)])


def map_batches(fn, num, batch_size, *arrays):
  """fn over rows [start, start + batch_size) of each array (the last batch padded by
  repeating row 0, so one compile serves all), outputs concatenated on axis 0 to [num, ...]."""
  outputs = []
  for start in range(0, num, batch_size):
    stop = min(start + batch_size, num)
    chunk = [a[start:stop] for a in arrays]
    if stop - start < batch_size:
      chunk = [np.concatenate([c, np.repeat(a[:1], batch_size - (stop - start), 0)])
               for c, a in zip(chunk, arrays)]
    outputs.append(jax.device_get(fn(*chunk)))
  return jax.tree.map(lambda *parts: np.concatenate(parts)[:num], *outputs)


# The diagnostics of one family ----------------------------------------------------------


def check_fields(diag_config):
  """Clear errors for diagnostics fields that cannot work."""
  for field in ("num_examples", "batch_size", "constant_values", "noise_probe_examples",
                "num_samples"):
    if diag_config[field] < 1:
      raise ValueError(f"config.diagnostics.{field} must be at least 1, got "
                       f"{diag_config[field]}.")
  for field in ("test_sigmas", "noise_stds"):
    if any(s < 0 for s in diag_config[field]):
      raise ValueError(f"config.diagnostics.{field} must be non-negative, got "
                       f"{tuple(diag_config[field])}.")
  if diag_config.smoothness_sigma <= 0:
    raise ValueError("config.diagnostics.smoothness_sigma must be positive, got "
                     f"{diag_config.smoothness_sigma}.")


def test_examples(config):
  """The diagnostics' examples [N, K, T] (numpy float32)."""
  diag = config.diagnostics
  data = pipeline.test_set(config)
  if diag.num_examples > data.shape[0]:
    raise ValueError(f"config.diagnostics.num_examples={diag.num_examples} exceeds the "
                     f"{data.shape[0]} examples of the test set (config.data.test_size).")
  if diag.length > data.shape[2]:
    raise ValueError(f"config.diagnostics.length={diag.length} exceeds the test length "
                     f"{data.shape[2]} (config.data.test_length).")
  return np.asarray(
      data[:config.diagnostics.num_examples, :, :config.diagnostics.length], np.float32)


def _batch_stats(prior, test_sigmas, paper_clip, noise_key, params, sigma, input_sigma, x,
                 indices):
  """The per-example numbers of one batch x [B, K, T] at one level (module docstring)."""
  eps = example_noise(noise_key, indices, x.shape[1:])
  out = {
      "cross": example_cross_log_prob(prior, params, x, sigma),
      "cross_noisy": example_cross_log_prob(prior, params, x + sigma * eps, sigma),
      "sensitivity": noise_sensitivity(prior, params, x, eps, test_sigmas, sigma),
      "score": score_sq_norm(prior, params, x + input_sigma * eps, sigma),
  }
  if prior.latent_log_prob is not None:
    out["latent"] = example_cross_latent_log_prob(prior, params, x, paper_clip)
  return out


def probe_inputs(diag_config, key, length):
  """Constant signals [C, T] and pure-noise signals [M * examples_per_std, T]."""
  constants = np.linspace(-1.0, 1.0, diag_config.constant_values, dtype=np.float32)
  stds = np.asarray(diag_config.noise_stds, np.float32)
  per_std = diag_config.noise_probe_examples
  eps = np.asarray(example_noise(jax.random.fold_in(key, NOISE_PROBE),
                                 jnp.arange(stds.size * per_std), (length,)))
  return (np.repeat(constants[:, None], length, axis=1),
          np.repeat(stds, per_std)[:, None] * eps)


def _clean(value):
  """numpy/jax numbers and arrays -> JSON lists of floats; non-finite -> None."""
  array = np.asarray(value, np.float64)
  flat = [float(v) if np.isfinite(v) else None for v in array.ravel()]
  if array.ndim == 0:
    return flat[0]
  return np.array(flat, dtype=object).reshape(array.shape).tolist()


def diagnose(config, prior, level_params, levels, data, mesh=None):
  """All diagnostics of one family: level_params [L, K, ...], levels [L] sigmas,
  data [N, K, T] -> (results dict for JSON, samples [L, K, num_samples, sample_length]).

  Each batch of examples is split over the devices of `mesh` (default: the training mesh,
  config.training.num_devices); every process gets the same numbers.
  """
  diag = config.diagnostics
  key = pipeline.seed_key(config.seed, pipeline.KEY_TAG_DIAGNOSTICS)
  names = list(config.data.source_names)
  if data.shape[1] != len(names):
    raise ValueError(f"Test data has {data.shape[1]} sources, config.data.source_names "
                     f"{len(names)}.")
  check_fields(diag)
  test_sigmas = tuple(float(s) for s in diag.test_sigmas) + (float(diag.smoothness_sigma),)
  mesh = train.make_mesh(config.training.num_devices) if mesh is None else mesh
  batch_fn = distributed.map_rows(functools.partial(
      _batch_stats, prior, test_sigmas, diag.paper_clip, jax.random.fold_in(key, NOISE_EXAMPLES)),
                                  mesh, num_batched=2)
  probe_fn = distributed.map_rows(
      lambda p, sigma, x: probe_log_prob(prior, p, x, sigma).T, mesh)  # [P, K]
  sample_fn = jax.jit(lambda p, k: priors.stacked_sample(
      prior, p, k, diag.num_samples, diag.sample_length))
  constant_inputs, noise_inputs = probe_inputs(diag, key, data.shape[2])
  indices = np.arange(data.shape[0])
  per_level, samples = [], []
  for index, sigma in enumerate(levels):
    logging.info("Diagnostics: %s at %s", config.model.family, train.level_name(sigma))
    params = priors.index_level(level_params, index)
    input_sigma = float(sigma) if sigma > 0 else float(diag.smoothness_sigma)
    sigma32, input32 = np.float32(sigma), np.float32(input_sigma)
    stats = map_batches(lambda x, i: batch_fn(params, sigma32, input32, x, i),
                     data.shape[0], diag.batch_size, data, indices)
    probe = lambda x: probe_fn(params, sigma32, x)
    stats["constant"] = map_batches(probe, constant_inputs.shape[0], diag.batch_size,
                                 constant_inputs).T  # [K, C]
    noise_lp = map_batches(probe, noise_inputs.shape[0], diag.batch_size, noise_inputs)
    stats["noise"] = noise_lp.reshape(len(diag.noise_stds), diag.noise_probe_examples,
                                      -1).mean(axis=1).T  # [K, M]
    stats["input_sigma"] = input_sigma
    per_level.append(stats)
    sample_key = jax.random.fold_in(jax.random.fold_in(key, SAMPLES), index)
    samples.append(np.asarray(sample_fn(params, sample_key)).transpose(1, 0, 2))
  samples = np.stack(samples)  # [L, K, num_samples, T]

  stack = lambda name: np.stack([s[name] for s in per_level])
  cross = stack("cross")  # [L, N, K, K]
  cross_noisy = stack("cross_noisy")
  sensitivity = stack("sensitivity")  # [L, N, S + 1, K]
  score = stack("score")  # [L, N, K]
  auroc_clean = np.stack([prior_aurocs(c) for c in cross])  # [L, K]
  auroc_noisy = np.stack([prior_aurocs(c) for c in cross_noisy])
  table = sensitivity.mean(axis=1)  # [L, S + 1, K]
  clean_in_class = np.stack([np.diagonal(c.mean(axis=0)) for c in cross])  # [L, K]
  drop = clean_in_class - table[:, -1]  # [L, K]
  score_mean = score.mean(axis=1)  # [L, K]

  results = {
      "family": config.model.family,
      "variant": config.get("variant", None),
      "seed": config.seed,
      "test_seed": config.data.get("test_seed", None),
      "source_names": names,
      "levels": [float(s) for s in levels],
      "num_examples": int(data.shape[0]),
      "length": int(data.shape[2]),
      "density": DENSITY,
      "cross_log_prob": _clean(cross.mean(axis=1)),
      "cross_log_prob_level_noise": _clean(cross_noisy.mean(axis=1)),
      "in_class_log_prob": _clean(clean_in_class),
      "auroc": _clean(auroc_clean),
      "mean_auroc": _clean(auroc_clean.mean(axis=1)),
      "auroc_level_noise": _clean(auroc_noisy),
      "mean_auroc_level_noise": _clean(auroc_noisy.mean(axis=1)),
      "noise_sensitivity": {
          "test_sigmas": [float(s) for s in diag.test_sigmas],
          "table": _clean(table[:, :-1]),
          "mean": _clean(table[:, :-1].mean(axis=2)),
      },
      "constant_probe": {
          "values": _clean(constant_inputs[:, 0]),
          "log_prob": _clean(stack("constant")),
      },
      "noise_probe": {
          "stds": [float(s) for s in diag.noise_stds],
          "examples_per_std": int(diag.noise_probe_examples),
          "log_prob": _clean(stack("noise")),
      },
      "score_norm": {
          "input_sigmas": [s["input_sigma"] for s in per_level],
          "normalisation": "squared norm of the example's score divided by its length "
                           "(per sample), averaged over examples",
          "per_source": _clean(score_mean),
          "mean": _clean(score_mean.mean(axis=1)),
      },
      "log_p_drop": {
          "sigma": float(diag.smoothness_sigma),
          "per_source": _clean(drop),
          "mean": _clean(drop.mean(axis=1)),
      },
      "samples": {
          "rms": _clean(np.sqrt(np.mean(np.square(samples), axis=(2, 3)))),
          "max_abs": _clean(np.max(np.abs(samples), axis=(2, 3))),
      },
  }
  if prior.latent_log_prob is not None:
    results["cross_latent_log_prob_paper_clipped"] = _clean(stack("latent").mean(axis=1))
    results["paper_clip"] = float(diag.paper_clip)
  return results, samples


# Files ----------------------------------------------------------------------------------


def write_samples(base, family, samples, levels, names, sample_rate):
  """samples [L, K, N, T] -> <base>/samples/<family>/samples.npy and
  .../<level>/<source>_<n>.wav (16-bit, clipped to [-1, 1]; the .npy keeps the raw values).
  Returns (npy path, [L][K * N] WAV paths), relative to `base`."""
  directory = os.path.join(base, "samples", family)
  os.makedirs(directory, exist_ok=True)
  tmp = os.path.join(directory, "samples.tmp.npy")
  np.save(tmp, samples)
  os.replace(tmp, os.path.join(directory, "samples.npy"))
  wavs = []
  for index, sigma in enumerate(levels):
    level_dir = os.path.join(directory, train.level_name(sigma))
    os.makedirs(level_dir, exist_ok=True)
    level_wavs = []
    for k, name in enumerate(names):
      for n, clip in enumerate(samples[index, k]):
        path = os.path.join(level_dir, f"{name}_{n}.wav")
        separation.write_wav(path, np.clip(clip, -1.0, 1.0), sample_rate, subtype="PCM_16")
        level_wavs.append(os.path.relpath(path, base))
    wavs.append(level_wavs)
  return os.path.relpath(os.path.join(directory, "samples.npy"), base), wavs


def available_levels(config, workdir):
  """(0.0,) + config.finetune.sigmas, less the fine-tuned levels without a checkpoint."""
  levels = (0.0,) + tuple(float(s) for s in config.finetune.sigmas)
  present = []
  for sigma in levels:
    directory = train.checkpoint_dir(workdir, config.model.family, sigma)
    if os.path.isdir(directory) and train.checkpoint_manager(
        directory, config.training.max_checkpoints).latest_step() is not None:
      present.append(sigma)
    elif sigma == 0.0:
      raise FileNotFoundError(f"No noiseless {config.model.family} checkpoint in {directory}; "
                              "run --mode=train first.")
    else:
      logging.warning("No %s checkpoint at %s (%s): that level is left out of the "
                      "diagnostics; run --mode=finetune.", config.model.family,
                      train.level_name(sigma), directory)
  return tuple(present)


def run(config, workdir):
  """--mode=diagnose: every available level of config.model.family on the test set;
  writes <workdir>/diagnostics/<family>.json and samples (process 0); returns the results."""
  family = config.model.family
  prior = priors.build(config.model)
  levels = available_levels(config, workdir)
  level_params = train.load_level_params(config, workdir, levels)
  results, samples = diagnose(config, prior, level_params, levels, test_examples(config))
  if not distributed.is_primary():
    return results
  out_dir = os.path.join(workdir, "diagnostics")
  npy, wavs = write_samples(out_dir, family, samples, levels, results["source_names"],
                            config.data.sample_rate)
  results["samples"].update(npy=npy, wavs=wavs, shape=list(samples.shape),
                            sample_rate=int(config.data.sample_rate))
  path = os.path.join(out_dir, f"{family}.json")
  separation.write_json(path, results)
  logging.info("Diagnostics of %s written to %s; mean AUROC per level: %s", family, path,
               dict(zip(results["levels"], results["mean_auroc"])))
  return results
