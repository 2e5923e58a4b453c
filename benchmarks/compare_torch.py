"""JAX against PyTorch eager, timed alternately in one run: train steps and Langevin scores.

  python benchmarks/compare_torch.py [--cases=flow_paper_train,...] [--rounds=7] \
      [--processes=1] [--prior_devices=4] [--sharded_threads=0] \
      [--out=benchmarks/results/compare_torch.json]

Cases (`cases.CASES`): one training step (forward, backward, gradient clipping, Adam) of the
K = 4 toy priors, and the Langevin inner step's model work, the sum of log p over all
sources and its gradient with respect to the input x [B, K, T]. Both frameworks get the
same architecture, the same weights (the JAX init, copied into `torch_reference`), the
same batch of toy data and the same number of threads (every core this process may use).

JAX: the project's own code (`jax_steps`): `train.step_from_config` compiled by
`train.compile_train_step` (donated state), and `priors.stacked_level_score` (log p and
its gradient, each prior's inside the loop over priors), jitted; each on one device
(training.prior_devices=1) with the priors one after another ('map', training.prior_loop's
default) and vmapped ('vmap', separation.prior_loop's default), and prior-sharded: over
`--prior_devices` CPU devices (training.prior_devices; 4 by default, one prior each; the
configs' default loops), in a process whose XLA thread pool `--sharded_threads` may size
(e.g. two single-threaded devices on 2 cores). The paper's own setting
(batch 5) runs with training.microbatches=5 (one example's activations at a time, the
same update; the torch reference keeps every activation). PyTorch: `torch_reference`
(one module per source, Adam foreach), eager.

Every case runs in fresh subprocesses (no state carried between cases), one per layout: the
one-device runs ('map', 'vmap') in a process with one CPU device, the prior-sharded run in
a process with `--prior_devices` CPU devices (a process that asks for more CPU devices runs
its one-device programs slower, benchmarks/README.md); `--processes=N` runs N such
processes per case and layout, one after another, and reports the median over them of each
time and of each process's own ratio (`cases.combine_processes`): on a shared host the same
program's median can differ by 30% from one process to the next (benchmarks/README.md).
Each process times PyTorch as well: warm-up (JAX compile, then 2 calls of each), then
`--rounds` rounds that time one measurement of each runner, alternating which goes first; a
measurement repeats the call until it lasts `--min_measure_s` and reports the time per
call. Reported: the median per call of each runner, and the ratio torch / jax (> 1: JAX is
faster) against the PyTorch times of the same process ('torch_s' of the one-device process,
'sharded_torch_s' of the prior-sharded one), and each JAX runner's samples per second with
the device's model ('jax_device'). On a GPU host (`pip install -e '.[cuda12]'`) the JAX
runs take the GPU: `--notorch` leaves out the PyTorch reference (CPU only here), and the
prior-sharded layout needs `--prior_devices` GPUs (`--noprior_sharded` on one). The parent
also records how busy the machine was with other processes during the case (from
/proc/stat, less the child's own CPU time): timings taken on a busy machine are not
comparable.
"""
import json
import os
import subprocess
import sys
import tempfile

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import cases  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import common  # pylint: disable=g-import-not-at-top,wrong-import-position

# The JAX runs of one child process: one-device ('jax_map', 'jax_vmap') or prior-sharded.
LAYOUTS = ("one_device", "prior_sharded")

_CASES = flags.DEFINE_list("cases", None, "Cases to run (default: all of cases.CASES).")
_ROUNDS = flags.DEFINE_integer("rounds", 7, "Timed rounds per case (median reported).")
_MIN_MEASURE_S = flags.DEFINE_float(
    "min_measure_s", 0.5, "A measurement repeats the call until it lasts this long.")
_SCORE_SIGMA = flags.DEFINE_float(
    "score_sigma", 0.077, "Noise level of the WaveNet's smoothed density in score cases.")
_PRIOR_SHARDED = flags.DEFINE_bool(
    "prior_sharded", True,
    "Also time the JAX work prior-sharded (--prior_devices CPU devices on a CPU host).")
