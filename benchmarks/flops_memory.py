"""How close the flow train step is to the machine: FLOP/s against a measured matmul peak,
and peak memory with and without rematerialisation.

  python benchmarks/flops_memory.py [--parts=flops,memory] [--budget_gib=8] \
      [--out=benchmarks/results/flops_memory.json]

flops   In one process: a float32 matmul (`--matmul_size`, JAX and torch, median of
        `--repeats`) gives the machine's peak; then the paper-architecture flow train step
        (`train.step_from_config`) is timed at each `--flops_settings` (batch x crop,
        K = 4 priors, remat, microbatches), three ways (`jax_steps`): on one device with
        the priors one after another (training.prior_loop='map', the default) and
        vmapped, and prior-sharded over `--prior_devices` CPU devices (4: one prior
        each; 2: one device per core of this machine, two priors each). FLOPs of the
        step: an analytic count of every convolution (`flow_train_flops`: forward, and
        twice that for the input and weight gradients), cross-checked with XLA's
        `cost_analysis()['flops']` of the vmapped step (a scan's body is counted once; the
        prior-sharded executable reports one device's share). Achieved =
        analytic FLOPs / median step time, also as a fraction of the matmul peak. With
        remat the step recomputes each flow's forward pass; those FLOPs are not counted
        (model FLOPs, not hardware FLOPs).
memory  Every setting in a fresh subprocess that builds the step, runs 2 steps and reports
        the process's peak resident memory, VmHWM from /proc/self/status (python, the
        framework, XLA's compilation, parameters, optimizer state, activations), and the
        step's own memory: for JAX the compiled step's buffers from `memory_analysis()`
        (temporaries + arguments), for torch the peak above the resident memory before
        the model was built. Settings (`MEMORY_WAYS`): JAX vmapped with and without remat
        (`config.model.remat`), JAX with the priors one after another, and torch, at
        `--memory_batches` x `--memory_length`; then, for each way, the largest batch
        whose step memory stays under `--budget_gib` (`largest_batch`). Then the paper's
        batch (`--paper_batch`) with one example per microbatch
        (training.microbatches), priors one after another, on one device and on
        `--prior_devices` CPU devices (training.prior_devices; XLA's buffers of all
        devices together).
"""
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import common  # pylint: disable=g-import-not-at-top,wrong-import-position

_PARTS = flags.DEFINE_list("parts", ["flops", "memory"], "Which parts to run.")
_VARIANT = flags.DEFINE_string("variant", "paper", "configs/toy_flow.py variant to measure.")
_MATMUL_SIZE = flags.DEFINE_integer("matmul_size", 4096, "N of the N x N x N matmul.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats (median reported).")
_FLOPS_SETTINGS = flags.DEFINE_list(
    "flops_settings", ["1x4096:false:1", "5x16384:false:5"],
    "Flow train steps to time, `batch x crop : remat : microbatches`.")
_PRIOR_DEVICES = flags.DEFINE_integer(
    "prior_devices", common.NUM_PRIOR_DEVICES,
    "CPU devices of the prior-sharded runs (training.prior_devices): a divisor of K = 4.")
_PAPER_BATCH = flags.DEFINE_integer("paper_batch", 5, "The paper's batch (memory part).")
_MEMORY_BATCHES = flags.DEFINE_list("memory_batches", ["1", "2"],
                                    "Batches at which all three ways are measured.")
_MEMORY_LENGTH = flags.DEFINE_integer("memory_length", 16_384, "Crop of the memory runs.")
_BUDGET_GIB = flags.DEFINE_float("budget_gib", 8.0, "Memory budget for the largest batch.")
_MAX_GIB = flags.DEFINE_float(
    "max_gib", 12.0, "Settings predicted above this are not run (shared machine).")
_OUT = flags.DEFINE_string("out", None, "JSON file for the results (default: print only).")
_CHILD = flags.DEFINE_string("child", None, "Internal: 'jax' | 'torch' memory run.")
_CHILD_BATCH = flags.DEFINE_integer("child_batch", 1, "Internal: batch of the memory run.")
_CHILD_REMAT = flags.DEFINE_bool("child_remat", False, "Internal: remat of the memory run.")
_CHILD_PRIOR_LOOP = flags.DEFINE_string("child_prior_loop", "vmap",
                                        "Internal: training.prior_loop of the memory run.")
_CHILD_MICROBATCHES = flags.DEFINE_integer(
    "child_microbatches", 1, "Internal: training.microbatches of the memory run.")
_CHILD_PRIOR_DEVICES = flags.DEFINE_integer(
    "child_prior_devices", 1, "Internal: training.prior_devices (CPU devices) of the run.")
