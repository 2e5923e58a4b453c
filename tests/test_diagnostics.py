"""Prior diagnostics: exact AUROC, cross-likelihood and scores against direct computations,
determinism, and `run` on a workdir of checkpoints."""
import itertools
import json
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import soundfile
from absl.testing import absltest

import tiny

from audiosep_jax import diagnostics
from audiosep_jax import priors
from audiosep_jax import train
from configs import toy_wavenet


def tiny_config():
  config = tiny.flow_config()
  config.finetune.sigmas = (0.1,)
  config.diagnostics.num_examples = 4
  config.diagnostics.length = 64
  config.diagnostics.batch_size = 2
  config.diagnostics.constant_values = 5
  config.diagnostics.noise_stds = (0.0, 0.1, 1.0)
  config.diagnostics.noise_probe_examples = 2
  config.diagnostics.sample_length = 64
  return config


def level_params(prior, data, num_levels):
  """[L, K, ...] params: per-source ActNorm init on data, then per level a different
  N(0, 0.05^2) perturbation of every leaf (numpy, so no compiles): couplings far from the
  identity."""
  base = priors.stack_init(prior, jax.random.key(0), jnp.asarray(data))
  rng = np.random.default_rng(0)
  levels = [jax.tree.map(lambda p: np.asarray(p) + 0.05 * rng.standard_normal(
      p.shape, np.float32), base) for _ in range(num_levels)]
  return jax.tree.map(lambda *leaves: np.stack(leaves), *levels)


def brute_force_auroc(positive, negative):
  wins = 0.0
  for p, n in itertools.product(positive, negative):
    p = -np.inf if np.isnan(p) else p
    n = -np.inf if np.isnan(n) else n
    wins += 1.0 if p > n else 0.5 if p == n else 0.0
  return wins / (len(positive) * len(negative))


class AurocTest(absltest.TestCase):

  def test_matches_brute_force_pair_count_with_ties(self):
    rng = np.random.default_rng(0)
    for trial in range(20):
      positive = rng.integers(0, 6, size=rng.integers(1, 9)).astype(float)
      negative = rng.integers(0, 6, size=rng.integers(1, 12)).astype(float)
      if trial % 3 == 0:
        positive[0], negative[-1] = -np.inf, np.nan
      self.assertAlmostEqual(diagnostics.auroc(positive, negative),
                             brute_force_auroc(positive, negative), places=12)

  def test_extremes(self):
    self.assertEqual(diagnostics.auroc([3.0, 4.0], [1.0, 2.0, 0.0]), 1.0)
    self.assertEqual(diagnostics.auroc([1.0], [2.0, 3.0]), 0.0)
    self.assertEqual(diagnostics.auroc([1.0, 1.0], [1.0]), 0.5)

  def test_empty_class_is_an_error(self):
    with self.assertRaisesRegex(ValueError, "positives and negatives"):
      diagnostics.auroc([], [1.0])

  def test_prior_aurocs_use_own_row(self):
    # cross[n, k, j] = log p_k(s_j): prior 0 rates source 1 above its own (AUROC 0), prior
    # 1 its own above source 0 (AUROC 1). Read by columns, the answer would be [1, 0].
    cross = np.zeros((3, 2, 2))
    cross[:, 0, 0], cross[:, 0, 1] = 5.0, 9.0
    cross[:, 1, 0], cross[:, 1, 1] = -9.0, -5.0
    np.testing.assert_array_equal(diagnostics.prior_aurocs(cross), [0.0, 1.0])


class BatchingTest(absltest.TestCase):

  def test_batches_cover_every_row_once_whatever_the_batch_size(self):
    rows = np.arange(7 * 3, dtype=np.float32).reshape(7, 3)
    calls = []

    def fn(x, i):
      calls.append(x.shape[0])
      return {"sum": x.sum(-1), "index": i}

    for batch_size in (1, 3, 7, 10):
      calls.clear()
      out = diagnostics.map_batches(fn, 7, batch_size, rows, np.arange(7))
      np.testing.assert_array_equal(out["sum"], rows.sum(-1))
      np.testing.assert_array_equal(out["index"], np.arange(7))
      self.assertEqual(set(calls), {batch_size})  # one shape: one compile


