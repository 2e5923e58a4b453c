"""The work that the benchmarks compare: the cases, their configs, JAX's and PyTorch's
runners.

Shared by `compare_torch.py`, `blas_weight_grad.py` and `residual_stream.py` (no flags
here, so each can import it, and so can the tests).
"""
import statistics
import time
from typing import NamedTuple

from benchmarks import common


class Case(NamedTuple):
  """One comparison: `kind` 'train' (a train step) or 'score' (log p and d/dx)."""
  family: str  # 'flow' | 'wavenet'
  variant: str  # 'paper' | 'demo'
  kind: str
  batch: int
  length: int
  microbatches: int = 1  # JAX only: training.microbatches (the same update)


# K = 4 toy sources in every case. Paper sizes at a CPU-feasible batch and crop, the
# paper's own toy setting where it fits, and the demo variant's batch and crop.
CASES = {
    "flow_paper_train": Case("flow", "paper", "train", 1, 4_096),
    "flow_paper_train_b2": Case("flow", "paper", "train", 2, 16_384),
    "flow_paper_train_full": Case("flow", "paper", "train", 5, 16_384, microbatches=5),
    "flow_demo_train": Case("flow", "demo", "train", 8, 2_048),
    "wavenet_paper_train": Case("wavenet", "paper", "train", 2, 3_075),
    "wavenet_demo_train": Case("wavenet", "demo", "train", 4, 1_024),
    "flow_paper_score": Case("flow", "paper", "score", 1, 16_384),
    "flow_demo_score": Case("flow", "demo", "score", 4, 2_048),
    "wavenet_paper_score": Case("wavenet", "paper", "score", 1, 16_384),
    "wavenet_demo_score": Case("wavenet", "demo", "score", 4, 2_048),
}


def get_config(case):
  """The toy config of case.family and case.variant, with case.microbatches."""
  from configs import toy_flow  # pylint: disable=g-import-not-at-top
  from configs import toy_wavenet  # pylint: disable=g-import-not-at-top
  module = toy_flow if case.family == "flow" else toy_wavenet
  config = module.get_config(case.variant)
  config.training.microbatches = case.microbatches
  return config


