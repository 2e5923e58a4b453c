"""Four toy oscillator sources (sine, square, sawtooth, triangle), made on the device.

The waveforms are *naive* (not band-limited): each is an exact function of the phase,
evaluated at the sample times, as in the 2020 code. Band-limiting would change the
classes the priors must tell apart (a band-limited square at 1 kHz has only three
harmonics below Nyquist and looks much like a sine). The pitch range stops at piano
key 64.9 (about 1.1 kHz), so the aliased harmonics that naive waveforms produce stay
well below the fundamental in level. Unlike the 2020 code the period is not rounded to
whole samples: the frequency is exactly the drawn one.

Shapes: sources [B, K, T] in the order of `data_config.source_names`, mix [B, T].
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

OSCILLATORS = ("sin", "square", "saw", "triangle")


class OscillatorParams(NamedTuple):
  """What was drawn per example and source, each [B, K]."""
  frequency: jax.Array  # Hz
  phase: jax.Array  # in periods, [0, 1)
  amplitude: jax.Array


def key_to_frequency(piano_key):
  """Piano-key number to Hz: key 49 is A4 = 440 Hz."""
  return 440.0 * 2.0 ** ((piano_key - 49.0) / 12.0)


def oscillator(name, cycles):
  """Unit-amplitude waveform `name` at phase `cycles` (in periods, any shape)."""
  frac = cycles - jnp.floor(cycles)
  if name == "sin":
    return jnp.sin(2.0 * jnp.pi * cycles)
  if name == "square":
    return jnp.where(frac < 0.5, 1.0, -1.0)
  if name == "saw":
    return 2.0 * frac - 1.0
  if name == "triangle":
    return 1.0 - 4.0 * jnp.abs(frac - 0.5)
  raise ValueError(f"Unknown toy source {name!r}; known: {', '.join(OSCILLATORS)}.")


def _check_sources(data_config):
  names = tuple(data_config.source_names)
  unknown = [n for n in names if n not in OSCILLATORS]
  if unknown:
    raise ValueError(
        f"data.source_names has unknown toy sources {unknown}; known: {OSCILLATORS}.")
  return names


def sample_params(key, batch_size, data_config, amplitude=None):
  """Draws pitch, phase and amplitude per example and source: OscillatorParams of [B, K]."""
  num_sources = len(_check_sources(data_config))
  shape = (batch_size, num_sources)
  key_pitch, key_phase, key_amp = jax.random.split(key, 3)
  piano_key = jax.random.uniform(
      key_pitch, shape, minval=data_config.key_low, maxval=data_config.key_high)
  phase = jax.random.uniform(key_phase, shape)
  if amplitude is None:
    amp = jax.random.uniform(
        key_amp, shape, minval=data_config.amplitude_low, maxval=data_config.amplitude_high)
  else:
    amp = jnp.full(shape, amplitude, jnp.float32)
  return OscillatorParams(key_to_frequency(piano_key), phase, amp)


def render(params, length, data_config):
  """Renders OscillatorParams [B, K] to waveforms [B, K, T] (float32)."""
  names = _check_sources(data_config)
  time = jnp.arange(length, dtype=jnp.float32) / data_config.sample_rate
  cycles = params.phase[..., None] + params.frequency[..., None] * time  # [B, K, T]
  waves = jnp.stack([oscillator(n, cycles[:, k]) for k, n in enumerate(names)], axis=1)
  return (params.amplitude[..., None] * waves).astype(jnp.float32)


def sample_sources(key, batch_size, length, data_config, amplitude=None):
  """Random sources [B, K, T]; jit-able with batch_size, length, data_config static.

  amplitude: None draws U(amplitude_low, amplitude_high) per source; a float fixes it.
  """
  params = sample_params(key, batch_size, data_config, amplitude)
  return render(params, length, data_config)


def mix_weights(num_sources, data_config):
  """Mixing weights a_k: [K]; the mean unless data.mix_weights sets them."""
  weights = data_config.get("mix_weights", None)
  if weights is None:
    return jnp.full((num_sources,), 1.0 / num_sources, jnp.float32)
  weights = jnp.asarray(weights, jnp.float32)
  if weights.shape != (num_sources,):
    raise ValueError(
        f"data.mix_weights has {weights.shape[0]} entries for {num_sources} sources.")
  return weights


def mix(sources, weights):
  """sources: [B, K, T], weights: [K] -> mix [B, T] = sum_k a_k s_k."""
  return jnp.einsum("bkt,k->bt", sources, weights)


def test_set(data_config, num_examples=None, length=None):
  """The fixed-seed held-out set [N, K, T] at the test amplitude (data.test_seed)."""
  num_examples = num_examples or data_config.test_size
  length = length or data_config.test_length
  key = jax.random.key(data_config.test_seed)
  return sample_sources(key, num_examples, length, data_config,
                        amplitude=data_config.test_amplitude)
