"""Multi-process runs on JAX's distributed runtime, and batches split over all devices.

Which processes form one run is read, first match wins, from:
  1. the arguments of `initialize`, else the environment variables JAX_COORDINATOR_ADDRESS
     (host:port of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID (any launcher);
  2. a SLURM job step of several tasks (`srun`): SLURM_STEP_NUM_TASKS processes, this one
     SLURM_PROCID, the coordinator JAX_COORDINATOR_ADDRESS (launch/slurm.sbatch sets it
     to the job's first node);
  3. AUDIOSEP_DISTRIBUTED=auto: `jax.distributed.initialize()` with JAX's own cluster
     detection (all workers of a TPU VM slice; SLURM, Open MPI, GKE).
Otherwise the run is one process and nothing is initialized. AUDIOSEP_DISTRIBUTED=off
keeps a process on its own even inside a SLURM step.

In cases 1 and 2 a process uses every device it sees (CUDA_VISIBLE_DEVICES, or SLURM's
per-task GPU binding), or those of JAX_LOCAL_DEVICE_IDS; JAX's SLURM default of one GPU
per task applies only with AUDIOSEP_DISTRIBUTED=auto.

Every process runs the same program on its own devices; arrays span the global `data`
mesh. Host-side batches that every process holds in full (test sets, mixes) are split
over all devices by `shard_rows` (`place_host_array`: in any layout); `map_rows` runs a
per-row function that way.
"""
import os
import socket
from typing import NamedTuple

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

MODE_VARIABLE = "AUDIOSEP_DISTRIBUTED"
MODES = ("", "auto", "off")


class Cluster(NamedTuple):
  """How this process joins a run; source: 'single', 'explicit', 'slurm' or 'auto'."""
  source: str
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None


def _int_variable(value, name):
  try:
    return int(value)
  except (TypeError, ValueError):
    raise ValueError(f"{name}={value!r} is not an integer.") from None


def resolve(coordinator_address=None, num_processes=None, process_id=None, environ=None):
  """The Cluster that the arguments and `environ` (default os.environ) describe."""
  environ = os.environ if environ is None else environ
  mode = environ.get(MODE_VARIABLE, "")
  if mode not in MODES:
    raise ValueError(f"{MODE_VARIABLE}={mode!r}; choose 'auto', 'off' or leave it unset.")
  if mode == "off":
    return Cluster("single")
  coordinator_address = coordinator_address or environ.get("JAX_COORDINATOR_ADDRESS") or None
  if num_processes is None and environ.get("JAX_NUM_PROCESSES"):
    num_processes = _int_variable(environ["JAX_NUM_PROCESSES"], "JAX_NUM_PROCESSES")
  if process_id is None and environ.get("JAX_PROCESS_ID"):
    process_id = _int_variable(environ["JAX_PROCESS_ID"], "JAX_PROCESS_ID")
  if num_processes is not None or process_id is not None:
    return _explicit(coordinator_address, num_processes, process_id)
  step_tasks = environ.get("SLURM_STEP_NUM_TASKS")
  if mode != "auto" and step_tasks and _int_variable(step_tasks, "SLURM_STEP_NUM_TASKS") > 1:
    if "SLURM_PROCID" not in environ:
      raise ValueError("SLURM_STEP_NUM_TASKS is set but SLURM_PROCID is not; start the "
                       "tasks with srun.")
    if not coordinator_address:
      raise ValueError(
          f"A SLURM step of {step_tasks} tasks needs JAX_COORDINATOR_ADDRESS=host:port of "
          f"its first node (launch/slurm.sbatch sets it), or {MODE_VARIABLE}=auto to let "
          f"JAX choose it.")
    return Cluster("slurm", coordinator_address,
                   _int_variable(step_tasks, "SLURM_STEP_NUM_TASKS"),
                   _int_variable(environ["SLURM_PROCID"], "SLURM_PROCID"))
  if mode == "auto":
    return Cluster("auto", coordinator_address)
  return Cluster("single")


def _explicit(coordinator_address, num_processes, process_id):
  if num_processes is None or process_id is None:
    raise ValueError(
        f"A multi-process run needs both the number of processes and this process's id "
        f"(JAX_NUM_PROCESSES={num_processes}, JAX_PROCESS_ID={process_id}).")
  if num_processes < 1 or not 0 <= process_id < num_processes:
    raise ValueError(f"JAX_PROCESS_ID={process_id} must be in [0, JAX_NUM_PROCESSES="
                     f"{num_processes}).")
  if num_processes == 1:
    return Cluster("single")
  if not coordinator_address or ":" not in coordinator_address:
    raise ValueError(
        f"JAX_COORDINATOR_ADDRESS={coordinator_address!r}: a run of {num_processes} "
        f"processes needs host:port of process 0.")
  return Cluster("explicit", coordinator_address, num_processes, process_id)


