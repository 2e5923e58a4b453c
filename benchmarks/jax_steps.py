"""The JAX work that the benchmarks time, built from the project's own functions.

Two ways to run the same pure functions over K stacked priors:

  vmapped        `train.make_train_step` compiled by `train.compile_train_step` on one
                 device (training.prior_devices=1), the K priors `jax.vmap`-ed (their
                 matmuls batched over K);
  prior_sharded  one prior per device of a `prior` mesh axis of K devices (on a CPU:
                 jax_num_cpu_devices >= K, set before JAX starts): for a train step,
                 exactly what `--mode=train` compiles with training.prior_devices=K (XLA
                 partitions the vmapped step over K, no collectives); for a score, the
                 layout of `--mode=separate` with training.prior_devices=K. K programs
                 that XLA:CPU runs concurrently.

Each builder returns (run, compiled): run() does one call and waits for it (a train step
carries its donated state from call to call); compiled is the XLA executable
(cost_analysis, memory_analysis).
"""
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from audiosep_jax import priors
from audiosep_jax import train
from audiosep_jax.data import pipeline


def train_inputs(config, batch, seed):
  """(prior, optimizer, host train state [K, ...]) for config.model/optim, initialised on
  batch [B, K, T] with jax.random.key(seed)."""
  prior = priors.build(config.model)
  optimizer = train.make_optimizer(config.optim, config.training.num_steps)
  state = train.create_train_state(prior, optimizer, jax.random.key(seed), jnp.asarray(batch))
  return prior, optimizer, jax.device_get(state)


def _stepper(compiled, state, batch):
  holder = [state]

  def run():
    holder[0], metrics = compiled(holder[0], batch)
    jax.block_until_ready(metrics)

  return run


def _prior_mesh(prior_devices):
  """The training mesh of one data device and prior_devices devices of `prior`."""
  if len(jax.devices()) < prior_devices:
    raise ValueError(f"{prior_devices} prior devices wanted, JAX sees {len(jax.devices())}; "
                     f"on a CPU set jax_num_cpu_devices={prior_devices} before JAX starts.")
  return train.make_mesh(prior_devices, prior_devices)


def _train_step(prior, optimizer, host_state, batch, prior_devices):
  """The project's train step as `--mode=train` compiles it on one data device and
  prior_devices devices of the `prior` axis; batch [B, K, T] numpy."""
  mesh = _prior_mesh(prior_devices)
  state = train.place_state(host_state, mesh)
  batch = jax.device_put(batch, pipeline.batch_sharding(mesh))
  compiled = train.compile_train_step(train.make_train_step(prior, optimizer), mesh,
                                      state).lower(state, batch).compile()
  return _stepper(compiled, state, batch), compiled


def vmapped_train_step(prior, optimizer, host_state, batch):
  """The train step on one device, the K priors vmapped (training.prior_devices=1)."""
  return _train_step(prior, optimizer, host_state, batch, 1)


def prior_sharded_train_step(prior, optimizer, host_state, batch):
  """The same step, one prior per device (training.prior_devices=K)."""
  return _train_step(prior, optimizer, host_state, batch, batch.shape[1])


def _total_log_prob(prior, sigma):
  def total(params, x):
    return jnp.sum(priors.stacked_level_log_prob(prior, params, x, sigma))
  return total


def _caller(compiled, *args):
  return lambda: jax.block_until_ready(compiled(*args))


def _score(prior, host_params, x, sigma, prior_devices):
  """The Langevin inner step's model work, (sum log p, d/dx) of x [B, K, T], jitted with
  params and x split over the `prior` axis of prior_devices devices (as `--mode=separate`
  lays out its score; the sum over the priors is its one cross-device reduction)."""
  mesh = _prior_mesh(prior_devices)
  params = jax.device_put(host_params, NamedSharding(mesh, PartitionSpec(train.PRIOR_AXIS)))
  x = jax.device_put(x, pipeline.batch_sharding(mesh))
  score = jax.jit(jax.value_and_grad(_total_log_prob(prior, sigma), argnums=1))
  compiled = score.lower(params, x).compile()
  return _caller(compiled, params, x), compiled


def vmapped_score(prior, host_params, x, sigma):
  """The score on one device, the K priors vmapped."""
  return _score(prior, host_params, x, sigma, 1)


def prior_sharded_score(prior, host_params, x, sigma):
  """The same score, one prior per device."""
  return _score(prior, host_params, x, sigma, x.shape[1])