_CHILD_STEPS = flags.DEFINE_integer("child_steps", 2, "Internal: steps of the JAX memory run.")
_CHILD_OUT = flags.DEFINE_string("child_out", None, "Internal: the child's JSON file.")

GIB = 2.0 ** 30


def flow_config(remat=False, prior_loop="map", microbatches=1):
  """configs/toy_flow.py at --variant (K = 4 toy priors), remat on or off, the priors run
  as prior_loop says, the batch in `microbatches` chunks."""
  from configs import toy_flow  # pylint: disable=g-import-not-at-top
  config = toy_flow.get_config(_VARIANT.value)
  config.model.remat = remat
  config.training.prior_loop = prior_loop
  config.training.microbatches = microbatches
  return config


def flow_forward_macs_per_sample(model_config):
  """Multiply-adds of one prior's forward pass per input sample, every convolution.

  Block i works on 2 ** (i + 1) channels at T / 2 ** (i + 1) steps; each coupling's
  WaveNet maps half of them through input 1x1, n_layers x (dilated conv width -> 2 width,
  residual and skip 1x1; the residual and the skip are two matmuls, and the last layer's
  residual, whose output nothing reads, is dropped by the compiler and not counted:
  models/wavenet.py ResidualLayer), and the head (1x1 width -> width, 1x1 width ->
  channels).
  """
  m = model_config
  w = m.width
  macs = 0.0
  for i in range(m.n_blocks):
    channels = 2 ** (i + 1)
    per_step = (channels // 2) * w
    per_step += m.n_layers * (m.kernel_size * w * 2 * w + w * w) + (m.n_layers - 1) * w * w
    per_step += w * w + w * channels
    macs += m.n_flows * per_step / 2 ** (i + 1)
  return macs


def flow_train_flops(model_config, num_sources, batch, length):
  """FLOPs of one train step's convolutions: forward plus input and weight gradients."""
  forward = 2.0 * flow_forward_macs_per_sample(model_config) * num_sources * batch * length
  return 3.0 * forward


def toy_batch(config, batch, length):
  """A toy batch [batch, K, length] of config.data's sources (numpy, key 0)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from audiosep_jax.data import toy  # pylint: disable=g-import-not-at-top
  return np.asarray(toy.sample_sources(jax.random.key(0), batch, length, config.data))


def parse_setting(text):
  """'5x16384:false:5' -> (5, 16384, False, 5); remat and microbatches may be left out."""
  shape, _, rest = text.partition(":")
  remat, _, microbatches = rest.partition(":")
  batch, _, length = shape.partition("x")
  return (int(batch), int(length), remat.strip().lower() in ("1", "true", "yes"),
          int(microbatches or 1))


def time_flow_step(batch, length, remat, microbatches, repeats, prior_devices):
  """Compiles and times the paper flow train step (`jax_steps.train_step`) on one device
  with the priors one after another ('map') and vmapped, and prior-sharded over
  prior_devices devices; FLOPs from XLA and analytically."""
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import jax_steps  # pylint: disable=g-import-not-at-top

  config = flow_config(remat, "map", microbatches)
  vmap_config = flow_config(remat, "vmap", microbatches)
  num_sources = len(config.data.source_names)
  data = toy_batch(config, batch, length)
  prior, optimizer, host_state = jax_steps.train_inputs(config, data, seed=1)
  analytic = flow_train_flops(config.model, num_sources, batch, length)
  result = {"batch": batch, "length": length, "num_sources": num_sources, "remat": remat,
            "microbatches": microbatches, "prior_devices": prior_devices,
            "analytic_flops": analytic}
  builders = {"map": (config, 1), "vmapped": (vmap_config, 1)}
  if jax.device_count() >= prior_devices:
    builders["prior_sharded"] = (config, prior_devices)
  for name, (step_config, devices) in builders.items():
    start = time.perf_counter()
    run, compiled = jax_steps.train_step(step_config, prior, optimizer, host_state, data,
                                         devices)
    compile_s = time.perf_counter() - start
    step_s, all_s = common.median_time(run, repeats)
    result[name] = {"compile_s": compile_s, "step_s": step_s, "all_step_s": all_s,
                    "xla_flops": compiled.cost_analysis()["flops"],
                    "achieved_gflops": analytic / step_s / 1e9}
    del run, compiled
  return result


def flops_part(settings, matmul_size, repeats, prior_devices):
  peak = common.matmul_peak(matmul_size, repeats)
  print(f"matmul peak: {peak}", flush=True)
  steps = []
  for text in settings:
    result = time_flow_step(*parse_setting(text), repeats, prior_devices)
    for name in ("map", "vmapped", "prior_sharded"):
      if name not in result:
        continue
      timing = result[name]
      timing["fraction_of_peak"] = timing["achieved_gflops"] / peak["peak_gflops"]
      print(f"flow step {text} {name}: {timing['step_s']:.3f} s, "
            f"{timing['achieved_gflops']:.1f} GFLOP/s = {100 * timing['fraction_of_peak']:.1f}% "
            f"of peak (analytic {result['analytic_flops'] / 1e9:.1f} GFLOP, XLA "
            f"{timing['xla_flops'] / 1e9:.1f})", flush=True)
    steps.append(result)
  return {"peak": peak, "steps": steps}


# Memory --------------------------------------------------------------------------------


def vm_status():
  """{'VmHWM': bytes, 'VmRSS': bytes} of this process."""
  out = {}
  with open("/proc/self/status") as f:
    for line in f:
      key, _, value = line.partition(":")
      if key in ("VmHWM", "VmRSS"):
        out[key] = int(value.split()[0]) * 1024
  return out


def jax_memory_child(batch, length, remat, prior_loop, microbatches, prior_devices, steps):
  """Builds and runs `steps` paper flow train steps; the process's peak and XLA's
  buffers. step_bytes: the compiled step's temporaries and arguments (its outputs alias
  the donated state), on all prior_devices devices together."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_num_cpu_devices", prior_devices)
  from benchmarks import jax_steps  # pylint: disable=g-import-not-at-top

  baseline = vm_status()["VmRSS"]
  config = flow_config(remat, prior_loop, microbatches)
  data = toy_batch(config, batch, length)
  run, compiled = jax_steps.train_step(
      config, *jax_steps.train_inputs(config, data, seed=1), data, prior_devices)
  analysis = compiled.memory_analysis()  # one device's share
  for _ in range(steps):
    run()
  return {"baseline_bytes": baseline, "peak_bytes": vm_status()["VmHWM"],
          "step_bytes": prior_devices * (analysis.temp_size_in_bytes
                                         + analysis.argument_size_in_bytes),
          "xla_temp_bytes": prior_devices * analysis.temp_size_in_bytes,
          "xla_argument_bytes": prior_devices * analysis.argument_size_in_bytes,
          "xla_output_bytes": prior_devices * analysis.output_size_in_bytes}


