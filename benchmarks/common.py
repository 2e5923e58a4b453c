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


def cpu_model():
  """The CPU's model name from /proc/cpuinfo ('' where there is none)."""
  with open("/proc/cpuinfo") as f:
    for line in f:
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  return ""


def machine_info():
  """{'cpu', 'cores', 'xla_flags', 'ld_preload'}: what a CPU timing depends on."""
  return {"cpu": cpu_model(), "cores": num_cores(),
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "ld_preload": os.environ.get("LD_PRELOAD", "")}


def write_json(path, results):
  """Writes results to path as indented JSON, creating its folder."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(results, f, indent=2)
