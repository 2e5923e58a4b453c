"""Annealed Langevin separation: the Gaussian posterior, the update rule, one compiled
call, determinism, flow scores, chunked overlap-add and --mode=separate's outputs."""
import json
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import soundfile
from absl.testing import absltest

import four_devices
import tiny

from audiosep_jax import metrics
from audiosep_jax import priors
from audiosep_jax import separation
from audiosep_jax import train
from audiosep_jax.data import pipeline
from audiosep_jax.data import toy
from configs import default


def ar1_covariance(std, rho, length):
  """Stationary AR(1) covariance std^2 rho^|i - j|: [T, T]."""
  i = np.arange(length)
  return std ** 2 * rho ** np.abs(i[:, None] - i[None, :])


def gaussian_config(num_sources, steps_per_level, delta):
  config = default.get_default_config()
  config.data.source_names = tuple(f"source_{k}" for k in range(num_sources))
  config.separation.steps_per_level = steps_per_level
  config.separation.delta = delta
  return config


class GaussianPosteriorTest(absltest.TestCase):
  """Gaussian priors N(0, C_k) with the score supplied as a JAX function.

  At level i the prior score is that of N(0, C_k + sigma_i^2 I) (the prior smoothed at
  sigma_i, what a fine-tuned prior models), so the last level's target is Gaussian with
  precision A = blockdiag((C_k + sigma_L^2 I)^-1) + (a a^T kron I) / gamma_L^2 and mean
  mu_k = (C_k + sigma_L^2 I) a_k S^-1 m, S = sum_j a_j^2 (C_j + sigma_L^2 I) + gamma_L^2 I:
  the Wiener solution.
  """

  def test_mean_of_runs_is_the_wiener_solution_and_the_residual_shrinks(self):
    num_sources, length, runs = 3, 32, 512
    sigmas = (1.0, 0.5, 0.25, 0.1)
    covariances = np.stack([ar1_covariance(0.3, 0.7, length),  # low-pass
                            ar1_covariance(0.3, -0.7, length),  # high-pass
                            ar1_covariance(0.2, 0.0, length)])  # white
    eye = np.eye(length)
    precisions = np.stack([np.linalg.inv(covariances + s ** 2 * eye) for s in sigmas])
    precisions_jnp = jnp.asarray(precisions, jnp.float32)  # [L, K, T, T]

    def score_fn(level, x):
      return -jnp.einsum("bkt,kts->bks", x, precisions_jnp[level])

    # delta = sigma_L^2 / 2 keeps eta_i * lambda_max(A_i) ~ 0.3 at every level.
    config = gaussian_config(num_sources, 200, 0.5 * sigmas[-1] ** 2)
    rng = np.random.default_rng(0)
    truth = np.stack([rng.multivariate_normal(np.zeros(length), c) for c in covariances])
    weights = np.full(num_sources, 1.0 / num_sources)
    mix = weights @ truth  # [T]
    batch = jnp.broadcast_to(jnp.asarray(mix, jnp.float32), (runs, length))
    run = jax.jit(lambda key, m: separation.separate_with_trace(key, m, score_fn, sigmas, config))
    estimates, trace = run(jax.random.key(0), batch)
    estimates = np.asarray(estimates, np.float64)

    def wiener_solution(sigma, gamma):
      smoothed = covariances + sigma ** 2 * eye
      s_matrix = np.einsum("k,kts->ts", weights ** 2, smoothed) + gamma ** 2 * eye
      return np.stack([weights[k] * smoothed[k] @ np.linalg.solve(s_matrix, mix)
                       for k in range(num_sources)])

    gamma = sigmas[-1]
    wiener = wiener_solution(sigmas[-1], gamma)
    precision = np.kron(np.outer(weights, weights), eye) / gamma ** 2
    for k in range(num_sources):
      precision[k * length:(k + 1) * length, k * length:(k + 1) * length] += precisions[-1, k]
    # For a Gaussian target the discretised chain's stationary mean is exactly the
    # posterior mean; its stationary covariance is (A (I - eta A / 2))^-1.
    eta = config.separation.delta
    chain_cov = np.linalg.inv(precision @ (np.eye(precision.shape[0]) - 0.5 * eta * precision))
    self.assertLess(eta * np.linalg.eigvalsh(precision).max(), 0.5)  # a stable chain
    standard_error = np.sqrt(np.diag(chain_cov)).reshape(num_sources, length) / np.sqrt(runs)
    z = (estimates.mean(axis=0) - wiener) / standard_error
    # Tolerance: 5 Monte Carlo standard errors on each of the K * T = 96 coordinates
    # (P(max |z| > 5) < 1e-4 for an unbiased, converged sampler); 200 steps per level
    # leave a start-up error below exp(-eta * lambda_min(A) * 200) ~ 1e-3 of it.
    self.assertLess(np.max(np.abs(z)), 5.0)
    self.assertLess(np.sqrt(np.mean(z ** 2)), 1.5)
    # The test can fail: a sampler that stopped one level early (the Wiener solution at
    # sigma_{L-1}) would be rejected, and so would the mix itself.
    for wrong in (wiener_solution(sigmas[-2], sigmas[-2]), np.broadcast_to(mix, wiener.shape)):
      self.assertGreater(np.sqrt(np.mean(((wrong - wiener) / standard_error) ** 2)), 3.0)
    # The spread matches the chain's exact stationary variance (512 x 96 draws: 5%).
    np.testing.assert_allclose(estimates.var(axis=0).mean(), np.diag(chain_cov).mean(),
                               rtol=0.05)

    residual = np.asarray(trace["residual_rms"]).mean(axis=1)
    self.assertEqual(residual.shape, (len(sigmas),))
    self.assertTrue(np.all(np.diff(residual) < 0), residual)
    self.assertLess(residual[-1], residual[0] / 4)
    np.testing.assert_allclose(trace["sigma"], sigmas, rtol=1e-6)
    self.assertEqual(trace["score_rms"].shape, (len(sigmas), runs))