class PureFunctionsTest(absltest.TestCase):
  """Each pure function against a direct computation, all in one compiled call."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.config = tiny_config()
    prior = cls.prior = priors.build(cls.config.model)
    cls.data = diagnostics.test_examples(cls.config)  # [4, 4, 64]
    params = priors.index_level(level_params(prior, cls.data, 1), 0)
    cls.clip = -1.2
    cls.eps = diagnostics.example_noise(jax.random.key(3), jnp.arange(4), (4, 64))
    cls.constant = jnp.full((2, 64), 0.25)
    prior_at = lambda p, k: jax.tree.map(lambda q: q[k], p)

    def compute(p, x, eps):
      x_score = x + 0.05
      return {
          "cross": diagnostics.example_cross_log_prob(prior, p, x, 0.0),
          "own": jnp.mean(priors.stacked_log_prob(prior, p, x), axis=-1),
          "full": jnp.mean(priors.cross_log_prob(prior, p, x), axis=-1),
          "latent": diagnostics.example_cross_latent_log_prob(prior, p, x, cls.clip),
          "latent_1_on_2": prior.latent_log_prob(prior_at(p, 1), x[:, 2]),
          "table": diagnostics.noise_sensitivity(prior, p, x, eps, (0.0, 0.3), 0.0),
          "own_noisy": jnp.mean(priors.stacked_log_prob(prior, p, x + 0.3 * eps), axis=-1),
          "norms": diagnostics.score_sq_norm(prior, p, x_score, 0.0),
          "grad_2_on_example_1": jax.grad(lambda v: jnp.sum(
              prior.log_prob(prior_at(p, 2), v[None])))(x_score[1, 2]),
          "probe": diagnostics.probe_log_prob(prior, p, cls.constant, 0.0),
          "constant_3": jnp.mean(prior.log_prob(prior_at(p, 3), cls.constant), -1),
      }

    cls.out = jax.jit(compute)(params, cls.data, cls.eps)

  def test_test_examples_are_cropped_test_set(self):
    self.assertEqual(self.data.shape, (4, 4, 64))
    self.assertEqual(self.data.dtype, np.float32)

  def test_cross_diagonal_equals_stacked_log_prob(self):
    cross = self.out["cross"]
    self.assertEqual(cross.shape, (4, 4, 4))
    np.testing.assert_allclose(np.diagonal(cross, axis1=1, axis2=2), self.out["own"],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cross, self.out["full"], rtol=1e-5, atol=1e-5)

  def test_latent_term_is_clipped_per_sample(self):
    direct = self.out["latent_1_on_2"]  # prior 1 on source 2
    self.assertLess(float(jnp.min(direct)), self.clip)  # the clip is active
    np.testing.assert_allclose(self.out["latent"][:, 1, 2],
                               jnp.mean(jnp.maximum(direct, self.clip), -1), rtol=1e-5)

  def test_noise_sensitivity_at_zero_is_clean_and_uses_the_given_eps(self):
    table = self.out["table"]
    self.assertEqual(table.shape, (4, 2, 4))
    np.testing.assert_allclose(table[:, 0], self.out["own"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(table[:, 1], self.out["own_noisy"], rtol=1e-5, atol=1e-6)

  def test_example_noise_depends_only_on_the_index(self):
    some_rows = diagnostics.example_noise(jax.random.key(3), jnp.array([3, 1]), (4, 64))
    np.testing.assert_array_equal(some_rows, self.eps[jnp.array([3, 1])])

  def test_score_norm_matches_a_per_example_gradient(self):
    np.testing.assert_allclose(self.out["norms"][1, 2],
                               jnp.mean(self.out["grad_2_on_example_1"] ** 2), rtol=1e-4)

  def test_probe_scores_every_prior_on_the_same_input(self):
    self.assertEqual(self.out["probe"].shape, (4, 2))
    np.testing.assert_allclose(self.out["probe"][3], self.out["constant_3"], rtol=1e-5)


def truncated_prior():
  """A Prior with params a [K]: log p(x)_t = -a x_t^2 / 2, and at sigma = 0 -inf outside
  [-1, 1], as the noiseless WaveNet's (its score there is finite: 0 through the where)."""
  def level_log_prob(params, x, sigma):
    return jnp.where((jnp.abs(x) <= 1.0) | (sigma > 0), -0.5 * params * jnp.square(x),
                     -jnp.inf)

  return priors.Prior(
      init=None, log_prob=lambda params, x: level_log_prob(params, x, 0.0),
      sample=lambda params, key, batch, length: jax.random.normal(key, (batch, length)),
      level_log_prob=level_log_prob)