def initialize(coordinator_address=None, num_processes=None, process_id=None, environ=None,
               timeout_s=300):
  """Joins the run that `resolve` finds; call once, before any JAX computation.

  Returns the Cluster. A single process initializes nothing; a second call is a no-op.
  timeout_s: how long to wait for the other processes to connect.
  """
  cluster = resolve(coordinator_address, num_processes, process_id, environ)
  if cluster.source == "single" or jax.distributed.is_initialized():
    return cluster
  # Known processes: JAX's cluster detection must not override them (nor pick the GPUs).
  detection = None if cluster.source == "auto" else "deactivate"
  jax.distributed.initialize(coordinator_address=cluster.coordinator_address,
                             num_processes=cluster.num_processes,
                             process_id=cluster.process_id,
                             cluster_detection_method=detection,
                             initialization_timeout=timeout_s)
  logging.info("Joined a run of %d processes as process %d (%s): %d of %d devices here.",
               jax.process_count(), jax.process_index(), cluster.source,
               jax.local_device_count(), jax.device_count())
  return cluster


def free_local_port():
  """A TCP port on 127.0.0.1 that is free now: the coordinator's, for a run of processes
  on this host (launch/cpu_processes.sh, the tests, benchmarks/prior_processes.py)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def is_primary():
  """True on the process that writes logs, configs, reports and other files (process 0)."""
  return jax.process_index() == 0


def sync(name):
  """Waits until every process got here (a no-op on one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def pad_rows(x, multiple):
  """x [B, ...] -> ([B', ...], B) with B' the next multiple of `multiple`; the padding
  repeats the last row, so that per-row functions stay finite on it."""
  x = np.asarray(x)
  if x.ndim == 0 or x.shape[0] == 0:
    raise ValueError(f"Cannot split an array of shape {x.shape} into rows.")
  count = x.shape[0]
  extra = -count % multiple
  if extra:
    x = np.concatenate([x, np.repeat(x[-1:], extra, axis=0)], axis=0)
  return x, count


def place_host_array(x, sharding):
  """Host array x, the same on every process -> the global array laid out as `sharding`
  says (any mesh, any layout); each process copies only the blocks of its own devices."""
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def shard_rows(x, mesh):
  """Host batch x [B, ...], the same on every process -> (global array [B', ...] with its
  rows split over the `data` axis of `mesh`, B). B' pads B to a multiple of that axis."""
  padded, count = pad_rows(x, mesh.shape["data"])
  return place_host_array(padded, NamedSharding(mesh, PartitionSpec("data"))), count


def map_rows(fn, mesh, num_batched=1, out_axes=0):
  """fn(*replicated, *batched) computed with the batch split over the `data` axis of mesh.

  The last `num_batched` arguments are host batches [B, ...] with one B (the same on every
  process); the others (params, keys, scalars: host values, or arrays on `mesh` such as
  `train.load_params` gives) are replicated. fn must treat rows
  independently. out_axes: the batch axis of each output, as a prefix of the output
  pytree (like jax.vmap's; None: not batched, e.g. a per-level sigma). Returns a host
  function apply(*args) -> numpy outputs cut to B rows, the same on every process,
  compiled once per shape. Draws of `jax.random` over a leading batch axis do not change
  with the padding, so they equal those of an unsplit batch.
  """
  replicated = NamedSharding(mesh, PartitionSpec())
  jitted = jax.jit(fn, out_shardings=replicated)

  def apply(*args):
    if num_batched < 1 or len(args) < num_batched:
      raise ValueError(f"map_rows: {len(args)} arguments, {num_batched} of them batched.")
    split = len(args) - num_batched
    shapes = [np.shape(x) for x in args[split:]]
    if any(not shape for shape in shapes) or len({shape[0] for shape in shapes}) != 1:
      raise ValueError(f"map_rows: the batched arguments need one leading size, got "
                       f"shapes {shapes}.")
    batched = [shard_rows(x, mesh)[0] for x in args[split:]]
    count, rows = shapes[0][0], batched[0].shape[0]
    outputs = jitted(*args[:split], *batched)

    def unpad(axis, y):
      y = np.asarray(y)
      if axis is None:
        return y
      if y.ndim <= axis or y.shape[axis] != rows:
        raise ValueError(f"map_rows: an output of shape {y.shape} has no batch of {rows} "
                         f"rows on axis {axis}; set out_axes.")
      return np.take(y, np.arange(count), axis=axis)

    return jax.tree.map(lambda axis, sub: jax.tree.map(lambda y: unpad(axis, y), sub),
                        out_axes, outputs, is_leaf=lambda x: x is None)

  return apply
