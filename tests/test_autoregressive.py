"""Autoregressive WaveNet prior: causality, receptive field, densities, cached sampler,
training."""
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from scipy import stats

from audiosep_jax import priors
from audiosep_jax import train
from audiosep_jax.data import toy
from audiosep_jax.models import autoregressive as ar
from configs import default
from configs import toy_wavenet


def build(variant="test", **model_fields):
  config = toy_wavenet.get_config(variant)
  for name, value in model_fields.items():
    config.model[name] = value
  return config, ar.build(config.model)


def sources(config, batch, length, seed=0):
  return toy.sample_sources(jax.random.key(seed), batch, length, config.data)


class QuantizationTest(parameterized.TestCase):

  @parameterized.parameters("linear", "mu_law")
  def test_edges_and_index_agree(self, quantization):
    edges = ar.bin_edges(256, quantization, 255.0)
    self.assertLen(edges, 257)
    np.testing.assert_allclose(edges[[0, -1]], [-1.0, 1.0], atol=1e-12)
    self.assertTrue(np.all(np.diff(edges) > 0))
    bins = ar.make_bins(256, quantization, 255.0)
    index = ar.bin_index(bins.centre, 256, quantization, 255.0)
    np.testing.assert_array_equal(index, np.arange(256))
    inside = jnp.asarray(edges[:-1] + 0.01 * np.diff(edges), jnp.float32)
    np.testing.assert_array_equal(ar.bin_index(inside, 256, quantization, 255.0),
                                  np.arange(256))
    np.testing.assert_array_equal(
        ar.bin_index(jnp.array([-3.0, 3.0]), 256, quantization, 255.0), [0, 255])

  def test_mu_law_round_trip_and_narrow_centre_bins(self):
    x = jnp.linspace(-1.0, 1.0, 101)
    np.testing.assert_allclose(ar.mu_law_decode(ar.mu_law_encode(x, 255.0), 255.0), x,
                               atol=1e-6)
    widths = np.diff(ar.bin_edges(256, "mu_law", 255.0))
    self.assertGreater(widths[0] / widths[128], 100.0)

  def test_bad_quantization_is_named(self):
    config = toy_wavenet.get_config("test")
    config.model.quantization = "log"
    with self.assertRaisesRegex(ValueError, "config.model.quantization='log'"):
      ar.build(config.model)
    config.model.quantization = "linear"
    config.model.num_bins = 1
    with self.assertRaisesRegex(ValueError, "config.model.num_bins"):
      ar.build(config.model)

  def test_log_diff_ndtr_matches_float64_in_both_tails(self):
    a = np.array([-40.0, -3.0, -0.5, 0.2, 5.0, 30.0])
    b = a + np.array([0.5, 1.0, 0.01, 0.3, 2.0, 0.1])
    # float64 reference from scipy's tails: lower tail, straddling 0, upper tail.
    with np.errstate(divide="ignore"):  # each branch is finite where it is used
      lower = stats.norm.logcdf(b) + np.log1p(
          -np.exp(stats.norm.logcdf(a) - stats.norm.logcdf(b)))
      upper = stats.norm.logsf(a) + np.log1p(-np.exp(stats.norm.logsf(b) - stats.norm.logsf(a)))
      middle = np.log(np.abs(stats.norm.cdf(b) - stats.norm.cdf(a)))
    expected = np.where(b <= 0, lower, np.where(a >= 0, upper, middle))
    got = ar.log_diff_ndtr(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    np.testing.assert_allclose(got, expected, rtol=2e-3)


class CausalityTest(parameterized.TestCase):
  """d logits[t] / d x[t'] is exactly zero for t' >= t and for t' < t - R, and nonzero at
  t' = t - 1 and t' = t - R, where R = wavenet.receptive_field(...) of the config."""

  @parameterized.parameters(*default.VARIANTS)
  def test_gradient_support_is_the_receptive_field(self, variant):
    config, fns = build(variant)
    field = ar.receptive_field(fns.settings)
    self.assertEqual(field, 1 + (config.model.kernel_size - 1) * sum(
        2 ** (i % config.model.dilation_cycle) for i in range(config.model.n_layers)))
    length = field + 8
    x = jax.random.uniform(jax.random.key(1), (1, length), minval=-1.0, maxval=1.0)
    params = fns.init(jax.random.key(2), x)
    # Output positions probed: the start, both sides of the receptive field, the end.
    probes = sorted({0, 1, 2, field - 1, field, field + 1, length - 1})
    weights = jax.random.normal(jax.random.key(3), (config.model.num_bins,))

    def projected(t, x):
      return fns.logits(params, x)[0, t] @ weights

    grads = np.asarray(jax.jit(jax.vmap(jax.grad(projected, argnums=1), (0, None)))(
        jnp.array(probes), x))[:, 0]  # [P, T]
    positions = np.arange(length)
    for t, grad in zip(probes, grads):
      outside = (positions >= t) | (positions < t - field)
      self.assertTrue(np.all(grad[outside] == 0.0), f"{variant}: t={t}")
      if t >= 1:
        self.assertNotEqual(grad[t - 1], 0.0)
      if t >= field:
        self.assertNotEqual(grad[t - field], 0.0)

  def test_full_jacobian_is_strictly_lower_triangular(self):
    config, fns = build("test")
    field = ar.receptive_field(fns.settings)
    x = jax.random.uniform(jax.random.key(1), (1, 48), minval=-1.0, maxval=1.0)
    params = fns.init(jax.random.key(2), x)
    jac = np.asarray(jax.jit(jax.jacfwd(lambda v: fns.logits(params, v)[0]))(x))[:, :, 0]  # [T, n, T]
    t, tp = np.meshgrid(np.arange(48), np.arange(48), indexing="ij")
    support = (tp < t) & (tp >= t - field)
    self.assertTrue(np.all(jac.transpose(0, 2, 1)[~support] == 0.0))
    self.assertTrue(np.all(np.any(jac != 0.0, axis=1)[support]))
    del config


class DensityTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.config, self.fns = build("test")
    self.x = sources(self.config, 2, 64)[:, 0]
    self.params = self.fns.init(jax.random.key(1), self.x)

  def test_bin_probabilities_sum_to_one(self):
    probs = jax.nn.softmax(self.fns.logits(self.params, self.x), axis=-1)
    np.testing.assert_allclose(np.sum(np.asarray(probs, np.float64), axis=-1), 1.0, atol=1e-5)

  def last_log_probs(self, fns, grid):
    """log P(bin) of the last sample given its history, broadcast to [1, G, n]."""
    log_probs = jax.nn.log_softmax(fns.logits(self.params, self.x), axis=-1)[0, -1]
    return jnp.broadcast_to(log_probs, (1, grid.shape[0], log_probs.shape[0]))

  @parameterized.parameters("linear", "mu_law")
  def test_density_integrates_to_one(self, quantization):
    _, fns = build("test", quantization=quantization)
    step = 1e-5
    grid = jnp.arange(-1.0 + 0.5 * step, 1.0, step)
    log_density = ar.bin_log_density(self.last_log_probs(fns, grid), grid[None], fns.bins,
                                     256, quantization, 255.0)
    integral = float(np.sum(np.exp(np.asarray(log_density, np.float64))) * step)
    self.assertAlmostEqual(integral, 1.0, delta=1e-3)
    # The same density as log_prob of the full sequence.
    np.testing.assert_allclose(
        fns.log_prob(self.params, self.x)[0, -1],
        ar.bin_log_density(self.last_log_probs(fns, self.x[0, -1:]), self.x[:1, -1:],
                           fns.bins, 256, quantization, 255.0)[0, 0], atol=1e-5)

  @parameterized.parameters(("linear", 0.01), ("mu_law", 0.1))
  def test_smoothed_density_integrates_to_one(self, quantization, sigma):
    _, fns = build("test", quantization=quantization)
    step = 5e-5
    grid = jnp.arange(-1.0 - 8 * sigma, 1.0 + 8 * sigma, step)
    log_density = jax.jit(ar.smoothed_log_density)(self.last_log_probs(fns, grid), grid[None],
                                                   sigma, fns.bins)
    integral = float(np.sum(np.exp(np.asarray(log_density, np.float64))) * step)
    self.assertAlmostEqual(integral, 1.0, delta=2e-3)
    np.testing.assert_allclose(
        fns.level_log_prob(self.params, self.x, sigma)[0, -1],
        ar.smoothed_log_density(self.last_log_probs(fns, self.x[0, -1:]), self.x[:1, -1:],
                                sigma, fns.bins)[0, 0], atol=1e-5)

  def test_smoothed_density_is_the_mixture_it_claims(self):
    sigma = 0.05
    log_probs = jax.nn.log_softmax(self.fns.logits(self.params, self.x), axis=-1)
    # Brute force: integrate the piecewise-uniform density against N(x_t; u, sigma^2).
    u = np.linspace(-1.0, 1.0, 40_001)[:-1] + 2.5e-5
    density_u = np.exp(np.asarray(log_probs[0, 5], np.float64))[
        np.asarray(ar.bin_index(jnp.asarray(u), 256, "linear", 255.0))] / (2.0 / 256)
    target = float(self.x[0, 5])
    kernel = np.exp(-0.5 * ((target - u) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    expected = np.log(np.sum(density_u * kernel) * 5e-5)
    got = self.fns.level_log_prob(self.params, self.x, sigma)[0, 5]
    self.assertAlmostEqual(float(got), expected, delta=1e-3)

  def test_level_log_prob_at_zero_is_log_prob_also_when_traced(self):
    expected = self.fns.log_prob(self.params, self.x)
    np.testing.assert_array_equal(self.fns.level_log_prob(self.params, self.x, 0.0), expected)
    traced = jax.jit(lambda s: self.fns.level_log_prob(self.params, self.x, s))
    np.testing.assert_allclose(traced(jnp.float32(0.0)), expected, atol=1e-6)
    np.testing.assert_allclose(
        traced(jnp.float32(0.05)), self.fns.level_log_prob(self.params, self.x, 0.05),
        atol=1e-5)

  def test_gradients_in_x(self):
    # log_prob: gradient through the history only; the smoothed density also through
    # the target. Both finite, also outside [-1, 1].
    x = self.x.at[0, 10].set(1.3)
    grad_plain = jax.jit(jax.grad(lambda v: self.fns.log_prob(self.params, v)[0, 20]))(x)
    self.assertTrue(np.all(np.isfinite(grad_plain)))
    self.assertEqual(float(grad_plain[0, 20]), 0.0)
    self.assertNotEqual(float(grad_plain[0, 19]), 0.0)
    grad_smooth = jax.jit(jax.grad(
        lambda v: jnp.sum(self.fns.level_log_prob(self.params, v, 0.01))))(x)
    self.assertTrue(np.all(np.isfinite(grad_smooth)))
    self.assertTrue(np.all(grad_smooth != 0.0))
    self.assertLess(float(grad_smooth[0, 10]), 0.0)  # pulled back towards [-1, 1]

  def test_stacked_level_score_is_the_gradient_of_the_summed_density(self):
    # Each prior's gradient taken inside the loop over priors equals the gradient of the
    # sum over all priors, whichever way the priors run.
    x = sources(self.config, 2, 48, seed=1)  # [B, K, T]
    params = priors.stack_init(self.fns, jax.random.key(1), x)
    sigma = jnp.float32(0.05)
    total = lambda v: jnp.sum(priors.stacked_level_log_prob(self.fns, params, v, sigma))
    expected_log_prob = priors.stacked_level_log_prob(self.fns, params, x, sigma)
    expected_score = jax.jit(jax.grad(total))(x)
    self.assertGreater(float(jnp.std(expected_score)), 0.0)
    for loop, groups in (("map", 1), ("map", 2), ("vmap", 1)):
      log_prob, score = jax.jit(lambda v, loop=loop, groups=groups: priors.stacked_level_score(
          self.fns, params, v, sigma, loop, groups))(x)
      np.testing.assert_allclose(log_prob, expected_log_prob, rtol=1e-5, atol=1e-5,
                                 err_msg=loop)
      np.testing.assert_allclose(score, expected_score, rtol=1e-4, atol=1e-5, err_msg=loop)

  def test_log_density_is_log_bin_probability_minus_log_width(self):
    _, fns = build("test", quantization="mu_law")
    log_probs = jax.nn.log_softmax(fns.logits(self.params, self.x), axis=-1)
    index = np.asarray(ar.bin_index(self.x, 256, "mu_law", 255.0))
    edges = ar.bin_edges(256, "mu_law", 255.0)
    expected = (np.take_along_axis(np.asarray(log_probs), index[..., None], -1)[..., 0]
                - np.log(edges[index + 1] - edges[index]))
    np.testing.assert_allclose(fns.log_prob(self.params, self.x), expected, atol=1e-5)


class SamplerTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.config, self.fns = build("test")
    x = sources(self.config, 2, 64)[:, 0]
    self.params = self.fns.init(jax.random.key(1), x)

  def test_step_reproduces_logits(self):
    x = sources(self.config, 3, 40, seed=5)[:, 2]
    expected = self.fns.logits(self.params, x)

    def body(cache, x_prev):
      logits, cache = self.fns.step(self.params, cache, x_prev)
      return cache, logits

    previous = ar.shift_right(x).T  # [T, B]
    _, got = jax.lax.scan(body, ar.init_cache(self.fns.settings, 3), previous)
    np.testing.assert_allclose(got.transpose(1, 0, 2), expected, atol=2e-5)

  def test_cached_sampler_equals_naive_sampler(self):
    batch, length = 3, self.config.diagnostics.sample_length
    key = jax.random.key(7)
    cached = jax.jit(self.fns.cached_sample_bins, static_argnums=(2, 3))(
        self.params, key, batch, length)
    naive = jax.jit(self.fns.naive_sample_bins, static_argnums=(2, 3))(
        self.params, key, batch, length)
    self.assertEqual(cached.shape, (batch, length))
    np.testing.assert_array_equal(cached, naive)
    self.assertGreater(len(np.unique(np.asarray(cached))), 10)
    other = self.fns.cached_sample_bins(self.params, jax.random.key(8), batch, length)
    self.assertFalse(np.array_equal(cached, other))

  def test_sample_returns_bin_centres_through_the_prior(self):
    prior = priors.build(self.config.model)
    stacked = priors.stack_init(prior, jax.random.key(2), sources(self.config, 2, 64))
    samples = priors.stacked_sample(prior, stacked, jax.random.key(3), 2, 32)
    self.assertEqual(samples.shape, (2, 4, 32))
    centres = np.asarray(self.fns.bins.centre)
    self.assertTrue(np.all(np.isin(np.asarray(samples), centres)))
    self.assertIsNone(prior.latent_log_prob)


class TrainingTest(absltest.TestCase):

  def test_training_lowers_the_loss_and_beats_uniform(self):
    config = toy_wavenet.get_config("test")
    prior = priors.build(config.model)
    optimizer = train.make_optimizer(config.optim, 60)
    state = train.create_train_state(prior, optimizer, jax.random.key(1),
                                     sources(config, 4, 256))
    step = jax.jit(train.make_train_step(prior, optimizer))
    losses = []
    for i in range(60):
      state, metrics = step(state, sources(config, 4, 256, seed=100 + i))
      losses.append(np.asarray(metrics["loss"]))
    losses = np.stack(losses)  # [steps, K]
    first, last = losses[:5].mean(axis=0), losses[-5:].mean(axis=0)
    self.assertTrue(np.all(last < first - 0.3), f"first {first}, last {last}")
    # A uniform density on [-1, 1] (8-bit uniform) scores log(1 / 2) nats per sample.
    test_ll = np.mean(priors.stacked_log_prob(prior, state.params,
                                              sources(config, 8, 256, seed=99)), axis=(0, 2))
    self.assertTrue(np.all(test_ll > np.log(0.5) + 0.2), f"{test_ll}")
    np.testing.assert_array_equal(state.skipped, 0)

  def test_noise_finetuning_predicts_clean_samples_from_noisy_history(self):
    config, fns = build("test")
    prior = priors.build(config.model)
    batch = sources(config, 4, 256)
    optimizer = train.make_optimizer(config.optim, 10)
    state = train.create_train_state(prior, optimizer, jax.random.key(1), batch)
    # Sharpen the freshly initialised (nearly uniform) categorical, so that which
    # samples are the targets changes the loss.
    sharpen = lambda path, p: 30.0 * p if "head_out" in jax.tree_util.keystr(path) else p
    state = state.replace(params=jax.tree_util.tree_map_with_path(sharpen, state.params))
    noise, noise_key = train.Noise(0.1), jax.random.key(5)
    _, metrics = jax.jit(train.make_train_step(prior, optimizer, noise, noise_key))(state, batch)
    noisy = train.add_noise(jax.random.fold_in(noise_key, 0), batch, noise)

    def loss(history, target):
      per_source = lambda p, h, t: -jnp.mean(fns.history_log_prob(p, h, t))
      return jax.vmap(per_source, in_axes=(0, 1, 1))(state.params, history, target)

    np.testing.assert_allclose(metrics["loss"], loss(noisy, batch), rtol=1e-5)
    self.assertTrue(np.all(np.abs(loss(noisy, noisy) - metrics["loss"]) > 1e-3))


if __name__ == "__main__":
  absltest.main()
