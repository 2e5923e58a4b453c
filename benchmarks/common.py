"""Helpers shared by the benchmark scripts: timing, the machine's description, results."""
import json
import os
import resource
import statistics
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


def allocator_warning(ld_preload):
  """A warning for a CPU timing run whose LD_PRELOAD (a string) lacks tcmalloc, else None.

  Without it XLA:CPU's per-step buffers page-fault back from the kernel on every step:
  the paper WaveNet train step took 1.66 s against 1.34 s with tcmalloc (README)."""
  if "tcmalloc" in ld_preload:
    return None
  return (f"LD_PRELOAD={ld_preload!r} has no tcmalloc: JAX's CPU times will be slower than "
          "the README's. Run `source launch/setup_env.sh` first (it preloads tcmalloc).")


def warn_without_tcmalloc():
  """Logs `allocator_warning` of this process's LD_PRELOAD, where there is one."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  message = allocator_warning(os.environ.get("LD_PRELOAD", ""))
  if message:
    logging.warning(message)


def median_time(fn, repeats):
  """(median, all) seconds of `repeats` calls of fn() after one warm-up call."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times), times


def matmul_peak(size, repeats):
  """GFLOP/s of an N x N float32 matmul in JAX and (where installed) torch, with as many
  threads as this process has cores, and their maximum ('peak_gflops')."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  flops = 2.0 * size ** 3
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  jax_s, _ = median_time(lambda: matmul(a, b).block_until_ready(), repeats)
  result = {"matmul_size": size, "jax_gflops": flops / jax_s / 1e9}
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    torch = None
  if torch is not None:
    torch.set_num_threads(num_cores())
    ta, tb = torch.randn(size, size), torch.randn(size, size)
    torch_s, _ = median_time(lambda: torch.mm(ta, tb), repeats)
    result["torch_gflops"] = flops / torch_s / 1e9
  result["peak_gflops"] = max(v for k, v in result.items() if k.endswith("_gflops"))
  return result


def cpu_snapshot():
  """(busy jiffies of all CPUs since boot from /proc/stat, all jiffies, CPU seconds of
  this process's waited-for children): the start of `others_busy_fraction`."""
  with open("/proc/stat") as f:
    fields = [int(v) for v in f.readline().split()[1:]]
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  total = sum(fields[:8])
  return total - fields[3] - fields[4], total, usage.ru_utime + usage.ru_stime


def others_busy_fraction(start):
  """The fraction of all CPUs that other processes kept busy since `cpu_snapshot()`
  returned `start`: the busy time less this process's children that have been waited for
  since (call it after waiting for them)."""
  busy0, total0, children0 = start
  busy1, total1, children1 = cpu_snapshot()
  own = (children1 - children0) * os.sysconf("SC_CLK_TCK")
  return max(0.0, (busy1 - busy0 - own) / max(total1 - total0, 1))


def write_json(path, results):
  """Writes results to path as indented JSON, creating its folder."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(results, f, indent=2)
