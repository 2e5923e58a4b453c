"""SI-SDR, SI-SDRi and SDR: an independent implementation, invariances, exact constants."""
import fast_bss_eval
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from audiosep_jax import metrics

LENGTH = 256


def orthogonal_tones(num, length=LENGTH):
  """num zero-mean, mutually orthogonal tones of energy `length` each: [num, length]."""
  t = np.arange(length)
  bins = 3 + 5 * np.arange(num)  # distinct whole numbers of periods
  return np.sqrt(2.0) * np.cos(2 * np.pi * bins[:, None] * t / length).astype(np.float32)


class MetricsTest(absltest.TestCase):

  def test_si_sdr_agrees_with_fast_bss_eval(self):
    rng = np.random.default_rng(0)
    num = 64
    reference = rng.normal(size=(num, 1, LENGTH)) + rng.normal(size=(num, 1, 1))
    snr_db = rng.uniform(-10, 30, size=(num, 1, 1))
    noise = rng.normal(size=(num, 1, LENGTH)) * 10 ** (-snr_db / 20)
    scale = rng.uniform(0.1, 3.0, size=(num, 1, 1)) * rng.choice([-1, 1], size=(num, 1, 1))
    estimate = scale * (reference + noise) + rng.normal(size=(num, 1, 1))
    expected = fast_bss_eval.numpy.si_sdr(reference, estimate, zero_mean=True)
    ours = metrics.si_sdr(jnp.asarray(estimate, jnp.float32), jnp.asarray(reference, jnp.float32))
    self.assertEqual(ours.shape, (num, 1))
    # The drawn SNRs span 40 dB, so the comparison covers easy and hard estimates.
    self.assertGreater(np.ptp(expected), 30.0)
    np.testing.assert_allclose(ours, expected, atol=0.01)

  def test_si_sdr_is_invariant_to_scale_and_offset_of_the_estimate(self):
    rng = np.random.default_rng(1)
    reference = jnp.asarray(rng.normal(size=(3, LENGTH)), jnp.float32)
    estimate = reference + jnp.asarray(rng.normal(size=(3, LENGTH)), jnp.float32)
    base = metrics.si_sdr(estimate, reference)
    for scale in (-3.0, 0.01, 100.0):
      np.testing.assert_allclose(metrics.si_sdr(scale * estimate + 0.5, reference), base,
                                 atol=1e-4)
    # The plain SDR is not scale invariant: 2 s against s has error energy ||s||^2.
    np.testing.assert_allclose(metrics.sdr(2.0 * reference, reference), 0.0, atol=1e-5)

  def test_known_constants_for_orthogonal_equal_power_sources(self):
    num_sources = 4
    tones = orthogonal_tones(num_sources + 1)
    sources = jnp.asarray(tones[:num_sources])[None]  # [1, K, T]
    mix = jnp.mean(sources, axis=1)  # [1, T]
    # Mix against s_k: alpha = 1/K, error = the other K - 1 sources / K.
    mix_db = -10 * np.log10(num_sources - 1)
    np.testing.assert_allclose(metrics.si_sdr(mix[:, None], sources), mix_db, atol=1e-4)
    np.testing.assert_allclose(
        metrics.si_sdr_improvement(jnp.broadcast_to(mix[:, None], sources.shape), sources, mix),
        0.0, atol=1e-4)
    # An error orthogonal to s_k with 1% of its energy: exactly 20 dB, and 20 dB SDR.
    distorted = sources + 0.1 * jnp.asarray(tones[num_sources])
    np.testing.assert_allclose(metrics.si_sdr(distorted, sources), 20.0, atol=1e-3)
    np.testing.assert_allclose(metrics.sdr(distorted, sources), 20.0, atol=1e-3)
    np.testing.assert_allclose(metrics.si_sdr_improvement(distorted, sources, mix),
                               20.0 - mix_db, atol=1e-3)
    # The true sources: the eps-capped exact score minus the mix baseline.
    exact_db = 10 * np.log10(LENGTH / metrics.EPS + metrics.EPS)
    np.testing.assert_allclose(metrics.si_sdr_improvement(sources, sources, mix),
                               exact_db - mix_db, atol=0.01)

  def test_silent_or_constant_estimate_scores_far_below_the_mix(self):
    sources = jnp.asarray(orthogonal_tones(4))[None]  # [1, K, T]
    mix = jnp.mean(sources, axis=1)
    eps_db = 10 * np.log10(metrics.EPS)
    for estimate in (jnp.zeros_like(sources), jnp.full_like(sources, 0.3)):
      result = metrics.separation_metrics(estimate, sources, mix)
      np.testing.assert_allclose(result["si_sdr"], eps_db, atol=0.01)
      np.testing.assert_array_less(result["si_sdri"], -70.0)
    # The plain SDR of silence is 0 dB: its error is the reference itself.
    np.testing.assert_allclose(metrics.sdr(jnp.zeros_like(sources), sources), 0.0, atol=1e-4)

  def test_batched_equals_one_by_one_and_jits(self):
    rng = np.random.default_rng(2)
    references = jnp.asarray(rng.normal(size=(2, 3, LENGTH)), jnp.float32)
    estimates = references + jnp.asarray(rng.normal(size=(2, 3, LENGTH)), jnp.float32)
    mix = jnp.mean(references, axis=1)
    result = jax.jit(metrics.separation_metrics)(estimates, references, mix)
    for name in ("si_sdr", "si_sdri", "sdr", "mix_si_sdr"):
      self.assertEqual(result[name].shape, (2, 3))
      np.testing.assert_allclose(result[f"mean_{name}"], np.mean(result[name], axis=0),
                                 atol=1e-5)
    for b in range(2):
      for k in range(3):
        np.testing.assert_allclose(result["si_sdr"][b, k],
                                   metrics.si_sdr(estimates[b, k], references[b, k]), atol=1e-4)
        np.testing.assert_allclose(result["mix_si_sdr"][b, k],
                                   metrics.si_sdr(mix[b], references[b, k]), atol=1e-4)
    np.testing.assert_allclose(result["si_sdri"], result["si_sdr"] - result["mix_si_sdr"],
                               atol=1e-4)

  def test_bad_shapes_are_clear_errors(self):
    references = jnp.zeros((2, 3, 16))
    with self.assertRaisesRegex(ValueError, r"estimates \(2, 2, 16\)"):
      metrics.separation_metrics(jnp.zeros((2, 2, 16)), references, jnp.zeros((2, 16)))
    with self.assertRaisesRegex(ValueError, r"mix \(2, 8\)"):
      metrics.separation_metrics(references, references, jnp.zeros((2, 8)))


if __name__ == "__main__":
  absltest.main()
