"""Batches for the train step and the fixed test set, whatever the dataset.

config.data.name selects the source: 'toy' (generated on the device, sharded as it is
made) or 'stems' (read on the host by `data/stems.py`, then placed on the mesh).
Batch s is a pure function of (config.seed, s, stream), so a resumed run sees the same
batches as an uninterrupted one.
"""
import itertools

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from audiosep_jax.data import toy

DATASETS = ("toy", "stems")
# Mesh axes: the batch's rows (examples) and its sources (one prior each).
DATA_AXIS = "data"
PRIOR_AXIS = "prior"
# Streams per seed for host-side data: seed and stream combine into one integer seed.
MAX_STREAMS = 1000


def _check_name(data_config):
  if data_config.name not in DATASETS:
    raise ValueError(
        f"Unknown config.data.name {data_config.name!r}; choose one of {DATASETS}.")


def batch_sharding(mesh):
  """A batch [B, K, T] on a ('data', 'prior') mesh (`train.make_mesh`): its rows split
  over `data`, its sources over `prior`."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS, PRIOR_AXIS))


def train_batches(config, start_step, mesh, stream=0):
  """Yields the batches of steps start_step, start_step + 1, ...: [B, K, T] on `mesh`.

  stream: separates the data of runs that share a seed (e.g. noise fine-tuning levels).
  """
  data = config.data
  _check_name(data)
  batch_size = config.training.batch_size
  sharding = batch_sharding(mesh)
  base_key = jax.random.fold_in(jax.random.key(config.seed), stream)
  if data.name == "toy":
    length = data.crop_length
    make = jax.jit(lambda key: toy.sample_sources(key, batch_size, length, data),
                   out_shardings=sharding)
    for step in itertools.count(start_step):
      yield make(jax.random.fold_in(base_key, step))
  else:
    from audiosep_jax.data import stems  # pylint: disable=g-import-not-at-top
    seed = config.seed * MAX_STREAMS + stream
    for host_batch in stems.train_batches(data, batch_size, seed, start_step):
      yield jax.make_array_from_process_local_data(sharding, process_slice(host_batch))


def process_slice(global_batch):
  """This process's rows of a host batch [B, ...] (all of it on one process)."""
  count, index = jax.process_count(), jax.process_index()
  rows = global_batch.shape[0] // count
  return global_batch[index * rows:(index + 1) * rows]


def test_set(config):
  """The fixed-seed held-out examples [N, K, T] (numpy, float32)."""
  data = config.data
  _check_name(data)
  if data.name == "toy":
    return np.asarray(toy.test_set(data))
  from audiosep_jax.data import stems  # pylint: disable=g-import-not-at-top
  return np.asarray(stems.test_set(data), np.float32)
