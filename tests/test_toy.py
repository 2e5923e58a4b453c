"""Toy oscillators: pitch, amplitude, period, mix, determinism."""
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from audiosep_jax.data import toy
from configs import toy_flow


class ToyDataTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.data = toy_flow.get_config("test").data
    self.length = 2 ** 15
    self.params = toy.sample_params(jax.random.key(0), 6, self.data)
    self.sources = np.asarray(toy.render(self.params, self.length, self.data))

  def test_shapes_and_order(self):
    self.assertEqual(self.sources.shape, (6, 4, self.length))
    self.assertEqual(tuple(self.data.source_names), ("sin", "square", "saw", "triangle"))

  def test_spectrum_peak_is_the_requested_pitch(self):
    rate = self.data.sample_rate
    window = np.hanning(self.length)
    spectrum = np.abs(np.fft.rfft(self.sources * window, axis=-1))
    peak_hz = np.argmax(spectrum, axis=-1) * rate / self.length
    bin_hz = rate / self.length
    np.testing.assert_allclose(peak_hz, np.asarray(self.params.frequency), atol=1.5 * bin_hz)

  def test_pitch_range_is_the_piano_key_range(self):
    params = toy.sample_params(jax.random.key(1), 4096, self.data)
    frequency = np.asarray(params.frequency)
    low = toy.key_to_frequency(self.data.key_low)
    high = toy.key_to_frequency(self.data.key_high)
    self.assertGreaterEqual(frequency.min(), low * (1 - 1e-6))
    self.assertLessEqual(frequency.max(), high * (1 + 1e-6))
    # Uniform in key: the median key is the middle of the range.
    keys = 49 + 12 * np.log2(frequency / 440.0)
    self.assertAlmostEqual(np.median(keys), (self.data.key_low + self.data.key_high) / 2,
                           delta=2.0)

  def test_amplitude(self):
    amplitude = np.asarray(self.params.amplitude)
    self.assertTrue(np.all(amplitude >= self.data.amplitude_low))
    self.assertTrue(np.all(amplitude <= self.data.amplitude_high))
    self.assertTrue(np.all(np.max(np.abs(self.sources), axis=-1) <= amplitude + 1e-6))
    # RMS over many periods: A / sqrt(2), A, A / sqrt(3), A / sqrt(3).
    rms = np.sqrt(np.mean(self.sources ** 2, axis=-1))
    expected = amplitude * np.array([2 ** -0.5, 1.0, 3 ** -0.5, 3 ** -0.5])
    np.testing.assert_allclose(rms, expected, rtol=1e-2)
    fixed = toy.sample_params(jax.random.key(2), 3, self.data, amplitude=1.0)
    np.testing.assert_array_equal(fixed.amplitude, 1.0)

  def test_period(self):
    """Each waveform repeats after sample_rate / f samples; the sine crosses zero 2 f T times."""
    rate = self.data.sample_rate
    duration = self.length / rate
    one_cycle_later = toy.render(self.params._replace(phase=self.params.phase + 1.0),
                                 self.length, self.data)
    difference = np.abs(np.asarray(one_cycle_later) - self.sources)
    # float32 phase: ~1e-4 of a cycle after 2 s; a jump of square/saw may fall on
    # the other side of a sample, so allow a few such samples.
    self.assertLess(np.mean(difference > 5e-3), 1e-3)
    crossings = np.sum(np.diff(np.signbit(self.sources[:, 0]), axis=-1) != 0, axis=-1)
    np.testing.assert_allclose(crossings, 2 * np.asarray(self.params.frequency[:, 0]) * duration,
                               atol=2.0)

  def test_mix_is_the_mean(self):
    weights = toy.mix_weights(4, self.data)
    np.testing.assert_allclose(toy.mix(jnp.asarray(self.sources), weights),
                               self.sources.mean(axis=1), atol=1e-6)

  def test_same_seed_same_data(self):
    a = toy.sample_sources(jax.random.key(7), 2, 256, self.data)
    b = toy.sample_sources(jax.random.key(7), 2, 256, self.data)
    c = toy.sample_sources(jax.random.key(8), 2, 256, self.data)
    np.testing.assert_array_equal(a, b)
    self.assertGreater(float(jnp.max(jnp.abs(a - c))), 0.1)
    np.testing.assert_array_equal(toy.test_set(self.data), toy.test_set(self.data))

  def test_unknown_source_is_a_clear_error(self):
    data = toy_flow.get_config("test").data
    data.source_names = ("sin", "kazoo")
    with self.assertRaisesRegex(ValueError, "kazoo"):
      toy.sample_sources(jax.random.key(0), 1, 16, data)


if __name__ == "__main__":
  absltest.main()
