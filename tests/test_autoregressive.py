"""Autoregressive WaveNet prior: causality, receptive field, densities, cached sampler,
training."""
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from scipy import special
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

  def test_log_ndtr_lower_matches_float64_on_both_sides_of_the_series(self):
    t = np.array([0.0, 0.3, 1.0, 4.0, 9.99, 10.0, 10.01, 13.0, 40.0, 1e3])
    got = ar.log_ndtr_lower(jnp.asarray(t, jnp.float32))
    np.testing.assert_allclose(got, special.log_ndtr(-t), rtol=1e-6)


def bin_log_masses_float64(target, sigma, edges):
  """log of each bin's N(target, sigma^2) mass in float64 from scipy's tails: [n]."""
  lower, upper = (edges[:-1] - target) / sigma, (edges[1:] - target) / sigma
  with np.errstate(divide="ignore"):  # each branch is finite where it is used
    left = stats.norm.logcdf(upper) + np.log1p(
        -np.exp(stats.norm.logcdf(lower) - stats.norm.logcdf(upper)))
    right = stats.norm.logsf(lower) + np.log1p(
        -np.exp(stats.norm.logsf(upper) - stats.norm.logsf(lower)))
    middle = np.log(stats.norm.cdf(upper) - stats.norm.cdf(lower))
  return np.where(upper <= 0, left, np.where(lower >= 0, right, middle))


def smoothed_log_density_float64(log_probs, target, sigma, edges):
  """`ar.smoothed_log_density` in float64: log_probs [n], target scalar -> scalar."""
  log_mass = bin_log_masses_float64(target, sigma, edges)
  return special.logsumexp(log_probs - np.log(np.diff(edges)) + log_mass)


class SmoothedDensityTest(parameterized.TestCase):

  @parameterized.parameters(("linear", 0.001), ("linear", 0.077), ("linear", 3.0),
                            ("mu_law", 0.01), ("mu_law", 0.5))
  def test_value_and_derivatives_match_float64(self, quantization, sigma):
    bins = ar.make_bins(256, quantization, 255.0)
    edges = ar.bin_edges(256, quantization, 255.0)
    rng = np.random.RandomState(0)
    # Peaked and flat categoricals; targets inside, on bin edges (0 is one), outside, far
    # out (hundreds of sigma at sigma 0.001, where float32 keeps 3-4 digits of the log).
    logits = rng.randn(8, 256) * np.array([[8.0], [0.5]] * 4)
    log_probs = logits - special.logsumexp(logits, axis=1, keepdims=True)
    target = np.array([0.0, 0.3, -0.97, 1.02, -1.4, 1.2, edges[100], 0.5 + 0.3 * sigma],
                      np.float32).astype(np.float64)

    def total(lp, x, s):
      return jnp.sum(ar.smoothed_log_density(lp, x, s, bins))

    value = ar.smoothed_log_density(jnp.asarray(log_probs, jnp.float32),
                                    jnp.asarray(target, jnp.float32), sigma, bins)
    grads = jax.grad(total, argnums=(0, 1, 2))(
        jnp.asarray(log_probs, jnp.float32), jnp.asarray(target, jnp.float32),
        jnp.float32(sigma))
    reference = lambda i, x, s: smoothed_log_density_float64(log_probs[i], x, s, edges)
    step = 1e-4 * sigma
    for i in range(len(target)):
      expected = reference(i, target[i], sigma)
      self.assertAlmostEqual(float(value[i]), expected, delta=5e-5 * max(1.0, abs(expected)))
      # d/d log_probs: each bin's share of the density (to 1e-3: a mu-law centre bin is
      # 1e-4 wide, its mass a difference of two float32 tails at sigma 0.5).
      shares = np.exp(log_probs[i] - np.log(np.diff(edges)) - expected
                      + bin_log_masses_float64(target[i], sigma, edges))
      np.testing.assert_allclose(grads[0][i], shares, rtol=1e-3, atol=1e-6)
      by_target = (reference(i, target[i] + step, sigma)
                   - reference(i, target[i] - step, sigma)) / (2 * step)
      self.assertAlmostEqual(float(grads[1][i]), by_target, delta=2e-3 * max(1.0, abs(by_target)))
    by_sigma = sum((reference(i, target[i], sigma + step) - reference(i, target[i], sigma - step))
                   / (2 * step) for i in range(len(target)))
    self.assertAlmostEqual(float(grads[2]), by_sigma, delta=2e-3 * max(1.0, abs(by_sigma)))


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

  def test_density_is_zero_outside_the_bins_and_training_clips_its_targets(self):
    # The categorical covers [-1, 1]: log_prob is -inf beyond it (finite at +-1), the
    # smoothed density stays finite, and the training loss clips its clean targets.
    x = self.x.at[0, 10].set(1.3).at[0, 11].set(1.0).at[1, 12].set(-1.0)
    log_prob = np.asarray(self.fns.log_prob(self.params, x))
    self.assertEqual(log_prob[0, 10], -np.inf)
    self.assertEqual(int(np.sum(~np.isfinite(log_prob))), 1)
    self.assertTrue(np.all(np.isfinite(self.fns.level_log_prob(self.params, x, 0.01))))
    noisy_log_prob = priors.build(self.config.model).noisy_log_prob
    clipped = np.asarray(noisy_log_prob(self.params, x, x))
    self.assertTrue(np.all(np.isfinite(clipped)))
    expected = self.fns.history_log_prob(self.params, x, jnp.clip(x, -1.0, 1.0))
    np.testing.assert_array_equal(clipped, expected)
    for negative in (-0.1, np.float32(-0.1), jnp.float32(-0.1)):
      with self.assertRaisesRegex(ValueError, "sigma must be >= 0, got -0.1"):
        self.fns.level_log_prob(self.params, x, negative)
    with self.assertRaisesRegex(ValueError, r"takes x \[B, T\], got shape \(64,\)"):
      self.fns.log_prob(self.params, x[0])


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