def sample_batch(case, config):
  """The case's batch of toy sources, [case.batch, K, case.length], on the host."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from audiosep_jax.data import toy  # pylint: disable=g-import-not-at-top
  return np.asarray(toy.sample_sources(jax.random.key(config.seed), case.batch, case.length,
                                       config.data))


def machine_info(with_torch=True):
  """`common.machine_info()` with the JAX version and, `with_torch`, PyTorch's, for a
  results file. Starts no JAX backend (a parent process must not claim a GPU's memory)."""
  import jax  # pylint: disable=g-import-not-at-top
  info = {**common.machine_info(), "jax": jax.__version__}
  if with_torch:
    import torch  # pylint: disable=g-import-not-at-top
    info["torch"] = torch.__version__
  return info


def time_per_call(fn, min_seconds):
  """Seconds per call of fn(), repeating it until the measurement lasts min_seconds."""
  calls, start = 0, time.perf_counter()
  while True:
    fn()
    calls += 1
    elapsed = time.perf_counter() - start
    if elapsed >= min_seconds:
      return elapsed / calls


def time_alternately(runners, rounds, min_measure_s):
  """{name: [seconds per call, one per round]} of runners {name: fn()}: two warm-up calls
  each, then `rounds` rounds that time one measurement (`time_per_call`) of every runner,
  alternating which goes first."""
  for run in runners.values():
    for _ in range(2):
      run()
  times = {name: [] for name in runners}
  order = list(runners)
  for r in range(rounds):
    for name in (order if r % 2 == 0 else order[::-1]):
      times[name].append(time_per_call(runners[name], min_measure_s))
  return times


def medians(times):
  """{'<name>_s': median, '<name>_all_s': every round} of times {name: [seconds]}."""
  result = {}
  for name, values in times.items():
    result[f"{name}_s"] = statistics.median(values)
    result[f"{name}_all_s"] = values
  return result


def torch_runners(case, config, batch_np, host_params, sigma):
  """{'torch_<n>t': one call of the same work in PyTorch eager with n threads}, for
  n = 1 and n = every core (torch's intra-op threading may help or hurt)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top

  stacked = torch_reference.stacked_from_jax(config.model, host_params)
  batch = torch.from_numpy(np.array(batch_np))
  if case.kind == "train":
    optim = config.optim
    call = torch_reference.make_train_step(stacked, optim.learning_rate, optim.b1, optim.b2,
                                           optim.eps, optim.clip_norm)
  else:
    call = torch_reference.make_score_fn(stacked,
                                         sigma if case.family == "wavenet" else None)
  runners = {}
  for threads in sorted({1, common.num_cores()}):
    def run(threads=threads):
      torch.set_num_threads(threads)
      call(batch)
    runners[f"torch_{threads}t"] = run
  return runners


JAX_RUNNERS = ("jax_map", "jax_vmap", "jax_prior_sharded", "jax_prior_processes")


def add_rates_and_fastest_torch(result, runners):
  """Adds to `result` (with 'samples_per_call' and '<runner>_s' of runners) each JAX
  runner's '<jax>_samples_per_s' and, where PyTorch ran, 'torch_best' (its runner with the
  lowest '_s') and 'torch_s'. Returns (the JAX runners, torch_best or None)."""
  jax_names = [n for n in JAX_RUNNERS if n in runners]
  for jax_name in jax_names:
    result[f"{jax_name}_samples_per_s"] = result["samples_per_call"] / result[f"{jax_name}_s"]
  torch_names = [n for n in runners if n.startswith("torch_")]
  if not torch_names:
    return jax_names, None
  best = min(torch_names, key=lambda n: result[f"{n}_s"])
  result["torch_best"] = best
  result["torch_s"] = result[f"{best}_s"]
  return jax_names, best


def combine_processes(results):
  """One case's results of one layout from several processes -> one result, or the only
  one as it is.

  Each runner's '<runner>_s' is the median over the processes of their medians, and
  '<runner>_all_s' every process's rounds in order (plot_ratios.py pairs them by round).
  The PyTorch runner with the lowest such median is 'torch_best' for every process, and
  'torch_over_<jax>' is the median of the processes' own ratios, each process's PyTorch
  time over its JAX time, with every process's ratio in 'torch_over_<jax>_per_process'.
  """
  if len(results) == 1:
    return results[0]
  runners = [k[:-len("_all_s")] for k in results[0] if k.endswith("_all_s")]
  combined = {k: v for k, v in results[0].items()
              if not k.startswith(tuple(runners)) and not k.startswith("torch_over_")}
  combined["processes"] = len(results)
  for runner in runners:
    combined[f"{runner}_s"] = statistics.median(r[f"{runner}_s"] for r in results)
    combined[f"{runner}_all_s"] = [t for r in results for t in r[f"{runner}_all_s"]]
  combined["jax_compile_s"] = {
      name: statistics.median(r["jax_compile_s"][name] for r in results)
      for name in results[0]["jax_compile_s"]}
  combined["others_busy_fraction"] = max(r["others_busy_fraction"] for r in results)
  jax_names, best = add_rates_and_fastest_torch(combined, runners)
  if best:
    for jax_name in jax_names:
      ratios = [r[f"{best}_s"] / r[f"{jax_name}_s"] for r in results]
      combined[f"torch_over_{jax_name}"] = statistics.median(ratios)
      combined[f"torch_over_{jax_name}_per_process"] = ratios
  return combined


def jax_builder(case, config, batch_np, sigma):
  """(build, the JAX params [K, ...] on the host) of a case: build(prior_loop,
  prior_devices) compiles its JAX work (`jax_steps`: the train step, or the score at
  sigma) with training.prior_loop and separation.prior_loop set to prior_loop (None: the
  config's) on prior_devices devices, and returns (run, compiled): run() does one call and
  waits for it, compiled is the XLA executable."""
  from benchmarks import jax_steps  # pylint: disable=g-import-not-at-top

  prior, optimizer, host_state = jax_steps.train_inputs(config, batch_np, config.seed)

  def build(prior_loop, prior_devices):
    looped = config.copy_and_resolve_references()
    if prior_loop is not None:
      looped.training.prior_loop = looped.separation.prior_loop = prior_loop
    if case.kind == "train":
      return jax_steps.train_step(looped, prior, optimizer, host_state, batch_np,
                                  prior_devices)
    return jax_steps.score(looped, prior, host_state.params, batch_np, sigma, prior_devices)

  return build, host_state.params


def jax_runners(case, config, batch_np, sigma, layout, prior_devices=None):
  """{name: one call of the JAX work}, compile seconds per name, and the JAX params
  [K, ...] on the host. layout 'one_device': 'jax_map' with the priors one after another
  and 'jax_vmap' with them vmapped (training.prior_loop for a train step,
  separation.prior_loop for a score); 'prior_sharded': 'jax_prior_sharded', the priors
  split over prior_devices CPU devices (training.prior_devices; default K, one prior per
  device; the process must have asked for that many devices), each device's priors as the
  config's loops say. All with the case's microbatches (`jax_builder`)."""
  build, host_params = jax_builder(case, config, batch_np, sigma)
  if layout == "one_device":
    builders = {"jax_map": lambda: build("map", 1), "jax_vmap": lambda: build("vmap", 1)}
  else:
    devices = prior_devices or batch_np.shape[1]
    builders = {"jax_prior_sharded": lambda: build(None, devices)}
  runners, compile_s = {}, {}
  for name, make in builders.items():
    start = time.perf_counter()
    runners[name], _ = make()
    compile_s[name] = time.perf_counter() - start
  return runners, compile_s, host_params