def reference_sampler(key, mix, score_fn, sigmas, weights, steps, delta, gamma_scale):
  """The update of DESIGN.md written out with Python loops, for comparison."""
  init_key, run_key = jax.random.split(key)
  shape = (mix.shape[0], weights.shape[0], mix.shape[1])
  x = sigmas[0] * jax.random.normal(init_key, shape)
  for level, sigma in enumerate(sigmas):
    eta = delta * sigma ** 2 / sigmas[-1] ** 2
    gamma = gamma_scale * sigma
    for step in range(steps):
      eps = jax.random.normal(jax.random.fold_in(jax.random.fold_in(run_key, level), step),
                              shape)
      residual = mix - jnp.einsum("bkt,k->bt", x, weights)
      drift = score_fn(level, x) + weights[:, None] * residual[:, None, :] / gamma ** 2
      x = x + eta * drift + np.sqrt(2 * eta) * eps
  return x


class SamplerTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.config = gaussian_config(2, 3, 1e-3)
    self.config.data.mix_weights = (0.7, 0.3)
    self.config.separation.gamma_scale = 2.0
    self.sigmas = (0.5, 0.2, 0.1)
    self.mix = jax.random.normal(jax.random.key(1), (2, 16))
    self.score_fn = lambda level, x: -x * (1.0 + level)

  def test_matches_the_update_rule_written_out(self):
    got = separation.separate(jax.random.key(3), self.mix, self.score_fn, self.sigmas,
                              self.config)
    want = reference_sampler(jax.random.key(3), self.mix, self.score_fn, self.sigmas,
                             jnp.array([0.7, 0.3]), 3, 1e-3, 2.0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

  def test_one_compiled_call_whatever_the_number_of_steps(self):
    calls = []

    def counting_score(level, x):
      calls.append(1)
      return self.score_fn(level, x)

    traced_calls = []
    for steps in (2, 40):
      self.config.separation.steps_per_level = steps
      calls.clear()
      jaxpr = jax.make_jaxpr(lambda k, m: separation.separate(
          k, m, counting_score, self.sigmas, self.config))(jax.random.key(0), self.mix)
      traced_calls.append(len(calls))
      scans = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
      self.assertLen(scans, 1)  # the outer scan over levels; the steps scan is inside
      self.assertEqual(scans[0].params["length"], len(self.sigmas))
    self.assertEqual(traced_calls[0], traced_calls[1])
    self.assertLessEqual(traced_calls[0], 2)

  def test_python_loop_driver_gives_the_same_sources_and_trace(self):
    references = jax.random.normal(jax.random.key(2), (2, 2, 16))
    settings, weights = separation._settings_and_weights(self.config)
    scan_sources, scan_trace = jax.jit(separation.get_separation_fn(
        self.score_fn, self.sigmas, weights, settings))(jax.random.key(4), self.mix, references)
    sampler = separation.get_sampler(self.score_fn, self.sigmas, weights, settings)
    sampler = sampler._replace(step=jax.jit(sampler.step))
    loop_sources, loop_trace = separation.loop_separation(sampler, jax.random.key(4), self.mix,
                                                          references)
    np.testing.assert_allclose(loop_sources, scan_sources, rtol=1e-5, atol=1e-6)
    self.assertEqual(set(loop_trace), {"sigma", "residual_rms", "score_rms", "si_sdr"})
    for name, value in scan_trace.items():
      np.testing.assert_allclose(loop_trace[name], value, rtol=1e-4, atol=1e-5)

  def test_same_key_same_output(self):
    run = jax.jit(lambda k, m: separation.separate(k, m, self.score_fn, self.sigmas,
                                                   self.config))
    a = run(jax.random.key(5), self.mix)
    b = run(jax.random.key(5), self.mix)
    c = run(jax.random.key(6), self.mix)
    np.testing.assert_array_equal(a, b)
    self.assertGreater(float(jnp.max(jnp.abs(a - c))), 1e-3)

  def test_mix_init_satisfies_the_constraint(self):
    self.config.separation.init = "mix"
    self.config.separation.steps_per_level = 1
    settings, weights = separation._settings_and_weights(self.config)
    x = separation.init_sources(jax.random.key(0), self.mix, weights, 0.5, settings)
    np.testing.assert_allclose(toy.mix(x, weights), self.mix, atol=1e-6)
    self.assertEqual(x.shape, (2, 2, 16))

  def test_trace_si_sdr_with_references(self):
    references = jax.random.normal(jax.random.key(2), (2, 2, 16))
    sources, trace = separation.separate_with_trace(
        jax.random.key(0), self.mix, self.score_fn, self.sigmas, self.config, references)
    self.assertEqual(trace["si_sdr"].shape, (3, 2, 2))
    np.testing.assert_allclose(trace["si_sdr"][-1], metrics.si_sdr(sources, references),
                               atol=1e-4)

  def test_bad_input_is_a_clear_error(self):
    with self.assertRaisesRegex(ValueError, "strictly descending"):
      separation.separate(jax.random.key(0), self.mix, self.score_fn, (0.1, 0.5), self.config)
    with self.assertRaisesRegex(ValueError, "positive"):
      separation.separate(jax.random.key(0), self.mix, self.score_fn, (0.5, 0.0), self.config)
    with self.assertRaisesRegex(ValueError, r"mix must be \[B, T\]"):
      separation.separate(jax.random.key(0), self.mix[0], self.score_fn, self.sigmas,
                          self.config)
    with self.assertRaisesRegex(ValueError, "score_fn returned shape"):
      separation.separate(jax.random.key(0), self.mix, lambda level, x: x[:, 0],
                          self.sigmas, self.config)
    self.config.separation.init = "zeros"
    with self.assertRaisesRegex(ValueError, "config.separation.init 'zeros'"):
      separation.separate(jax.random.key(0), self.mix, self.score_fn, self.sigmas,
                          self.config)
    self.config.separation.init = "noise"
    self.config.separation.driver = "while"
    with self.assertRaisesRegex(ValueError, "config.separation.driver 'while'"):
      separation.separate(jax.random.key(0), self.mix, self.score_fn, self.sigmas,
                          self.config)
    self.config.separation.driver = "scan"
    self.config.separation.prior_loop = "pmap"
    with self.assertRaisesRegex(ValueError, "config.separation.prior_loop 'pmap'"):
      separation.separate(jax.random.key(0), self.mix, self.score_fn, self.sigmas,
                          self.config)


class MapPriorsTest(absltest.TestCase):

  def test_every_layout_matches_vmap(self):
    # Prior k's params [K, 3], its source x[:, k] [B, K, T], a shared scale; two outputs.
    def fn(params, source, scale):
      return params["w"][0] * source + scale * params["w"][1:].sum(), jnp.cumsum(source, 0)

    params = {"w": jnp.arange(12.0).reshape(4, 3)}
    x = jax.random.normal(jax.random.key(0), (2, 4, 5))
    expected = jax.vmap(fn, (0, 1, None), 1)(params, x, 0.5)
    for groups in (1, 2, 4):
      for rotated in ((), (1,), (0, 1)):
        got = priors.map_priors(fn, (0, 1, None), 1, "map", groups, rotated)(
            params, x, 0.5)
        for want, have in zip(expected, got):
          np.testing.assert_allclose(have, want, rtol=1e-6, err_msg=f"{groups} {rotated}")
    with self.assertRaisesRegex(ValueError, "4 priors do not split into 3 groups"):
      priors.map_priors(fn, (0, 1, None), 1, "map", 3)(params, x, 0.5)


class FlowScoreTest(absltest.TestCase):

  def test_score_is_the_gradient_of_the_level_prior_and_both_drivers_agree(self):
    config = tiny.flow_config()
    prior = priors.build(config.model)
    x = toy.sample_sources(jax.random.key(0), 2, 64, config.data)
    init = jax.jit(lambda key, batch: priors.stack_init(prior, key, batch))
    levels = [init(jax.random.key(i), x * (1 + i)) for i in range(2)]
    stacked = jax.tree.map(lambda *p: jnp.stack(p), *levels)
    probe = 0.5 * jax.random.normal(jax.random.key(3), x.shape)
    one_prior_score = jax.jit(jax.grad(lambda v, p: jnp.sum(prior.log_prob(p, v))))
    # The K priors at once, one after another, and in 2 groups of 2.
    for prior_loop, prior_groups in (("map", 1), ("map", 2), ("vmap", 1)):
      score_fn = jax.jit(separation.make_score_fn(prior, stacked, (0.1, 0.01), prior_loop,
                                                  prior_groups))
      for level in range(2):
        got = score_fn(jnp.int32(level), probe)
        for k in range(x.shape[1]):
          params_k = jax.tree.map(lambda p, k=k: p[k], levels[level])
          np.testing.assert_allclose(got[:, k], one_prior_score(probe[:, k], params_k),
                                     rtol=1e-4, atol=1e-5, err_msg=prior_loop)
    # The two levels' priors differ, and so do their scores.
    self.assertGreater(float(jnp.max(jnp.abs(score_fn(0, probe) - score_fn(1, probe)))), 1e-3)
    with self.assertRaisesRegex(ValueError, "2 levels but 3 sigmas"):
      separation.make_score_fn(prior, stacked, (0.3, 0.1, 0.01))

    # --mode=separate's two drivers, params passed as arguments: the same sources.
    config.separation.steps_per_level = 2
    mix = toy.mix(x, toy.mix_weights(x.shape[1], config.data))
    outputs = {}
    for driver in separation.DRIVERS:
      config.separation.driver = driver
      separate_batch = separation.batch_separator(config, prior, stacked, (0.1, 0.01))
      outputs[driver] = separate_batch(jax.random.key(5), mix, x)
    np.testing.assert_allclose(outputs["loop"][0], outputs["scan"][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(outputs["loop"][1]["si_sdr"], outputs["scan"][1]["si_sdr"],
                               atol=1e-3)


MESH_SCRIPT = r"""
import sys
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
import jax, jax.numpy as jnp, numpy as np
from audiosep_jax import priors, separation, train
from audiosep_jax.data import toy
import tiny
assert len(jax.devices()) == 4, jax.devices()
config = tiny.flow_config()
config.separation.steps_per_level = 3
prior = priors.build(config.model)
x = toy.sample_sources(jax.random.key(0), 4, 128, config.data)
init = jax.jit(lambda key, batch: priors.stack_init(prior, key, batch))
stacked = jax.tree.map(lambda *p: jnp.stack(p), *[init(jax.random.key(i), x) for i in range(2)])
mix = toy.mix(x, toy.mix_weights(4, config.data))
outputs = []
# (devices, of them on the prior axis, prior_loop): one device, one prior per device,
# 2 x 2, 4 x 1, each device running its priors at once or looping over them.
meshes = ((1, 1, "vmap"), (4, 4, "vmap"), (4, 2, "vmap"), (4, 1, "vmap"), (1, 1, "map"),
          (4, 2, "map"), (4, 1, "map"))
for num_devices, prior_devices, prior_loop in meshes:
  mesh = train.make_mesh(num_devices, prior_devices)
  config.separation.prior_loop = prior_loop
  separate_batch = separation.batch_separator(config, prior, stacked, (0.1, 0.01), mesh)
  outputs.append(separate_batch(jax.random.key(5), mix, x))
for mesh_shape, (sources, trace) in zip(meshes[1:], outputs[1:]):
  worst = float(np.max(np.abs(sources - outputs[0][0])))
  print(mesh_shape, "max abs source difference", worst)
  np.testing.assert_allclose(sources, outputs[0][0], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(trace["si_sdr"], outputs[0][1]["si_sdr"], atol=1e-3)
"""


class MeshTest(absltest.TestCase):

  def test_one_device_equals_prior_and_data_sharded_meshes(self):
    tests = os.path.dirname(os.path.abspath(__file__))
    result = four_devices.run_script(MESH_SCRIPT.format(root=os.path.dirname(tests),
                                                        tests=tests))
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn("(4, 1, 'map') max abs source difference", result.stdout)


class ChunkingTest(absltest.TestCase):

  def test_overlap_add_of_unchanged_chunks_is_the_signal(self):
    signal = np.random.default_rng(0).normal(size=1000).astype(np.float32)
    chunks = separation.split_chunks(signal, 256, 64)
    self.assertEqual(chunks.shape, (5, 256))  # hop 192: 4 * 192 + 256 = 1024 >= 1000
    np.testing.assert_array_equal(chunks[1, :64], chunks[0, -64:])
    stacked = np.stack([chunks, 2 * chunks], axis=1)  # [N, 2, C]
    np.testing.assert_allclose(separation.overlap_add(stacked, 64, 1000),
                               np.stack([signal, 2 * signal]), atol=1e-6)

  def test_crossfade_ramps_sum_to_one(self):
    window = separation.crossfade_window(256, 64)
    np.testing.assert_allclose(window[-64:] + window[:64], 1.0, atol=1e-12)
    self.assertTrue(np.all(window > 0))
    np.testing.assert_array_equal(separation.crossfade_window(8, 0), np.ones(8))

  def test_bad_overlap_is_a_clear_error(self):
    with self.assertRaisesRegex(ValueError, "chunk_overlap=200"):
      separation.split_chunks(np.zeros(10), 256, 200)


def write_level_checkpoints(config, workdir):
  """Untrained (freshly initialised) checkpoints at every fine-tuning level."""
  prior = priors.build(config.model)
  optimizer = train.make_optimizer(config.optim, config.finetune.num_steps)
  batch = toy.sample_sources(jax.random.key(0), config.training.batch_size,
                             config.data.crop_length, config.data)
  init = jax.jit(lambda key, x: priors.stack_init(prior, key, x))
  for level, sigma in enumerate(config.finetune.sigmas):
    key, x = jax.random.key(level), batch * (1 + level)
    state = train.create_train_state(prior, optimizer, key, x, params=init(key, x))
    manager = train.checkpoint_manager(
        train.checkpoint_dir(workdir, config.model.family, sigma), 1)
    train.save_state(manager, state)
    manager.wait_until_finished()


class RunTest(absltest.TestCase):

  def test_separate_mode_writes_wavs_and_metrics(self):
    config = tiny.flow_config()
    sep = config.separation
    workdir = tempfile.mkdtemp()
    write_level_checkpoints(config, workdir)
    input_rate, input_length = 22_050, 1_000
    input_path = os.path.join(workdir, "song.wav")
    stereo = np.random.default_rng(0).uniform(-0.5, 0.5, (input_length, 2)).astype(np.float32)
    soundfile.write(input_path, stereo, input_rate, subtype="FLOAT")

    summary = separation.run(config, workdir, input_path)

    out_dir = os.path.join(workdir, "separations", "flow")
    with open(os.path.join(out_dir, "metrics.json")) as f:
      stored = json.load(f)
    self.assertEqual(stored, json.loads(json.dumps(summary)))
    names = list(config.data.source_names)
    self.assertEqual(stored["source_names"], names)
    self.assertEqual(stored["sigmas"], sorted(config.finetune.sigmas, reverse=True))
    self.assertEqual(stored["steps_per_level"], sep.steps_per_level)
    self.assertEqual(stored["driver"], sep.driver)
    self.assertLen(stored["per_mix"], sep.num_mixes)
    self.assertLen(stored["trace"]["residual_rms"], len(config.finetune.sigmas))

    truth = pipeline.test_set(config)[:sep.num_mixes, :, :sep.mix_length]
    weights = np.asarray(toy.mix_weights(len(names), config.data))
    estimates = np.zeros_like(truth)
    for i in range(sep.num_mixes):
      mix_dir = os.path.join(out_dir, f"mix_{i}")
      mix, rate = soundfile.read(os.path.join(mix_dir, "mix.wav"), dtype="float32")
      self.assertEqual(rate, config.data.sample_rate)
      for k, name in enumerate(names):
        true_k, _ = soundfile.read(os.path.join(mix_dir, f"true_{name}.wav"), dtype="float32")
        np.testing.assert_array_equal(true_k, truth[i, k])
        estimates[i, k], _ = soundfile.read(os.path.join(mix_dir, f"estimate_{name}.wav"),
                                            dtype="float32")
      np.testing.assert_allclose(mix, weights @ truth[i], atol=1e-6)
      for k, name in enumerate(names):
        np.testing.assert_allclose(stored["per_mix"][i]["mix_si_sdr"][name],
                                   metrics.si_sdr(mix, truth[i, k]), atol=1e-3)
        np.testing.assert_allclose(stored["per_mix"][i]["si_sdr"][name],
                                   metrics.si_sdr(estimates[i, k], truth[i, k]), atol=1e-3)
    self.assertTrue(np.all(np.isfinite(estimates)))
    for name in names:
      per_mix = [m["si_sdri"][name] for m in stored["per_mix"]]
      self.assertAlmostEqual(stored["si_sdri"][name], np.mean(per_mix), places=4)

    input_dir = os.path.join(out_dir, "input_song")
    mono, rate = soundfile.read(os.path.join(input_dir, "mix.wav"), dtype="float32")
    self.assertEqual(rate, input_rate)
    np.testing.assert_allclose(mono, stereo.mean(axis=1), atol=1e-6)
    for name in names:
      estimate, rate = soundfile.read(os.path.join(input_dir, f"estimate_{name}.wav"))
      self.assertEqual((rate, estimate.shape), (input_rate, (input_length,)))
      self.assertTrue(np.all(np.isfinite(estimate)))
    leftovers = [f for _, _, files in os.walk(out_dir) for f in files if f.endswith(".tmp")]
    self.assertEmpty(leftovers)

    with self.assertRaisesRegex(FileNotFoundError, "no file at"):
      separation.run(config, workdir, os.path.join(workdir, "missing.wav"))

  def test_bad_input_fails_before_anything_is_loaded_or_written(self):
    config = tiny.flow_config()
    workdir = tempfile.mkdtemp()  # no checkpoints: a late check would fail on those first
    with self.assertRaisesRegex(FileNotFoundError, "--input: no file at"):
      separation.run(config, workdir, os.path.join(workdir, "typo.wav"))
    config.separation.chunk_overlap = config.separation.mix_length
    with self.assertRaisesRegex(ValueError, "chunk_overlap"):
      separation.run(config, workdir, os.path.join(workdir, "typo.wav"))
    config = tiny.flow_config()
    config.separation.batch_size = 0
    with self.assertRaisesRegex(ValueError, "config.separation.batch_size must be >= 1, got 0"):
      separation.run(config, workdir)
    self.assertEqual(os.listdir(workdir), [])

  def test_diverged_estimates_give_strict_json_with_null_metrics(self):
    config = tiny.flow_config()
    config.separation.trace = False
    sep, num_sources = config.separation, len(config.data.source_names)

    def diverged(key, mix, references):
      del key, references
      sources = np.zeros((mix.shape[0], num_sources, mix.shape[1]), np.float32)
      sources[:, 0] = np.nan
      return sources, {}

    out_dir = tempfile.mkdtemp()
    summary = separation.separate_test_mixes(config, diverged, jax.random.key(0), out_dir)
    with open(os.path.join(out_dir, "metrics.json")) as f:
      stored = json.load(f, parse_constant=lambda name: self.fail(f"{name} in metrics.json"))
    self.assertEqual(stored["non_finite_estimates"], sep.num_mixes)
    first, second = config.data.source_names[:2]
    self.assertIsNone(stored["si_sdr"][first])
    self.assertIsNotNone(stored["si_sdr"][second])
    self.assertTrue(np.isnan(summary["si_sdr"][first]))


if __name__ == "__main__":
  absltest.main()
