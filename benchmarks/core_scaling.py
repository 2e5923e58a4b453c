"""How close the JAX step is to the machine, core by core, against PyTorch eager.

  python benchmarks/core_scaling.py [--cases=wavenet_paper_train,flow_paper_train] \
      [--rounds=5] [--out=benchmarks/results/core_scaling.json]

For each case (`cases.CASES`), JAX's work with the priors one after another ('map', the
train step's default) and the PyTorch reference, timed alternately in each process
(`cases.time_alternately`), in three layouts, each in fresh processes:

  one_core   one process pinned to core 0 (`os.sched_setaffinity`), XLA's thread pool of
             one thread (NPROC=1), PyTorch with one thread. Also the N^3 float32 matmul
             peak of that core (`common.matmul_peak`), and a profile of `--profile_calls`
             JAX calls: every kernel's time from jax.profiler's trace, the matmuls' FLOPs
             from the compiled HLO, grouped by matmul shape (`hlo_kernels`). Their GFLOP/s
             against the core's peak say how much better kernels could still gain.
  all_cores  one process on every core, as `compare_torch.py`'s one-device process:
             the layout whose ratio the issue's targets ask for.
  per_core   one pinned, single-threaded process per core, all timing at once (each
             compiles, then waits for the others): the throughput that
             perfect parallelism across the cores would give each framework, `cores`
             steps per median step time, shared caches and memory bandwidth included.

Reported per case: the three layouts' times and PyTorch / JAX ratios, how much each
framework gains from every core over one (one_core time / all_cores time), and the
one-core kernel breakdown. The all-cores step's time over the per_core step-equivalent
is what splitting each kernel over the cores costs against perfect parallelism.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import cases  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import hlo_kernels  # pylint: disable=g-import-not-at-top,wrong-import-position

LAYOUTS = ("one_core", "all_cores", "per_core")

_CASES = flags.DEFINE_list("cases", ["wavenet_paper_train", "flow_paper_train"],
                           "Cases to run (names of cases.CASES).")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Timed rounds per process (median reported).")
_MIN_MEASURE_S = flags.DEFINE_float(
    "min_measure_s", 0.5, "A measurement repeats the call until it lasts this long.")
_SCORE_SIGMA = flags.DEFINE_float(
    "score_sigma", 0.077, "Noise level of the WaveNet's smoothed density in score cases.")
_MATMUL_SIZE = flags.DEFINE_integer("matmul_size", 2048,
                                    "N of the one-core N x N x N peak matmul.")
_PROFILE_CALLS = flags.DEFINE_integer("profile_calls", 2,
                                      "JAX calls traced for the one-core kernel breakdown.")
_OUT = flags.DEFINE_string("out", None, "JSON file for the results (default: print only).")
_CHILD = flags.DEFINE_enum("child", None, LAYOUTS, "Internal: run one layout's process.")
_CHILD_CASE = flags.DEFINE_string("child_case", None, "Internal: the child's case.")
_CHILD_CORE = flags.DEFINE_integer("child_core", -1, "Internal: the core to pin to (-1: all).")
_CHILD_BARRIER = flags.DEFINE_string(
    "child_barrier", None, "Internal: folder where per_core children meet before timing.")
_CHILD_OUT = flags.DEFINE_string("child_out", None, "Internal: the child's JSON file.")


def wait_for_all(barrier, core):
  """per_core children: announce readiness in `barrier`, then wait for the parent's 'go'."""
  with open(os.path.join(barrier, f"ready_{core}"), "w"):
    pass
  while not os.path.exists(os.path.join(barrier, "go")):
    time.sleep(0.05)