_PRIOR_DEVICES = flags.DEFINE_integer(
    "prior_devices", common.NUM_PRIOR_DEVICES,
    "Devices of the prior-sharded layout (training.prior_devices): K, one prior each, or a "
    "divisor of K (each device's priors one after another, the config's prior_loop).")
_SHARDED_THREADS = flags.DEFINE_integer(
    "sharded_threads", 0,
    "Threads of XLA:CPU's pool in the prior-sharded process, through the NPROC variable "
    "that XLA's CPU client reads (0: XLA's default, every core). With --prior_devices=2 "
    "--sharded_threads=1 a 2-core host runs two devices of single-threaded kernels.")
_TORCH = flags.DEFINE_bool(
    "torch", True, "Also time the PyTorch reference (on the CPU); --notorch on a GPU host, "
    "for JAX's absolute times alone.")
_PROCESSES = flags.DEFINE_integer(
    "processes", 1,
    "Fresh processes per case and layout, one after another: each reported time and ratio "
    "is the median over them (a process pairs its own PyTorch and JAX times).")
_OUT = flags.DEFINE_string("out", None, "JSON file for the results (default: print only).")
_CHILD = flags.DEFINE_string("child", None, "Internal: run this one case and write JSON.")
_CHILD_OUT = flags.DEFINE_string("child_out", None, "Internal: the child's JSON file.")
_CHILD_LAYOUT = flags.DEFINE_enum("child_layout", "one_device", LAYOUTS,
                                  "Internal: the JAX runs of the child.")


def run_case(name, rounds, min_measure_s, score_sigma, layout, with_torch, prior_devices):
  """Times one case's runs of `layout` (and PyTorch's, `with_torch`) in this process:
  {'<runner>_s': median seconds per call, '<jax runner>_samples_per_s', 'jax_device', ...}.
  """
  import jax  # pylint: disable=g-import-not-at-top
  case = cases.CASES[name]
  config = cases.get_config(case)
  num_sources = len(config.data.source_names)
  batch_np = cases.sample_batch(case, config)
  sigma = score_sigma if case.family == "wavenet" else 0.0
  runners, compile_s, host_params = cases.jax_runners(case, config, batch_np, sigma, layout,
                                                      prior_devices)
  if with_torch:
    runners.update(cases.torch_runners(case, config, batch_np, host_params, sigma))
  times = cases.time_alternately(runners, rounds, min_measure_s)
  samples_per_call = case.batch * num_sources * case.length
  result = {"case": name, **case._asdict(), "num_sources": num_sources,
            "threads": common.num_cores(), "jax_device": jax.devices()[0].device_kind,
            "jax_compile_s": compile_s, "samples_per_call": samples_per_call}
  result.update(cases.medians(times))
  jax_names, torch_best = cases.add_rates_and_fastest_torch(result, list(times))
  if torch_best:
    for jax_name in jax_names:
      result[f"torch_over_{jax_name}"] = result["torch_s"] / result[f"{jax_name}_s"]
  return result


def run_in_subprocess(name, extra_args=(), env_overrides=None):
  """Runs one case in a fresh python (its environment updated by env_overrides); adds how
  busy other processes kept the CPUs."""
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "case.json")
    command = [sys.executable, os.path.abspath(__file__), f"--child={name}",
               f"--child_out={out}", *extra_args]
    start = common.cpu_snapshot()
    subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, **(env_overrides or {})})
    busy = common.others_busy_fraction(start)
    with open(out) as f:
      result = json.load(f)
  result["others_busy_fraction"] = busy
  return result


