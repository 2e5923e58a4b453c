"""Separation speed: the compiled scan (config.separation.driver='scan', one compiled call)
against the same Langevin steps driven by a Python loop of one jitted step ('loop').

  python benchmarks/separation_speed.py --config=configs/toy_flow.py:demo [--repeats=5]

Both come from `separation.batch_separator`, what --mode=separate runs. They run the
same levels and steps (config.finetune.sigmas, config.separation.steps_per_level) on the
same mixes with the same keys, and must give the same sources (checked). They are timed alternately, after a compile run each; the numbers are the
median of `--repeats`. Throughput = seconds of audio separated (batch x mix_length /
sample_rate) per wall-clock second. The priors are freshly initialised K-source flows
(or WaveNets): the work per step does not depend on training.
"""
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from audiosep_jax import priors  # pylint: disable=g-import-not-at-top,wrong-import-position
from audiosep_jax import separation  # pylint: disable=g-import-not-at-top,wrong-import-position
from audiosep_jax.data import toy  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import common  # pylint: disable=g-import-not-at-top,wrong-import-position

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/toy_flow.py:demo", "Experiment config, `path.py:variant`.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs of each driver.")
_OUT = flags.DEFINE_string("out", None, "Optional JSON file for the results.")


def main(argv):
  del argv
  config = _CONFIG.value
  sep = config.separation
  names = tuple(config.data.source_names)
  sigmas = separation.level_sigmas(config)
  weights = toy.mix_weights(len(names), config.data)
  prior = priors.build(config.model)

  sources = toy.sample_sources(jax.random.key(0), sep.batch_size, sep.mix_length, config.data)
  mix = toy.mix(sources, weights)
  init = jax.jit(lambda key, x: priors.stack_init(prior, key, x))
  stacked = jax.tree.map(lambda *p: jnp.stack(p),
                         *[init(jax.random.key(i), sources) for i in range(len(sigmas))])

  drivers = {}
  for driver in separation.DRIVERS:
    config.separation.driver = driver
    separate_batch = separation.batch_separator(config, prior, stacked, sigmas)
    drivers[driver] = lambda key, mix, fn=separate_batch: fn(key, mix, None)[0]
  scan_separation, loop_separation = drivers["scan"], drivers["loop"]
  key = jax.random.key(1)
  compile_start = time.perf_counter()
  scan_out = jax.block_until_ready(scan_separation(key, mix))
  scan_first = time.perf_counter() - compile_start
  compile_start = time.perf_counter()
  loop_out = jax.block_until_ready(loop_separation(key, mix))
  loop_first = time.perf_counter() - compile_start
  max_diff = float(jnp.max(jnp.abs(scan_out - loop_out)))
  scale = float(jnp.max(jnp.abs(scan_out)))

  scan_times, loop_times = [], []
  for _ in range(_REPEATS.value):
    scan_times.append(common.timed(scan_separation, key, mix))
    loop_times.append(common.timed(loop_separation, key, mix))
  audio_seconds = sep.batch_size * sep.mix_length / config.data.sample_rate
  scan_median, loop_median = statistics.median(scan_times), statistics.median(loop_times)
  result = {
      "device": jax.devices()[0].device_kind,
      "load_average_1min": os.getloadavg()[0],
      "family": config.model.family,
      "variant": config.get("variant", ""),
      "batch_size": sep.batch_size,
      "mix_length": sep.mix_length,
      "num_sources": len(names),
      "levels": len(sigmas),
      "steps_per_level": sep.steps_per_level,
      "repeats": _REPEATS.value,
      "scan_seconds_median": scan_median,
      "loop_seconds_median": loop_median,
      "scan_first_call_seconds": scan_first,
      "loop_first_call_seconds": loop_first,
      "scan_audio_seconds_per_second": audio_seconds / scan_median,
      "loop_audio_seconds_per_second": audio_seconds / loop_median,
      "speedup_scan_over_loop": loop_median / scan_median,
      "max_abs_difference": max_diff,
      "output_max_abs": scale,
  }
  print(json.dumps(result, indent=2))
  if not np.isfinite(max_diff) or max_diff > 1e-3 * max(scale, 1.0):
    raise RuntimeError(f"The scan and the loop disagree by {max_diff} (outputs up to {scale}).")
  if _OUT.value:
    common.write_json(_OUT.value, result)


if __name__ == "__main__":
  app.run(main)
