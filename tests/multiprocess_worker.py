"""One process of tests/test_multiprocess.py: rows of a batch split over all processes.

  JAX_NUM_CPU_DEVICES=2 JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT JAX_NUM_PROCESSES=2 \
      JAX_PROCESS_ID=I python tests/multiprocess_worker.py OUT

Joins the run that the environment describes (`distributed.initialize`), then, on the
`data` mesh of every device of every process, runs `distributed.map_rows` on a per-row
random function of ROWS rows (padded to a multiple of the device count) and records which
rows of a `shard_rows` batch live on this process; then, on a mesh whose `prior` axis
holds every device of every process, places a train batch [B, K, T] that every process
holds (`distributed.place_host_array`) and records which sources live here and the batch
gathered back from all processes. Writes OUT.<process index>.npz.
"""
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from audiosep_jax import distributed

ROWS = 5
SHAPE = (ROWS, 3, 7)
SCALE = 0.5
SEED = 7
NUM_LEVELS = 2
TRAIN_BATCH_SHAPE = (2, 4, 7)


def inputs():
  """The host batch [ROWS, 3, 7] that every process holds."""
  return np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE) / 10.0


def row_fn(key, scale, x):
  """x [B, 3, 7] -> (x * scale + N(0, 1) [B, 3, 7], {'level': [L], 'total': [L, B]})."""
  rows = x * scale + jax.random.normal(key, x.shape)
  totals = jnp.stack([jnp.sum(rows, axis=(1, 2)) * (level + 1) for level in range(NUM_LEVELS)])
  return rows, {"level": jnp.arange(NUM_LEVELS, dtype=jnp.float32), "total": totals}


OUT_AXES = (0, {"level": None, "total": 1})


def train_batch():
  """The host train batch [2, K=4, 7] that every process holds."""
  size = np.prod(TRAIN_BATCH_SHAPE)
  return (np.arange(size).reshape(TRAIN_BATCH_SHAPE) / size).astype(np.float32)


def main(argv):
  if len(argv) != 1:
    raise SystemExit(f"usage: {sys.argv[0]} OUT")
  cluster = distributed.initialize(timeout_s=120)
  # After initialize: importing priors computes a jnp constant, which starts the backend.
  from audiosep_jax import train  # pylint: disable=g-import-not-at-top
  from audiosep_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  mesh = train.make_mesh()
  apply = distributed.map_rows(row_fn, mesh, out_axes=OUT_AXES)
  rows, trace = apply(jax.random.key(SEED), np.float32(SCALE), inputs())
  sharded, count = distributed.shard_rows(inputs(), mesh)
  local_rows = sorted(row for shard in sharded.addressable_shards
                      for row in range(*shard.index[0].indices(sharded.shape[0])))
  prior_mesh = train.make_mesh(0, jax.device_count())
  placed = distributed.place_host_array(train_batch(), pipeline.batch_sharding(prior_mesh))
  local_sources = sorted(source for shard in placed.addressable_shards
                         for source in range(*shard.index[1].indices(placed.shape[1])))
  gathered = multihost_utils.process_allgather(placed, tiled=True)
  np.savez(f"{argv[0]}.{jax.process_index()}.npz", rows=rows, level=trace["level"],
           total=trace["total"], local_rows=np.array(local_rows), count=count,
           padded=sharded.shape[0], process_count=jax.process_count(),
           device_count=jax.device_count(), source=cluster.source,
           mesh_processes=np.array([d.process_index for d in mesh.devices.flat]),
           prior_mesh_shape=np.array(prior_mesh.devices.shape),
           local_sources=np.array(local_sources), gathered=gathered)
  distributed.sync("multiprocess_worker_done")


if __name__ == "__main__":
  main(sys.argv[1:])
