"""The train step with the priors split over one pinned JAX process per core, against
PyTorch eager and JAX in one process, timed alternately in one run.

  python benchmarks/prior_processes.py [--cases=wavenet_paper_train,flow_paper_train] \
      [--rounds=7] [--group_calls=3] [--out=benchmarks/results/prior_processes.json]

Per case (`cases.CASES`, train cases), two sets of processes, all alive at once, each one
idle (blocked on its stdin) while another measures:

  group   one process per core, pinned to it, with a thread pool of one (NPROC=1) and one
          CPU device, joined by JAX's distributed runtime on a loopback port; the mesh's
          `prior` axis spans all of them (training.prior_devices = cores), each trains
          K / cores priors one after another: the step that `launch/cpu_processes.sh`
          runs. A measurement is --group_calls steps on every process (the same count:
          each step ends in a gather of the metrics across the processes), timed as the
          slowest process's. Runner 'jax_prior_processes'.
  single  one process on every core: 'jax_map', the train step on one device with the
          priors one after another (compare_torch.py's one-device process), and PyTorch
          eager with one and with every thread ('torch_1t', 'torch_<cores>t'); a
          measurement repeats the call until it lasts --min_measure_s.

Each runner is warmed up by two calls, then every round measures each runner once,
alternating the order. The parent drives the children through stdin and stdout: one
command line, one reply line. Reported: the median seconds per step of each runner, the
ratios of PyTorch's best to each JAX runner (> 1: JAX is faster), the per-round ratios
(runners measured next to each other), and how busy other processes kept the CPUs.
"""
import json
import os
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags
from absl import logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import cases  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import common  # pylint: disable=g-import-not-at-top,wrong-import-position

ROLES = ("group", "single")
GROUP_RUNNER = "jax_prior_processes"
# Reply lines start with this, so that the parent skips whatever else a child prints.
REPLY = "REPLY "

_CASES = flags.DEFINE_list("cases", ["wavenet_paper_train", "flow_paper_train"],
                           "Train cases to run (names of cases.CASES).")
_ROUNDS = flags.DEFINE_integer("rounds", 7, "Timed rounds per case (median reported).")
_MIN_MEASURE_S = flags.DEFINE_float(
    "min_measure_s", 0.5, "A single-process measurement repeats the call this long.")
_GROUP_CALLS = flags.DEFINE_integer("group_calls", 3, "Steps per group measurement.")
_OUT = flags.DEFINE_string("out", None, "JSON file for the results (default: print only).")
_CHILD = flags.DEFINE_enum("child", None, ROLES, "Internal: run as this child.")
_CHILD_CASE = flags.DEFINE_string("child_case", None, "Internal: the child's case.")


def reply(value):
  print(REPLY + json.dumps(value), flush=True)


def serve(runners, measure):
  """Child loop: warms each runner {name: fn()} up, replies {'ready': [names]}, then
  answers each stdin line 'measure NAME' with {'seconds': measure(runners[NAME])} until
  'quit' or the end of stdin."""
  for run in runners.values():
    for _ in range(2):
      run()
  reply({"ready": list(runners)})
  for line in sys.stdin:
    command, _, name = line.strip().partition(" ")
    if command == "quit":
      return
    if command != "measure" or name not in runners:
      raise ValueError(f"Unknown command {line.strip()!r}; runners: {list(runners)}.")
    reply({"seconds": measure(runners[name])})


def fixed_calls_per_s(run, calls):
  """Seconds per call of `calls` calls of run()."""
  start = time.perf_counter()
  for _ in range(calls):
    run()
  return (time.perf_counter() - start) / calls


def run_child(role, name):
  """A child process of `role` for case `name`: builds its runners and serves them."""
  case = cases.CASES[name]
  if role == "group":
    from audiosep_jax import distributed  # pylint: disable=g-import-not-at-top
    distributed.initialize()
  import jax  # pylint: disable=g-import-not-at-top
  config = cases.get_config(case)
  batch_np = cases.sample_batch(case, config)
  build, host_params = cases.jax_builder(case, config, batch_np, 0.0)
  if role == "group":
    run, _ = build("map", jax.device_count())
    serve({GROUP_RUNNER: run}, lambda fn: fixed_calls_per_s(fn, _GROUP_CALLS.value))
    return
  run, _ = build("map", 1)
  runners = {"jax_map": run,
             **cases.torch_runners(case, config, batch_np, host_params, 0.0)}
  serve(runners, lambda fn: cases.time_per_call(fn, _MIN_MEASURE_S.value))