def torch_memory_child(batch, length):
  """2 steps of the torch reference (one module per prior, Adam); the process's peak."""
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(common.num_cores())
  baseline = vm_status()["VmRSS"]
  config = flow_config()
  optim = config.optim
  num_sources = len(config.data.source_names)
  stacked = torch_reference.Stacked(
      [torch_reference.from_config(config.model) for _ in range(num_sources)])
  step = torch_reference.make_train_step(stacked, optim.learning_rate, optim.b1, optim.b2,
                                         optim.eps, optim.clip_norm)
  data = torch.randn(batch, num_sources, length).clamp(-1.0, 1.0)
  for _ in range(2):
    step(data)
  peak = vm_status()["VmHWM"]
  return {"baseline_bytes": baseline, "peak_bytes": peak, "step_bytes": peak - baseline}


class Way(NamedTuple):
  """How a memory run trains: the framework and, for JAX, remat and config.training's
  prior_loop and microbatches."""
  framework: str  # 'jax' | 'torch'
  remat: bool = False
  prior_loop: str = "vmap"
  microbatches: int = 1
  prior_devices: int = 1  # > 1: that many CPU devices, one process

  def __str__(self):
    if self.framework == "torch":
      return "torch"
    return (f"jax {self.prior_loop} remat={self.remat}"
            + (f" microbatches={self.microbatches}" if self.microbatches > 1 else "")
            + (f" prior_devices={self.prior_devices}" if self.prior_devices > 1 else ""))


MEMORY_WAYS = (Way("jax", False, "vmap"), Way("jax", True, "vmap"), Way("jax", False, "map"),
               Way("torch"))


def measure_memory(way, batch, length, steps=2):
  """Runs one memory setting in a fresh python: {'peak_bytes': ..., 'step_bytes': ...}.
  steps=0 (JAX): compile only, for XLA's buffer sizes."""
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "memory.json")
    command = [sys.executable, os.path.abspath(__file__), f"--child={way.framework}",
               f"--child_batch={batch}", f"--child_remat={way.remat}",
               f"--child_prior_loop={way.prior_loop}",
               f"--child_microbatches={way.microbatches}",
               f"--child_prior_devices={way.prior_devices}", f"--child_steps={steps}",
               f"--memory_length={length}", f"--variant={_VARIANT.value}",
               f"--child_out={out}"]
    subprocess.run(command, check=True, cwd=ROOT)
    with open(out) as f:
      result = json.load(f)
  result.update(way._asdict(), batch=batch, length=length, steps=steps)
  print(f"memory {way} batch {batch}: step {result['step_bytes'] / GIB:.2f} GiB, process "
        f"peak {result['peak_bytes'] / GIB:.2f} GiB"
        f"{' (compiled, not run)' if not steps else ''}", flush=True)
  return result


