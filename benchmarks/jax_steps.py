"""The JAX work that the benchmarks time, built from the project's own functions.

Two ways to run the same pure functions over K stacked priors:

  vmapped        as training runs them: `train.make_train_step` compiled by
                 `train.compile_train_step` on a one-device `data` mesh, the K priors
                 `jax.vmap`-ed (their matmuls batched over K);
  prior_sharded  the same step function (or score) inside `jax.shard_map` over a `prior`
                 mesh axis of K devices, one prior per device (on a CPU: jax_num_cpu_devices
                 >= K, set before JAX starts): K independent programs that XLA:CPU runs
                 concurrently.

Each builder returns (run, compiled): run() does one call and waits for it (a train step
carries its donated state from call to call); compiled is the XLA executable
(cost_analysis, memory_analysis).
"""
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from audiosep_jax import priors
from audiosep_jax import train
from audiosep_jax.data import pipeline

PRIOR = "prior"


def prior_mesh(num_priors):
  """A one-axis `prior` mesh over the first num_priors devices."""
  devices = jax.devices()
  if len(devices) < num_priors:
    raise ValueError(f"A prior mesh needs {num_priors} devices, JAX sees {len(devices)}; on "
                     f"a CPU set jax_num_cpu_devices={num_priors} before JAX starts.")
  return Mesh(np.array(devices[:num_priors]), (PRIOR,))


def train_inputs(config, batch, seed):
  """(prior, optimizer, host train state [K, ...]) for config.model/optim, initialised on
  batch [B, K, T] with jax.random.key(seed)."""
  prior = priors.build(config.model)
  optimizer = train.make_optimizer(config.optim, config.training.num_steps)
  state = train.create_train_state(prior, optimizer, jax.random.key(seed), jnp.asarray(batch))
  return prior, optimizer, jax.device_get(state)


def _state_specs(state):
  """P() for the scalar step, P('prior') for every leaf stacked over the priors."""
  return jax.tree.map(lambda v: PartitionSpec() if np.ndim(v) == 0 else PartitionSpec(PRIOR),
                      state)


def _place(tree, mesh, specs):
  return jax.device_put(tree, jax.tree.map(lambda s: NamedSharding(mesh, s), specs))


def _stepper(compiled, state, batch):
  holder = [state]

  def run():
    holder[0], metrics = compiled(holder[0], batch)
    jax.block_until_ready(metrics)

  return run


def vmapped_train_step(prior, optimizer, host_state, batch):
  """The project's train step as training compiles it; batch [B, K, T] numpy."""
  mesh = train.make_mesh(1)
  state = train.replicate(host_state, mesh)
  batch = jax.device_put(batch, pipeline.batch_sharding(mesh))
  compiled = train.compile_train_step(train.make_train_step(prior, optimizer), mesh).lower(
      state, batch).compile()
  return _stepper(compiled, state, batch), compiled


def prior_sharded_train_step(prior, optimizer, host_state, batch):
  """The same step function, one prior per device of a `prior` mesh."""
  mesh = prior_mesh(batch.shape[1])
  specs = _state_specs(host_state)
  per_source = PartitionSpec(None, PRIOR)
  step = jax.shard_map(train.make_train_step(prior, optimizer), mesh=mesh,
                       in_specs=(specs, per_source), out_specs=(specs, PartitionSpec(PRIOR)),
                       check_vma=False)
  state = _place(host_state, mesh, specs)
  batch = jax.device_put(batch, NamedSharding(mesh, per_source))
  compiled = jax.jit(step, donate_argnums=0).lower(state, batch).compile()
  return _stepper(compiled, state, batch), compiled


def _total_log_prob(prior, sigma):
  def total(params, x):
    return jnp.sum(priors.stacked_level_log_prob(prior, params, x, sigma))
  return total


def _caller(compiled, *args):
  return lambda: jax.block_until_ready(compiled(*args))


def vmapped_score(prior, host_params, x, sigma):
  """The Langevin inner step's model work: (sum log p, d/dx) of x [B, K, T], vmapped."""
  mesh = train.make_mesh(1)
  params = train.replicate(host_params, mesh)
  x = jax.device_put(x, pipeline.batch_sharding(mesh))
  score = jax.jit(jax.value_and_grad(_total_log_prob(prior, sigma), argnums=1))
  compiled = score.lower(params, x).compile()
  return _caller(compiled, params, x), compiled


def prior_sharded_score(prior, host_params, x, sigma):
  """The same score, one prior per device; the total summed over the `prior` axis."""
  mesh = prior_mesh(x.shape[1])
  total = _total_log_prob(prior, sigma)

  def local(params, v):
    value, grad = jax.value_and_grad(total, argnums=1)(params, v)
    return jax.lax.psum(value, PRIOR), grad

  per_source = PartitionSpec(None, PRIOR)
  score = jax.shard_map(local, mesh=mesh, in_specs=(PartitionSpec(PRIOR), per_source),
                        out_specs=(PartitionSpec(), per_source))
  params = _place(host_params, mesh, jax.tree.map(lambda _: PartitionSpec(PRIOR), host_params))
  x = jax.device_put(x, NamedSharding(mesh, per_source))
  compiled = jax.jit(score).lower(params, x).compile()
  return _caller(compiled, params, x), compiled