def main(argv):
  del argv
  if _CHILD.value:
    import jax  # pylint: disable=g-import-not-at-top
    if _CHILD_LAYOUT.value == "prior_sharded":
      jax.config.update("jax_num_cpu_devices", _PRIOR_DEVICES.value)
    result = run_case(_CHILD.value, _ROUNDS.value, _MIN_MEASURE_S.value, _SCORE_SIGMA.value,
                      _CHILD_LAYOUT.value, _TORCH.value, _PRIOR_DEVICES.value)
    common.write_json(_CHILD_OUT.value, result)
    return
  common.warn_without_tcmalloc()
  names = _CASES.value or list(cases.CASES)
  unknown = [n for n in names if n not in cases.CASES]
  if unknown:
    raise ValueError(f"--cases: unknown {unknown}; known: {', '.join(cases.CASES)}.")
  child_flags = [f"--rounds={_ROUNDS.value}", f"--min_measure_s={_MIN_MEASURE_S.value}",
                 f"--score_sigma={_SCORE_SIGMA.value}", f"--torch={_TORCH.value}"]
  if _PROCESSES.value < 1:
    raise ValueError(f"--processes must be at least 1, got {_PROCESSES.value}.")
  if _PRIOR_DEVICES.value < 1:
    raise ValueError(f"--prior_devices must be at least 1, got {_PRIOR_DEVICES.value}.")
  if _SHARDED_THREADS.value < 0:
    raise ValueError(f"--sharded_threads must be 0 (XLA's default) or more, got "
                     f"{_SHARDED_THREADS.value}.")
  sharded_flags = [*child_flags, "--child_layout=prior_sharded",
                   f"--prior_devices={_PRIOR_DEVICES.value}"]
  sharded_env = {"NPROC": str(_SHARDED_THREADS.value)} if _SHARDED_THREADS.value else None
  results = []
  for name in names:
    result = cases.combine_processes(
        [run_in_subprocess(name, child_flags) for _ in range(_PROCESSES.value)])
    if _PRIOR_SHARDED.value:
      sharded = cases.combine_processes(
          [run_in_subprocess(name, sharded_flags, sharded_env) for _ in range(_PROCESSES.value)])
      result = merge_sharded(result, sharded)
      result["sharded_prior_devices"] = _PRIOR_DEVICES.value
      result["sharded_threads"] = _SHARDED_THREADS.value
    results.append(result)
    print(summary_line(result), flush=True)
    if _OUT.value:
      common.write_json(_OUT.value, {"machine": cases.machine_info(_TORCH.value),
                                     "results": results})


def merge_sharded(result, sharded):
  """The one-device child's result with the prior-sharded child's JAX times, its own
  PyTorch times under 'sharded_' and its ratio torch / jax_prior_sharded."""
  merged = dict(result)
  for key, value in sharded.items():
    if key.startswith(("jax_prior_sharded_", "torch_over_")):
      merged[key] = value
    elif key.startswith("torch_"):
      merged[f"sharded_{key}"] = value
  merged["jax_compile_s"] = {**result["jax_compile_s"], **sharded["jax_compile_s"]}
  merged["others_busy_fraction"] = max(result["others_busy_fraction"],
                                       sharded["others_busy_fraction"])
  return merged


def summary_line(result):
  """One line per case: the times, the ratios and the layout they came from."""
  parts = [f"{result['case']:22s}"]
  for key in (*cases.JAX_RUNNERS, "torch", "sharded_torch"):
    if f"{key}_s" in result:
      parts.append(f"{key} {result[f'{key}_s']:.3f} s")
  if "torch_best" in result:
    parts.append(f"(torch best: {result['torch_best']})")
  if "sharded_prior_devices" in result:
    threads = result["sharded_threads"]
    pool = f"NPROC={threads}" if threads else "XLA's default threads"
    parts.append(f"(prior-sharded: {result['sharded_prior_devices']} devices, {pool})")
  for key in cases.JAX_RUNNERS:
    if f"torch_over_{key}" in result:
      part = f"torch/{key} {result[f'torch_over_{key}']:.2f}"
      per_process = result.get(f"torch_over_{key}_per_process")
      if per_process:
        part += (f" ({min(per_process):.2f}-{max(per_process):.2f} over "
                 f"{len(per_process)} processes)")
      parts.append(part)
    elif f"{key}_samples_per_s" in result:
      parts.append(f"{key} {result[f'{key}_samples_per_s']:.0f} samples/s")
  parts.append(f"others busy {100 * result['others_busy_fraction']:.0f}%")
  return "  ".join(parts)


if __name__ == "__main__":
  app.run(main)