class LogZeroScoreTest(absltest.TestCase):
  """Where the level's log p is -inf, the score norm is NaN (null), like the log p drop."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.prior, cls.params = truncated_prior(), np.array([1.0, 2.0], np.float32)
    wave = 0.5 * np.sin(np.linspace(0.0, 6.0, 64, dtype=np.float32))
    cls.data = np.stack([np.stack([wave, wave])] * 4)  # [4, 2, 64]
    cls.data[2:, 1] = 1.0  # source 1, examples 2 and 3: at the edge, noise crosses it

  def test_score_norm_is_nan_only_for_examples_with_log_zero(self):
    x = self.data + 0.05 * np.asarray(diagnostics.example_noise(
        jax.random.key(0), jnp.arange(4), (2, 64)))
    norms = np.asarray(diagnostics.score_sq_norm(self.prior, self.params, x, 0.0))
    inside = np.ones((4, 2), bool)
    inside[2:, 1] = False
    outside = np.abs(x) > 1.0
    self.assertTrue(np.all(outside[2:, 1].any(-1) & ~outside[2:, 1].all(-1)))  # a mix
    np.testing.assert_array_equal(np.isnan(norms), ~inside)
    direct = np.mean(np.square(self.params[None, :, None] * x), axis=-1)
    np.testing.assert_allclose(norms[inside], direct[inside], rtol=1e-5)
    smoothed = diagnostics.score_sq_norm(self.prior, self.params, x, 0.1)  # no log 0
    np.testing.assert_allclose(smoothed, direct, rtol=1e-5)

  def test_noiseless_wavenet_score_norm_is_nan_beyond_one(self):
    prior = priors.build(toy_wavenet.get_config("test").model)
    x = np.concatenate([np.full((1, 2, 64), 0.3), np.full((1, 2, 64), 0.99)], dtype=np.float32)
    params = priors.stack_init(prior, jax.random.key(0), jnp.asarray(x))
    x = x + 0.05 * np.asarray(diagnostics.example_noise(jax.random.key(1), jnp.arange(2),
                                                        (2, 64)))
    norms = jax.jit(lambda p, v: jnp.stack([diagnostics.score_sq_norm(prior, p, v, s)
                                             for s in (0.0, 0.1)]))(params, x)
    np.testing.assert_array_equal(np.isfinite(norms), [[[True, True], [False, False]],
                                                       [[True, True], [True, True]]])

  def test_diagnose_reports_null_score_where_the_drop_is_null(self):
    config = tiny_config()
    config.data.source_names = ("inside", "edge")
    levels = (0.0, 0.1)
    results, _ = diagnostics.diagnose(config, self.prior, np.stack([self.params] * 2),
                                      levels, self.data)
    score, drop = results["score_norm"], results["log_p_drop"]
    self.assertIsNone(drop["per_source"][0][1])  # level 0, edge source: log p = -inf
    for l in range(len(levels)):
      for k in range(2):
        self.assertEqual(score["per_source"][l][k] is None, drop["per_source"][l][k] is None)
      self.assertEqual(score["mean"][l] is None, drop["mean"][l] is None)
    self.assertIsNone(score["mean"][0])
    self.assertIsNotNone(score["mean"][1])
    json.dumps(results, allow_nan=False)


def save_level_checkpoints(config, workdir, prior, params, levels):
  """Writes params [L, K, ...] as each level's checkpoint (no training)."""
  optimizer = train.make_optimizer(config.optim, 10)
  batch = jnp.zeros((config.training.batch_size, 4, config.data.crop_length))
  for index, sigma in enumerate(levels):
    state = train.create_train_state(prior, optimizer, jax.random.key(0), batch,
                                     params=priors.index_level(params, index))
    manager = train.checkpoint_manager(
        train.checkpoint_dir(workdir, config.model.family, sigma), 2)
    train.save_state(manager, state)
    manager.wait_until_finished()


class DiagnoseTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.config = tiny_config()
    cls.prior = priors.build(cls.config.model)
    cls.data = diagnostics.test_examples(cls.config)
    cls.params = level_params(cls.prior, cls.data, 2)
    cls.results, cls.samples = diagnostics.diagnose(cls.config, cls.prior, cls.params,
                                                    (0.0, 0.1), cls.data)

  def test_schema_and_shapes(self):
    res = self.results
    self.assertEqual(res["levels"], [0.0, 0.1])
    self.assertEqual(res["source_names"], ["sin", "square", "saw", "triangle"])
    self.assertEqual(np.shape(res["cross_log_prob"]), (2, 4, 4))
    self.assertEqual(np.shape(res["cross_latent_log_prob_paper_clipped"]), (2, 4, 4))
    self.assertEqual(np.shape(res["auroc"]), (2, 4))
    self.assertEqual(np.shape(res["noise_sensitivity"]["table"]), (2, 7, 4))
    self.assertEqual(np.shape(res["constant_probe"]["log_prob"]), (2, 4, 5))
    self.assertEqual(np.shape(res["noise_probe"]["log_prob"]), (2, 4, 3))
    self.assertEqual(res["score_norm"]["input_sigmas"], [0.05, 0.1])
    self.assertEqual(self.samples.shape, (2, 4, 1, 64))
    json.dumps(res, allow_nan=False)

  def test_internal_consistency(self):
    res = self.results
    cross = np.array(res["cross_log_prob"])
    table = np.array(res["noise_sensitivity"]["table"])
    # sigma_test = 0 row of the noise table is the cross-likelihood diagonal.
    np.testing.assert_allclose(table[:, 0], np.diagonal(cross, axis1=1, axis2=2), rtol=1e-6)
    np.testing.assert_allclose(res["in_class_log_prob"], np.diagonal(cross, axis1=1, axis2=2))
    # At level 0 the level's noise is zero: the noised table equals the clean one.
    np.testing.assert_allclose(res["cross_log_prob_level_noise"][0], cross[0], rtol=1e-6)
    np.testing.assert_allclose(res["mean_auroc"], np.mean(res["auroc"], axis=1))
    # log p drop at smoothness_sigma = 0.05, which is also a test sigma (index 3).
    np.testing.assert_allclose(res["log_p_drop"]["per_source"], table[:, 0] - table[:, 3],
                               rtol=1e-5, atol=1e-6)
    self.assertTrue(np.all(np.array(res["score_norm"]["per_source"]) > 0))

  def test_run_on_a_workdir_of_checkpoints_is_deterministic(self):
    config = tiny_config()
    config.finetune.sigmas = (0.1, 0.3)  # no checkpoint at 0.3: left out
    with tempfile.TemporaryDirectory() as workdir:
      save_level_checkpoints(config, workdir, self.prior, self.params, (0.0, 0.1))
      results = diagnostics.run(config, workdir)
      with open(os.path.join(workdir, "diagnostics", "flow.json")) as f:
        stored = json.load(f)
      self.assertEqual(stored, json.loads(json.dumps(results)))
      # A second, separately compiled run on restored params: the very same numbers.
      for key in ("npy", "wavs", "shape", "sample_rate"):
        del stored["samples"][key]
      expected = json.loads(json.dumps(self.results))
      self.assertEqual(json.dumps(stored, sort_keys=True), json.dumps(expected, sort_keys=True))
      samples = np.load(os.path.join(workdir, "diagnostics", results["samples"]["npy"]))
      np.testing.assert_array_equal(samples, self.samples)
      self.assertLen(results["samples"]["wavs"][1], 4)
      for wav in results["samples"]["wavs"][1]:
        self.assertGreater(os.path.getsize(os.path.join(workdir, "diagnostics", wav)), 44)

  def test_bad_fields_are_named(self):
    config = tiny_config()
    config.diagnostics.num_examples = 1000
    with self.assertRaisesRegex(ValueError, "diagnostics.num_examples=1000"):
      diagnostics.test_examples(config)
    config = tiny_config()
    config.diagnostics.noise_stds = (-1.0,)
    with self.assertRaisesRegex(ValueError, "diagnostics.noise_stds"):
      diagnostics.diagnose(config, self.prior, self.params, (0.0, 0.1), self.data)


class RunErrorsTest(absltest.TestCase):

  def test_missing_noiseless_checkpoint_is_a_clear_error(self):
    with tempfile.TemporaryDirectory() as workdir:
      with self.assertRaisesRegex(FileNotFoundError, "--mode=train"):
        diagnostics.run(tiny_config(), workdir)


class WriteSamplesTest(absltest.TestCase):

  def test_writes_clipped_16_bit_wavs_and_leaves_no_temporary_file(self):
    samples = np.linspace(-2.0, 2.0, 2 * 1 * 2 * 16, dtype=np.float32).reshape(2, 1, 2, 16)
    with tempfile.TemporaryDirectory() as base:
      npy, wavs = diagnostics.write_samples(base, "flow", samples, (0.0, 0.1), ("a",), 8000)
      np.testing.assert_array_equal(np.load(os.path.join(base, npy)), samples)
      self.assertLen(wavs, 2)
      for level, level_wavs in enumerate(wavs):
        self.assertLen(level_wavs, 2)
        for n, wav in enumerate(level_wavs):
          info = soundfile.info(os.path.join(base, wav))
          self.assertEqual((info.format, info.subtype, info.samplerate), ("WAV", "PCM_16", 8000))
          audio, _ = soundfile.read(os.path.join(base, wav), dtype="float32")
          np.testing.assert_allclose(audio, np.clip(samples[level, 0, n], -1, 1), atol=1e-4)
      names = [f for _, _, files in os.walk(base) for f in files]
      self.assertEmpty([f for f in names if "tmp" in f], names)


if __name__ == "__main__":
  absltest.main()