def largest_batch(way, length, known, budget, max_bytes):
  """Largest batch whose step memory (`step_bytes`) stays under `budget` bytes.

  known: {batch: step bytes} at batches 1 and 2. A line through them predicts the
  answer b (exact for XLA's buffers, which grow linearly with the batch); fresh runs at
  b and b + 1 confirm it (JAX: compiled, not run), stepping down while b does not fit.
  Batches predicted above max_bytes are never run. Returns (batch, confirmed).
  """
  slope = known[2] - known[1]
  if slope <= 0:
    raise ValueError(f"{way}: the step memory does not grow from batch 1 to 2 "
                     f"({known[1]} -> {known[2]} bytes); no line to extrapolate.")
  intercept = known[1] - slope
  steps = 0 if way.framework == "jax" else 2

  def fits(b):
    if b not in known:
      if intercept + slope * b > max_bytes:
        return None
      known[b] = measure_memory(way, b, length, steps)["step_bytes"]
    return known[b] <= budget

  best = max(0, int((budget - intercept) // slope))
  while best > 0 and not fits(best):
    best -= 1
  if best == 0:
    return 0, True
  return best, fits(best + 1) is False


def memory_part(batches, length, budget_gib, max_gib, paper_batch, prior_devices):
  budget, max_bytes = budget_gib * GIB, max_gib * GIB
  same_batch, largest = [], []
  for way in MEMORY_WAYS:
    known = {}
    for batch in batches:
      result = measure_memory(way, batch, length)
      same_batch.append(result)
      known[batch] = result["step_bytes"]
    if 1 in known and 2 in known:
      best, confirmed = largest_batch(way, length, known, budget, max_bytes)
      largest.append({**way._asdict(), "length": length, "budget_gib": budget_gib,
                      "largest_batch": best, "next_batch_checked": confirmed,
                      "step_gib": {b: v / GIB for b, v in sorted(known.items())}})
      print(f"largest batch under {budget_gib} GiB of step memory, {way}: "
            f"{best}{'' if confirmed else ' (the next batch was not run: over --max_gib)'}",
            flush=True)
  paper = [measure_memory(way, paper_batch, length) for way in (
      Way("jax", False, "map", paper_batch),
      Way("jax", False, "map", paper_batch, prior_devices))]
  return {"same_batch": same_batch, "largest_batch": largest, "paper_batch": paper}


def main(argv):
  del argv
  if _CHILD.value:
    if _CHILD.value == "jax":
      result = jax_memory_child(_CHILD_BATCH.value, _MEMORY_LENGTH.value, _CHILD_REMAT.value,
                                _CHILD_PRIOR_LOOP.value, _CHILD_MICROBATCHES.value,
                                _CHILD_PRIOR_DEVICES.value, _CHILD_STEPS.value)
    elif _CHILD.value == "torch":
      result = torch_memory_child(_CHILD_BATCH.value, _MEMORY_LENGTH.value)
    else:
      raise ValueError(f"--child must be 'jax' or 'torch', got {_CHILD.value!r}.")
    common.write_json(_CHILD_OUT.value, result)
    return
  common.warn_without_tcmalloc()
  unknown = [p for p in _PARTS.value if p not in ("flops", "memory")]
  if unknown:
    raise ValueError(f"--parts: unknown {unknown}; choose from flops, memory.")
  results = common.machine_info()
  if "flops" in _PARTS.value:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_num_cpu_devices", _PRIOR_DEVICES.value)
    results["flops"] = flops_part(_FLOPS_SETTINGS.value, _MATMUL_SIZE.value, _REPEATS.value,
                                  _PRIOR_DEVICES.value)
    write_results(results)
  if "memory" in _PARTS.value:
    batches = [int(b) for b in _MEMORY_BATCHES.value]
    results["memory"] = memory_part(batches, _MEMORY_LENGTH.value, _BUDGET_GIB.value,
                                    _MAX_GIB.value, _PAPER_BATCH.value, _PRIOR_DEVICES.value)
    write_results(results)


def write_results(results):
  """Writes what has been measured so far to --out (if given)."""
  if _OUT.value:
    common.write_json(_OUT.value, results)


if __name__ == "__main__":
  app.run(main)