class Child:
  """A started child process that answers commands on its stdin with REPLY lines."""

  def __init__(self, command, env, core=None):
    pin = (lambda: os.sched_setaffinity(0, {core})) if core is not None else None
    self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, preexec_fn=pin)

  def send(self, line):
    self.proc.stdin.write(line + "\n")
    self.proc.stdin.flush()

  def receive(self):
    for line in self.proc.stdout:
      if line.startswith(REPLY):
        return json.loads(line[len(REPLY):])
    raise RuntimeError(f"A child exited with {self.proc.wait()} before it replied.")

  def quit(self):
    """Asks the child to exit (a group process then waits for the whole group)."""
    if self.proc.poll() is None:
      try:
        self.send("quit")
      except BrokenPipeError:
        pass

  def wait(self, timeout_s=120):
    """Waits for the child to exit, killing it after timeout_s."""
    try:
      self.proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()


def start_children(name):
  """({'group': [one Child per core], 'single': [Child]}) of case `name`, not yet ready."""
  cores = sorted(os.sched_getaffinity(0))
  base = [sys.executable, os.path.abspath(__file__), f"--child_case={name}",
          f"--group_calls={_GROUP_CALLS.value}", f"--min_measure_s={_MIN_MEASURE_S.value}"]
  from audiosep_jax import distributed  # pylint: disable=g-import-not-at-top
  address = f"127.0.0.1:{distributed.free_local_port()}"
  group = [Child(base + ["--child=group"],
                 dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1", NPROC="1",
                      JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES=str(len(cores)),
                      JAX_PROCESS_ID=str(i)), core)
           for i, core in enumerate(cores)]
  single = [Child(base + ["--child=single"], dict(os.environ, JAX_PLATFORMS="cpu"))]
  return {"group": group, "single": single}


def run_case(name):
  """Times one case's runners alternately: {'<runner>_s', '<runner>_all_s', ratios}."""
  start = common.cpu_snapshot()
  children = start_children(name)
  try:
    runners = {}
    for role, members in children.items():
      for child in members:
        runners.update({runner: role for runner in child.receive()["ready"]})
    times = {runner: [] for runner in runners}
    order = list(runners)
    for r in range(_ROUNDS.value):
      for runner in (order if r % 2 == 0 else order[::-1]):
        members = children[runners[runner]]
        for child in members:
          child.send(f"measure {runner}")
        times[runner].append(max(child.receive()["seconds"] for child in members))
  finally:
    everyone = [child for members in children.values() for child in members]
    for child in everyone:
      child.quit()
    for child in everyone:
      child.wait()
  busy = common.others_busy_fraction(start)
  exit_codes = [child.proc.returncode for child in everyone]
  if any(exit_codes):
    logging.warning("%s: children exited with %s after timing.", name, exit_codes)
  case = cases.CASES[name]
  result = {"case": name, **case._asdict(), "cores": common.num_cores(),
            "samples_per_call": (case.batch * len(cases.get_config(case).data.source_names)
                                 * case.length),
            "group_calls": _GROUP_CALLS.value, "others_busy_fraction": busy,
            "child_exit_codes": exit_codes}
  result.update(cases.medians(times))
  jax_names, best = cases.add_rates_and_fastest_torch(result, list(times))
  for jax_name in jax_names:
    result[f"torch_over_{jax_name}"] = result["torch_s"] / result[f"{jax_name}_s"]
    result[f"torch_over_{jax_name}_per_round"] = [
        t / j for t, j in zip(times[best], times[jax_name])]
  return result


def summary_line(result):
  """One line per case: the median times and the ratios."""
  parts = [f"{result['case']:20s}"]
  parts += [f"{runner} {result[f'{runner}_s']:.3f} s"
            for runner in (GROUP_RUNNER, "jax_map", result["torch_best"])]
  for jax_name in (GROUP_RUNNER, "jax_map"):
    per_round = result[f"torch_over_{jax_name}_per_round"]
    parts.append(f"torch/{jax_name} {result[f'torch_over_{jax_name}']:.2f} "
                 f"(rounds {min(per_round):.2f}-{max(per_round):.2f})")
  parts.append(f"others busy {100 * result['others_busy_fraction']:.0f}%")
  return "  ".join(parts)


def main(argv):
  del argv
  if _CHILD.value:
    run_child(_CHILD.value, _CHILD_CASE.value)
    return
  common.warn_without_tcmalloc()
  bad = [n for n in _CASES.value if n not in cases.CASES or cases.CASES[n].kind != "train"]
  if bad:
    train_cases = [n for n, c in cases.CASES.items() if c.kind == "train"]
    raise ValueError(f"--cases: {bad} are not train cases; choose from {train_cases}.")
  if _GROUP_CALLS.value < 1 or _ROUNDS.value < 1:
    raise ValueError(f"--group_calls={_GROUP_CALLS.value} and --rounds={_ROUNDS.value} "
                     f"must be at least 1.")
  output = {"machine": cases.machine_info(), "results": []}
  for name in _CASES.value:
    result = run_case(name)
    print(summary_line(result), flush=True)
    output["results"].append(result)
    if _OUT.value:
      common.write_json(_OUT.value, output)


if __name__ == "__main__":
  app.run(main)
