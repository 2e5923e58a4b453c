"""The JAX work that the benchmarks time, built from the project's own functions.

The K priors run as the config says (`priors.map_priors`): training.prior_loop for a
train step, separation.prior_loop for a score; 'map' one after another on each device,
'vmap' all at once (their matmuls batched over K). On a `prior` mesh axis of
prior_devices devices:

  prior_devices=1  one device, the whole step or score one program;
  prior_devices=K  one prior per device (on a CPU: jax_num_cpu_devices >= K, set before
                   JAX starts): for a train step, exactly what `--mode=train` compiles
                   with training.prior_devices=K (XLA partitions the step over K, no
                   collectives); for a score, the layout of `--mode=separate`. K programs
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


def _on_prior_devices(config, prior_devices):
  """(a copy of config on one data device and prior_devices devices of `prior`, its mesh
  from `train.mesh_from_config`, which checks prior_devices against the K sources)."""
  if len(jax.devices()) < prior_devices:
    raise ValueError(f"{prior_devices} prior devices wanted, JAX sees {len(jax.devices())}; "
                     f"on a CPU set jax_num_cpu_devices={prior_devices} before JAX starts.")
  config = config.copy_and_resolve_references()
  config.training.num_devices = prior_devices
  config.training.prior_devices = prior_devices
  return config, train.mesh_from_config(config)


def train_step(config, prior, optimizer, host_state, batch, prior_devices=1):
  """The project's train step (`train.step_from_config`: config.training's prior_loop and
  microbatches) as `--mode=train` compiles it on one data device and prior_devices
  devices of the `prior` axis; batch [B, K, T] numpy."""
  config, mesh = _on_prior_devices(config, prior_devices)
  state = train.place_state(host_state, mesh)
  batch = jax.device_put(batch, pipeline.batch_sharding(mesh))
  step = train.step_from_config(prior, optimizer, config)
  compiled = train.compile_train_step(step, mesh, state).lower(state, batch).compile()
  return _stepper(compiled, state, batch), compiled


def _caller(compiled, *args):
  return lambda: jax.block_until_ready(compiled(*args))


def score(config, prior, host_params, x, sigma, prior_devices=1):
  """The Langevin inner step's model work, (sum log p, d/dx) of x [B, K, T], the priors
  run as config.separation.prior_loop says, jitted with params and x split over the `prior`
  axis of prior_devices devices (as `--mode=separate` lays out its score; the sum over
  the priors is its one cross-device reduction)."""
  _, mesh = _on_prior_devices(config, prior_devices)
  params = jax.device_put(host_params, NamedSharding(mesh, PartitionSpec(train.PRIOR_AXIS)))
  x = jax.device_put(x, pipeline.batch_sharding(mesh))
  loop = config.separation.prior_loop

  def total_and_score(params, x):
    log_prob, score = priors.stacked_level_score(prior, params, x, sigma, loop, prior_devices)
    return jnp.sum(log_prob), score

  compiled = jax.jit(total_and_score).lower(params, x).compile()
  return _caller(compiled, params, x), compiled
