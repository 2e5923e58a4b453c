"""Autoregressive WaveNet sampling: the cached sampler against the naive one.

  python benchmarks/ar_sampling.py --config=configs/toy_wavenet.py:paper [--length=16384] \
      [--batch=1] [--naive_steps=16] [--repeats=3] [--out=FILE.json]

cached  `cached_sample_bins`: one `lax.scan` step per sample, per-layer ring buffers,
        timed over the full `--length` samples.
naive   `naive_sample_bins`: every step reruns the whole network on the length-`--length`
        buffer (zeros after the prefix; causality makes them irrelevant). Its per-step
        work is the same for every t, so it is timed over the first `--naive_steps`
        samples and the time for `--length` samples is that per-step time x length.
        (Rerunning on a growing prefix instead would be about half of that.)

Both are jitted, run once to compile, then timed alternately; the numbers are medians of
`--repeats`. Both sample the same bins for the same key (checked on the naive prefix).
One freshly initialised prior: the work per sample does not depend on training.
"""
import json
import os
import statistics
import sys
import time

import jax
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from audiosep_jax.data import toy  # pylint: disable=g-import-not-at-top,wrong-import-position
from audiosep_jax.models import autoregressive  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import common  # pylint: disable=g-import-not-at-top,wrong-import-position

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/toy_wavenet.py:paper", "Experiment config, `path.py:variant`.")
_LENGTH = flags.DEFINE_integer("length", 16_384, "Samples to draw per sequence.")
_BATCH = flags.DEFINE_integer("batch", 1, "Sequences drawn at once.")
_NAIVE_STEPS = flags.DEFINE_integer("naive_steps", 16, "Naive sampler steps timed.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs of each sampler.")
_OUT = flags.DEFINE_string("out", None, "Optional JSON file for the results.")


def main(argv):
  del argv
  common.warn_without_tcmalloc()
  config = _CONFIG.value
  length, batch, naive_steps = _LENGTH.value, _BATCH.value, _NAIVE_STEPS.value
  if not 0 < naive_steps <= length:
    raise ValueError(f"--naive_steps={naive_steps} must be in [1, --length={length}].")
  fns = autoregressive.build(config.model)
  init_x = toy.sample_sources(jax.random.key(0), batch, length, config.data)[:, 0]
  params = fns.init(jax.random.key(config.seed), init_x)
  key = jax.random.key(1)
  cached = jax.jit(lambda p, k: fns.cached_sample_bins(p, k, batch, length))
  naive = jax.jit(lambda p, k: fns.naive_sample_bins(p, k, batch, length, naive_steps))

  start = time.perf_counter()
  cached_bins = jax.block_until_ready(cached(params, key))
  cached_first = time.perf_counter() - start
  start = time.perf_counter()
  naive_bins = jax.block_until_ready(naive(params, key))
  naive_first = time.perf_counter() - start
  same = bool(np.array_equal(np.asarray(cached_bins)[:, :naive_steps],
                             np.asarray(naive_bins)[:, :naive_steps]))

  cached_times, naive_times = [], []
  for _ in range(_REPEATS.value):
    cached_times.append(common.timed(cached, params, key))
    naive_times.append(common.timed(naive, params, key))
  cached_s = statistics.median(cached_times)
  naive_step_s = statistics.median(naive_times) / naive_steps
  naive_s = naive_step_s * length
  results = {
      "config": f"{config.model.family} {config.variant}: {config.model.n_layers} layers, "
                f"dilation cycle {config.model.dilation_cycle}, width {config.model.width}, "
                f"kernel {config.model.kernel_size}, {config.model.num_bins} bins",
      "batch": batch, "length": length, "naive_steps_timed": naive_steps,
      "repeats": _REPEATS.value, "devices": str(jax.devices()),
      "load_average_1min": os.getloadavg()[0],
      "cached_seconds": cached_s, "cached_samples_per_second": batch * length / cached_s,
      "cached_first_call_seconds": cached_first,
      "naive_seconds_per_step": naive_step_s, "naive_seconds_extrapolated": naive_s,
      "naive_first_call_seconds": naive_first,
      "speedup_cached_over_naive": naive_s / cached_s,
      "same_bins_on_naive_prefix": same,
  }
  print(json.dumps(results, indent=2))
  if _OUT.value:
    common.write_json(_OUT.value, results)
  if not same:
    raise SystemExit("The cached and naive samplers drew different bins.")


if __name__ == "__main__":
  app.run(main)
