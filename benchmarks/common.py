"""Helpers shared by the benchmark scripts: timing, the machine's description, results."""
import json
import os
import time

# CPU devices the prior-sharded JAX steps ask for (jax_num_cpu_devices): one per toy source.
NUM_PRIOR_DEVICES = 4


def timed(fn, *args):
  """Seconds of one call fn(*args), waiting for JAX's asynchronous results."""
  import jax  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def num_cores():
  """CPU cores this process may use."""
  return len(os.sched_getaffinity(0))


def _cpuinfo_field(name):
  """The first value of field `name` in /proc/cpuinfo ('' where there is none)."""
  with open("/proc/cpuinfo") as f:
    for line in f:
      key, _, value = line.partition(":")
      if key.strip() == name:
        return value.strip()
  return ""


def cpu_model():
  """The CPU's model name from /proc/cpuinfo ('' where there is none)."""
  return _cpuinfo_field("model name")


def cpu_family_model():
  """'family F model M' from /proc/cpuinfo: which generation a bare model name such as
  'AMD EPYC' is (family 25 model 17: Zen 4)."""
  return f"family {_cpuinfo_field('cpu family')} model {_cpuinfo_field('model')}"


def machine_info():
  """{'cpu', 'cpu_family_model', 'cores', 'xla_flags', 'ld_preload'}: what a CPU timing
  depends on."""
  return {"cpu": cpu_model(), "cpu_family_model": cpu_family_model(), "cores": num_cores(),
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "ld_preload": os.environ.get("LD_PRELOAD", "")}


def write_json(path, results):
  """Writes results to path as indented JSON, creating its folder."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(results, f, indent=2)
