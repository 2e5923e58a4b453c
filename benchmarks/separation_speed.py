"""Separation speed: the compiled scan (config.separation.driver='scan', one compiled call)
against the same Langevin steps driven by a Python loop of one jitted step ('loop'), and
the scan with the priors split over CPU devices ('scan_prior_sharded').

  python benchmarks/separation_speed.py --config=configs/toy_flow.py:demo [--repeats=5]
  JAX_NUM_CPU_DEVICES=4 python benchmarks/separation_speed.py --prior_devices=4 ...

All come from `separation.batch_separator`, what --mode=separate runs: 'scan' and 'loop'
on one device, 'scan_prior_sharded' on a mesh of one data device and --prior_devices
devices of the `prior` axis (what training.prior_devices runs; JAX must see that many
devices). They run the same levels and steps (config.finetune.sigmas,
config.separation.steps_per_level) on the same mixes with the same keys, and must give the
same sources (checked against 'scan'). After a compile run each, they are timed
round-robin; the numbers are the median of `--repeats`. Throughput = seconds of audio
separated (batch x mix_length / sample_rate) per wall-clock second. The priors are
freshly initialised K-source flows (or WaveNets): the work per step does not depend on
training.
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
from audiosep_jax import train  # pylint: disable=g-import-not-at-top,wrong-import-position
from audiosep_jax.data import toy  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import common  # pylint: disable=g-import-not-at-top,wrong-import-position

# Samples that the prior-sharded scan may have apart from the one-device scan.
MAX_FRACTION_APART = 1e-3

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/toy_flow.py:demo", "Experiment config, `path.py:variant`.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs of each driver.")
_PRIOR_DEVICES = flags.DEFINE_integer(
    "prior_devices", 1, "Also time the scan with the priors on this many devices (> 1).")
_OUT = flags.DEFINE_string("out", None, "Optional JSON file for the results.")


def main(argv):
  del argv
  common.warn_without_tcmalloc()
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

  one_device = train.make_mesh(1)
  ways = {"scan": ("scan", one_device), "loop": ("loop", one_device)}
  if _PRIOR_DEVICES.value > 1:
    ways["scan_prior_sharded"] = ("scan", train.make_mesh(_PRIOR_DEVICES.value,
                                                          _PRIOR_DEVICES.value))
  runs = {}
  for name, (driver, mesh) in ways.items():
    config.separation.driver = driver
    separate_batch = separation.batch_separator(config, prior, stacked, sigmas, mesh)
    runs[name] = lambda key, mix, fn=separate_batch: fn(key, mix, None)[0]
  key = jax.random.key(1)
  first_call, outputs = {}, {}
  for name, run in runs.items():
    compile_start = time.perf_counter()
    outputs[name] = np.asarray(jax.block_until_ready(run(key, mix)))
    first_call[name] = time.perf_counter() - compile_start
  scale = float(np.max(np.abs(outputs["scan"])))
  max_diff = {name: float(np.max(np.abs(out - outputs["scan"]))) for name, out in outputs.items()}

  times = {name: [] for name in runs}
  for _ in range(_REPEATS.value):
    for name, run in runs.items():
      times[name].append(common.timed(run, key, mix))
  audio_seconds = sep.batch_size * sep.mix_length / config.data.sample_rate
  medians = {name: statistics.median(t) for name, t in times.items()}
  result = {
      "device": jax.devices()[0].device_kind,
      "machine": common.machine_info(),
      "load_average_1min": os.getloadavg()[0],
      "family": config.model.family,
      "variant": config.get("variant", ""),
      "batch_size": sep.batch_size,
      "mix_length": sep.mix_length,
      "num_sources": len(names),
      "levels": len(sigmas),
      "steps_per_level": sep.steps_per_level,
      "repeats": _REPEATS.value,
      "output_max_abs": scale,
  }
  for name in runs:
    result[f"{name}_seconds_median"] = medians[name]
    result[f"{name}_first_call_seconds"] = first_call[name]
    result[f"{name}_audio_seconds_per_second"] = audio_seconds / medians[name]
    result[f"{name}_max_abs_difference_from_scan"] = max_diff[name]
  result["speedup_scan_over_loop"] = medians["loop"] / medians["scan"]
  if "scan_prior_sharded" in runs:
    result["speedup_prior_sharded_over_scan"] = medians["scan"] / medians["scan_prior_sharded"]
  tolerance = 1e-3 * max(scale, 1.0)
  if "scan_prior_sharded" in runs:
    result["scan_prior_sharded_fraction_beyond_tolerance"] = float(
        np.mean(np.abs(outputs["scan_prior_sharded"] - outputs["scan"]) > tolerance))
  print(json.dumps(result, indent=2))
  # One device: the same program, step for step. Another mesh partitions the matmuls
  # differently, and where the prior's score is steep the Langevin steps amplify that
  # float32 roundoff at a few samples (the demo WaveNet: 8 of 32 768 by up to 2.6e-3
  # with 2 steps per level; 6e-7 everywhere with 1), so there most samples must agree.
  same_device = max(max_diff["scan"], max_diff["loop"])
  if not np.isfinite(same_device) or same_device > tolerance:
    raise RuntimeError(f"The loop disagrees with the scan by up to {same_device} (outputs "
                       f"up to {scale}).")
  if result.get("scan_prior_sharded_fraction_beyond_tolerance", 0.0) > MAX_FRACTION_APART:
    raise RuntimeError(f"The prior-sharded scan disagrees with the scan by more than "
                       f"{tolerance} at {result['scan_prior_sharded_fraction_beyond_tolerance']:.2%}"
                       f" of the samples (max {max_diff['scan_prior_sharded']}).")
  if _OUT.value:
    common.write_json(_OUT.value, result)


if __name__ == "__main__":
  app.run(main)