def run_child(layout, name, core, barrier):
  """One layout's process: times JAX 'map' and PyTorch alternately; one_core adds the
  matmul peak and the kernel breakdown. Pins itself to `core` (>= 0) before JAX starts."""
  if core >= 0:
    os.sched_setaffinity(0, {core})
    os.environ["NPROC"] = "1"
  case = cases.CASES[name]
  config = cases.get_config(case)
  batch_np = cases.sample_batch(case, config)
  sigma = _SCORE_SIGMA.value if case.family == "wavenet" else 0.0
  build, host_params = cases.jax_builder(case, config, batch_np, sigma)
  start = time.perf_counter()
  run, compiled = build("map", 1)
  compile_s = time.perf_counter() - start
  runners = {"jax_map": run, **cases.torch_runners(case, config, batch_np, host_params, sigma)}
  result = {"case": name, "layout": layout, "core": core, "threads": common.num_cores(),
            "jax_compile_s": compile_s,
            "samples_per_call": case.batch * batch_np.shape[1] * case.length}
  if layout == "per_core":
    wait_for_all(barrier, core)
  times = cases.time_alternately(runners, _ROUNDS.value, _MIN_MEASURE_S.value)
  result.update(cases.medians(times))
  cases.add_rates_and_fastest_torch(result, list(times))
  if layout == "one_core":
    result["matmul_peak"] = common.matmul_peak(_MATMUL_SIZE.value, _ROUNDS.value)
    events, traced_s = hlo_kernels.trace_events(run, _PROFILE_CALLS.value)
    result["traced_step_s"] = traced_s
    result["kernels"] = hlo_kernels.kernel_breakdown(compiled.as_text(), events,
                                                     _PROFILE_CALLS.value)
  return result


def child_command(layout, name, core, out, barrier=None):
  """The command line of one layout's child process (this script with --child)."""
  return [sys.executable, os.path.abspath(__file__), f"--child={layout}",
          f"--child_case={name}", f"--child_core={core}", f"--child_out={out}",
          f"--rounds={_ROUNDS.value}", f"--min_measure_s={_MIN_MEASURE_S.value}",
          f"--score_sigma={_SCORE_SIGMA.value}", f"--matmul_size={_MATMUL_SIZE.value}",
          f"--profile_calls={_PROFILE_CALLS.value}",
          *([f"--child_barrier={barrier}"] if barrier else [])]


def read_json(path):
  """The JSON value in file `path`."""
  with open(path) as f:
    return json.load(f)


def run_layouts(name):
  """{'one_core', 'all_cores': child results, 'per_core': [one per core]} of one case."""
  cores = sorted(os.sched_getaffinity(0))
  with tempfile.TemporaryDirectory() as tmp:
    results = {}
    for layout, core in (("one_core", cores[0]), ("all_cores", -1)):
      out = os.path.join(tmp, f"{layout}.json")
      subprocess.run(child_command(layout, name, core, out), check=True, cwd=ROOT)
      results[layout] = read_json(out)
    barrier = os.path.join(tmp, "barrier")
    os.makedirs(barrier)
    outs = [os.path.join(tmp, f"per_core_{core}.json") for core in cores]
    children = [subprocess.Popen(child_command("per_core", name, core, out, barrier), cwd=ROOT)
                for core, out in zip(cores, outs)]
    while len([f for f in os.listdir(barrier) if f.startswith("ready_")]) < len(cores):
      if any(child.poll() not in (None, 0) for child in children):
        break
      time.sleep(0.1)
    with open(os.path.join(barrier, "go"), "w"):
      pass
    codes = [child.wait() for child in children]
    if any(codes):
      raise RuntimeError(f"per_core children of {name} exited with {codes}")
    results["per_core"] = [read_json(out) for out in outs]
  return results


