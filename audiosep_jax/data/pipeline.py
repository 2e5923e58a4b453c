"""Batches for the train step and the fixed test set, whatever the dataset.

config.data.name selects the source: 'toy' (generated on the device, sharded as it is
made) or 'stems' (read on the host by `data/stems.py`, then placed on the mesh).
Batch s is a pure function of (config.seed, s, stream), so a resumed run sees the same
batches as an uninterrupted one.

Random keys: every consumer of jax.random.key(config.seed) first folds in its own tag
(`seed_key`), so that no two consumers can draw from the same key: the training data
(KEY_TAG_DATA, then the stream, then the step) never equals the training init, noise or
sample keys (KEY_TAG_TRAIN, see `train.py`), whatever the stream.
"""
import itertools

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from audiosep_jax import distributed
from audiosep_jax.data import toy

DATASETS = ("toy", "stems")
# Mesh axes: the batch's rows (examples) and its sources (one prior each).
DATA_AXIS = "data"
PRIOR_AXIS = "prior"
# Streams per seed for host-side data: seed and stream combine into one integer seed.
MAX_STREAMS = 1000

# Tags folded into jax.random.key(config.seed), one per consumer (`seed_key`); a new
# consumer takes a new tag here.
KEY_TAG_SEPARATION_MIXES = 0  # separation.run: the test mixes' Langevin noise
KEY_TAG_SEPARATION_FILE = 1   # separation.run: the --input file's
KEY_TAG_DIAGNOSTICS = 4       # diagnostics.run: then fold_in of its own streams
KEY_TAG_DATA = 5              # training batches: then fold_in(stream), then fold_in(step)
KEY_TAG_TRAIN = 6             # train.train_keys: then fold_in(0 init, 1 noise, 2 samples)


def seed_key(seed, tag):
  """The key of one consumer of config.seed: fold_in(key(seed), tag)."""
  return jax.random.fold_in(jax.random.key(seed), tag)


def data_key(seed, stream):
  """The base key of a stream's toy training batches (step s: fold_in(data_key, s))."""
  return jax.random.fold_in(seed_key(seed, KEY_TAG_DATA), stream)


def _check_name(data_config):
  if data_config.name not in DATASETS:
    raise ValueError(
        f"Unknown config.data.name {data_config.name!r}; choose one of {DATASETS}.")


def check_data_config(data_config):
  """Clear errors for a config.data that cannot give batches (an unknown name; for stems,
  what `stems.check_config` checks), before a run writes anything."""
  _check_name(data_config)
  if data_config.name != "toy":
    from audiosep_jax.data import stems  # pylint: disable=g-import-not-at-top
    stems.check_config(data_config)


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
  if data.name == "toy":
    base_key = data_key(config.seed, stream)
    length = data.crop_length
    make = jax.jit(lambda key: toy.sample_sources(key, batch_size, length, data),
                   out_shardings=sharding)
    for step in itertools.count(start_step):
      yield make(jax.random.fold_in(base_key, step))
  else:
    from audiosep_jax.data import stems  # pylint: disable=g-import-not-at-top
    seed = config.seed * MAX_STREAMS + stream
    for host_batch in stems.train_batches(data, batch_size, seed, start_step):
      yield distributed.place_host_array(host_batch, sharding)


def test_set(config):
  """The fixed-seed held-out examples [N, K, T] (numpy, float32)."""
  data = config.data
  _check_name(data)
  if data.name == "toy":
    return np.asarray(toy.test_set(data))
  from audiosep_jax.data import stems  # pylint: disable=g-import-not-at-top
  return np.asarray(stems.test_set(data), np.float32)