def summarize(results):
  """The ratios that say where the step stands against the machine and PyTorch."""
  one, every, per_core = results["one_core"], results["all_cores"], results["per_core"]
  cores = len(per_core)
  jax_per_core = statistics.median(r["jax_map_s"] for r in per_core) / cores
  torch_per_core = statistics.median(r["torch_1t_s"] for r in per_core) / cores
  kernels, peak = one["kernels"], one["matmul_peak"]["peak_gflops"]
  dot_gflops = kernels["dot_gflop"] / kernels["dot_ms"] * 1e3
  return {
      "cores": cores,
      "one_core_torch_over_jax": one["torch_1t_s"] / one["jax_map_s"],
      "all_cores_torch_over_jax": every["torch_s"] / every["jax_map_s"],
      "jax_all_cores_speedup": one["jax_map_s"] / every["jax_map_s"],
      "torch_all_cores_speedup": one["torch_1t_s"] / every["torch_s"],
      "per_core_jax_step_s": jax_per_core,
      "per_core_torch_step_s": torch_per_core,
      "per_core_torch_over_jax": torch_per_core / jax_per_core,
      "all_cores_torch_over_per_core_jax": every["torch_s"] / jax_per_core,
      "jax_all_cores_over_per_core": every["jax_map_s"] / jax_per_core,
      "one_core_dot_gflops": dot_gflops,
      "one_core_dot_fraction_of_peak": dot_gflops / peak,
      "one_core_dot_share_of_step": kernels["dot_ms"] / 1e3 / one["traced_step_s"],
      "one_core_other_share_of_step": kernels["other_ms"] / 1e3 / one["traced_step_s"],
  }


def summary_lines(name, results, summary):
  """The printed summary of one case: times and ratios per layout, the one-core kernels."""
  one, every = results["one_core"], results["all_cores"]
  kernels = one["kernels"]
  s = summary
  lines = [
      f"{name}: one core: JAX {one['jax_map_s']:.3f} s, PyTorch {one['torch_1t_s']:.3f} s "
      f"({s['one_core_torch_over_jax']:.2f}x); all {s['cores']} cores: JAX "
      f"{every['jax_map_s']:.3f} s ({s['jax_all_cores_speedup']:.2f}x its one core), PyTorch "
      f"{every['torch_s']:.3f} s ({s['torch_all_cores_speedup']:.2f}x) -> "
      f"{s['all_cores_torch_over_jax']:.2f}x",
      f"  one single-threaded process per core: JAX {s['per_core_jax_step_s']:.3f} s, PyTorch "
      f"{s['per_core_torch_step_s']:.3f} s per step ({s['per_core_torch_over_jax']:.2f}x); "
      f"PyTorch on all cores over it {s['all_cores_torch_over_per_core_jax']:.2f}x; JAX on all "
      f"cores takes {s['jax_all_cores_over_per_core']:.2f}x its time",
      f"  one core, traced {one['traced_step_s']:.3f} s per call: matmul kernels "
      f"{kernels['dot_ms']:.0f} ms ({kernels['dot_gflop']:.1f} GFLOP, "
      f"{s['one_core_dot_gflops']:.1f} GFLOP/s = {100 * s['one_core_dot_fraction_of_peak']:.0f}% "
      f"of the core's {one['matmul_peak']['peak_gflops']:.1f}), other kernels "
      f"{kernels['other_ms']:.0f} ms, outside kernels "
      f"{1e3 * one['traced_step_s'] - kernels['kernel_ms']:.0f} ms"]
  for dot in kernels["dots"][:4]:
    lines.append(f"    {dot['shape']:28s} {dot['kernels']:6.0f} kernels {dot['ms']:8.1f} ms "
                 f"{dot['gflops']:6.1f} GFLOP/s")
  return lines


def main(argv):
  del argv
  if _CHILD.value:
    result = run_child(_CHILD.value, _CHILD_CASE.value, _CHILD_CORE.value,
                       _CHILD_BARRIER.value)
    common.write_json(_CHILD_OUT.value, result)
    return
  common.warn_without_tcmalloc()
  unknown = [n for n in _CASES.value if n not in cases.CASES]
  if unknown:
    raise ValueError(f"--cases: unknown {unknown}; known: {', '.join(cases.CASES)}.")
  if _PROFILE_CALLS.value < 1:
    raise ValueError(f"--profile_calls must be at least 1, got {_PROFILE_CALLS.value}.")
  output = {"machine": cases.machine_info(), "results": []}
  for name in _CASES.value:
    results = run_layouts(name)
    summary = summarize(results)
    print("\n".join(summary_lines(name, results, summary)), flush=True)
    output["results"].append({"case": name, **results, "summary": summary})
    if _OUT.value:
      common.write_json(_OUT.value, output)


if __name__ == "__main__":
  app.run(main)
