"""Training: the optimizer, a pure train-step factory, checkpoints and the loop.

One compiled step trains all K priors: the per-source update (loss, gradient, clipping,
Adam, non-finite guard) is written for one prior and mapped over the stacked params
[K, ...] by `priors.map_priors`, as config.training.prior_loop says: 'map' (the default)
runs each device's priors one after another in a `jax.lax.scan`, 'vmap' all at once.
Either way the priors stay independent (each its own gradient clipping and optimizer
state) and get the same numbers. The step is jitted over a ('data', 'prior') mesh with
`NamedSharding`: the batch's rows split over `data`, the K priors (their state and the
batch's source axis) over `prior`, and XLA partitions the step accordingly; the same
code runs on one device and on many.

Random keys: init, training noise and samples come from
`pipeline.seed_key(config.seed, pipeline.KEY_TAG_TRAIN)` (then fold_in 0, 1, 2), a branch
of their own, apart from the data's (`pipeline.data_key`).
"""
import itertools
import json
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from audiosep_jax import distributed
from audiosep_jax import metric_writer
from audiosep_jax import priors
from audiosep_jax.data import pipeline

DATA_AXIS = pipeline.DATA_AXIS
PRIOR_AXIS = pipeline.PRIOR_AXIS


class TrainState(struct.PyTreeNode):
  """step: scalar; params and opt_state stacked [K, ...]; skipped [K] non-finite updates."""
  step: jax.Array
  params: Any
  opt_state: Any
  skipped: jax.Array


class Noise(NamedTuple):
  """Training noise x + sigma * eps; legacy: the 2020 code's U(0, 1)-scaled, clamped noise."""
  sigma: float = 0.0
  legacy: bool = False


def learning_rate_schedule(optim_config, num_steps):
  """Constant lr, times decay_factor at num_milestones steps evenly spread from
  decay_start_fraction * num_steps to num_steps (the paper: 36% ... 100%).

  The last milestone falls on num_steps itself, which no update reaches (steps are
  0 ... num_steps - 1): only num_milestones - 1 decays take effect (the defaults: x0.6
  at 36%, 52%, 68% and 84%, ending at lr * 0.6**4). Kept so, as in the paper.
  """
  milestones = np.linspace(optim_config.decay_start_fraction * num_steps, num_steps,
                           optim_config.num_milestones)
  boundaries = {}
  for milestone in np.round(milestones).astype(int):
    boundaries[int(milestone)] = boundaries.get(int(milestone), 1.0) * optim_config.decay_factor
  return optax.piecewise_constant_schedule(optim_config.learning_rate, boundaries)


def make_optimizer(optim_config, num_steps):
  """Per-prior optimizer: clip the gradient's global norm, then Adam on the step schedule."""
  return optax.chain(
      optax.clip_by_global_norm(optim_config.clip_norm),
      optax.adam(learning_rate_schedule(optim_config, num_steps), b1=optim_config.b1,
                 b2=optim_config.b2, eps=optim_config.eps))


def create_train_state(prior, optimizer, key, init_batch, params=None):
  """State for K priors; init_batch [B, K, T] drives ActNorm's data-dependent init.

  params: start from these [K, ...] params instead (noise fine-tuning).
  """
  if params is None:
    params = priors.stack_init(prior, key, init_batch)
  num_sources = init_batch.shape[1]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=jax.vmap(optimizer.init)(params),
                    skipped=jnp.zeros((num_sources,), jnp.int32))


def add_noise(key, batch, noise):
  """batch [B, K, T] -> batch + sigma * eps (legacy: sigma * U(0, 1) per example, clamped)."""
  if noise.sigma == 0.0:
    return batch
  key_eps, key_scale = jax.random.split(key)
  eps = jax.random.normal(key_eps, batch.shape, batch.dtype)
  if not noise.legacy:
    return batch + noise.sigma * eps
  scale = jax.random.uniform(key_scale, batch.shape[:2] + (1,), batch.dtype)
  return jnp.clip(batch + noise.sigma * scale * eps, -1.0, 1.0)


def tree_where(condition, new, old):
  return jax.tree.map(lambda n, o: jnp.where(condition, n, o), new, old)


def skip_or_apply(finite, new_opt_state, opt_state):
  """The optimizer state after an update that is applied where `finite`, else skipped: a
  skip keeps the moments (every float leaf) but advances the step counters (optax's
  integer `count` leaves), so that the lr schedule follows the train step, skips or not."""
  return jax.tree.map(
      lambda n, o: n if jnp.issubdtype(n.dtype, jnp.integer) else jnp.where(finite, n, o),
      new_opt_state, opt_state)


def make_train_step(prior, optimizer, noise=Noise(), noise_key=None, prior_loop="map",
                    prior_groups=1, microbatches=1):
  """Returns the pure step(state, batch [B, K, T]) -> (state, metrics of [K]).

  Loss: mean negative log-likelihood in nats per sample, per prior, of the noisy batch
  (`noise`), or of `prior.noisy_log_prob(clean, noisy)` where the prior defines it. A
  prior whose loss or gradient is not finite keeps its params and Adam moments and counts
  a skip (`skip_or_apply`: its schedule still advances). The K priors run as
  `priors.map_priors(loop=prior_loop, groups=prior_groups)` says (default 'map', as
  config.training.prior_loop's); microbatches > 1 splits the batch into that many chunks
  of B // microbatches examples (example i in chunk i % microbatches) and averages their
  losses and gradients one chunk after another (`jax.lax.scan`): the same update with
  1/microbatches of the activations.
  """
  noise_key = jax.random.key(0) if noise_key is None else noise_key

  def loss_fn(params, clean, noisy):
    if prior.noisy_log_prob is not None:
      return -jnp.mean(prior.noisy_log_prob(params, clean, noisy))
    return -jnp.mean(prior.log_prob(params, noisy))

  def loss_and_grads(params, clean, noisy):
    """clean, noisy: [microbatches, B // microbatches, T]."""
    if microbatches == 1:
      return jax.value_and_grad(loss_fn)(params, clean[0], noisy[0])

    def accumulate(total, chunk):
      loss, grads = jax.value_and_grad(loss_fn)(params, *chunk)
      return jax.tree.map(jnp.add, total, (loss, grads)), None

    zeros = (jnp.zeros(()), jax.tree.map(jnp.zeros_like, params))
    total, _ = jax.lax.scan(accumulate, zeros, (clean, noisy))
    return jax.tree.map(lambda t: t / microbatches, total)

  def update_one_prior(params, opt_state, clean, noisy):
    loss, grads = loss_and_grads(params, clean, noisy)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, new_opt_state = optimizer.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    return (tree_where(finite, new_params, params),
            skip_or_apply(finite, new_opt_state, opt_state), loss, grad_norm, finite)

  def chunked(batch):
    """[B, K, T] -> [microbatches, B // microbatches, K, T], example i in chunk
    i % microbatches (rows split over `data` stay on their devices)."""
    b, k, t = batch.shape
    if b % microbatches:
      raise ValueError(f"A batch of {b} does not split into microbatches={microbatches}.")
    return jnp.moveaxis(batch.reshape(b // microbatches, microbatches, k, t), 1, 0)

  update_priors = priors.map_priors(update_one_prior, (0, 0, 2, 2), 0, prior_loop, prior_groups)

  def step(state, batch):
    noisy = add_noise(jax.random.fold_in(noise_key, state.step), batch, noise)
    params, opt_state, loss, grad_norm, finite = update_priors(
        state.params, state.opt_state, chunked(batch), chunked(noisy))
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              skipped=state.skipped + (~finite).astype(jnp.int32))
    metrics = {"loss": loss, "grad_norm": grad_norm, "skipped": new_state.skipped,
               "param_norm": jax.vmap(optax.tree.norm)(params)}
    return new_state, metrics

  return step


def step_from_config(prior, optimizer, config, noise=Noise(), noise_key=None):
  """`make_train_step` with config.training's prior_loop, prior_devices (the groups) and
  microbatches."""
  training = config.training
  return make_train_step(prior, optimizer, noise, noise_key, training.prior_loop,
                         training.prior_devices, training.microbatches)


def make_mesh(num_devices=0, prior_devices=1):
  """A ('data', 'prior') mesh over num_devices devices (0: all of them), process by process.

  The batch's rows are split over `data`; the K priors (params, optimizer state and the
  batch's source axis) over the prior_devices devices of `prior`. Devices are ordered by
  process, so a `prior` group lies within one process (prior_devices divides each
  process's devices) or spans whole processes (a multiple of them that divides all the
  devices): e.g. one single-threaded process per CPU core, each training its own priors.
  prior_devices=1 is plain data parallelism.
  """
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  count = jax.process_count()
  if num_devices:
    if num_devices > len(devices):
      raise ValueError(f"config.training.num_devices={num_devices}, but jax sees only "
                       f"{len(devices)} devices.")
    if num_devices % count:
      raise ValueError(f"config.training.num_devices={num_devices} must be a multiple of "
                       f"the {count} processes.")
    by_process = [[d for d in devices if d.process_index == p] for p in range(count)]
    devices = [d for local in by_process for d in local[:num_devices // count]]
  per_process = len(devices) // count
  within_process = prior_devices >= 1 and per_process % prior_devices == 0
  whole_processes = (prior_devices >= 1 and prior_devices % per_process == 0
                     and len(devices) % prior_devices == 0)
  if not (within_process or whole_processes):
    raise ValueError(f"config.training.prior_devices={prior_devices} must divide the "
                     f"{per_process} devices each process uses, or be a multiple of them "
                     f"that divides all {len(devices)} devices ({count} processes).")
  return Mesh(np.array(devices).reshape(-1, prior_devices), (DATA_AXIS, PRIOR_AXIS))


def mesh_from_config(config):
  """The mesh of config.training.num_devices and prior_devices (training and separation),
  checked against the K sources."""
  training = config.training
  num_sources = len(config.data.source_names)
  if training.prior_devices < 1 or num_sources % training.prior_devices:
    raise ValueError(f"config.training.prior_devices={training.prior_devices} must divide "
                     f"the {num_sources} sources of config.data.source_names.")
  return make_mesh(training.num_devices, training.prior_devices)


def make_train_mesh(config):
  """`mesh_from_config`, checked against the batch size and microbatches; checks
  config.training.prior_loop too."""
  training = config.training
  if training.prior_loop not in priors.PRIOR_LOOPS:
    raise ValueError(f"config.training.prior_loop={training.prior_loop!r}: expected one of "
                     f"{priors.PRIOR_LOOPS}.")
  mesh = mesh_from_config(config)
  data_devices = mesh.shape[DATA_AXIS]
  if training.microbatches < 1 or training.batch_size % (data_devices * training.microbatches):
    raise ValueError(f"config.training.batch_size={training.batch_size} must be divisible by "
                     f"the {data_devices} devices of the data mesh axis x "
                     f"config.training.microbatches={training.microbatches}.")
  return mesh


def state_shardings(state, mesh):
  """NamedSharding per leaf of a (possibly abstract) TrainState: the leaves stacked over
  the priors [K, ...] split over `prior`, the scalar step replicated."""
  return jax.tree.map(
      lambda leaf: NamedSharding(
          mesh, PartitionSpec() if np.ndim(leaf) == 0 else PartitionSpec(PRIOR_AXIS)), state)


def place_state(state, mesh):
  """The state on `mesh`, laid out as `state_shardings` says."""
  return jax.device_put(state, state_shardings(state, mesh))


def compile_train_step(step, mesh, state):
  """jit over the mesh: state (donated) split over `prior`, batch [B, K, T] over `data`
  and `prior`, metrics replicated. state: the state, or its shapes, that step will get."""
  replicated = NamedSharding(mesh, PartitionSpec())
  state_sharding = state_shardings(state, mesh)
  return jax.jit(step, in_shardings=(state_sharding, pipeline.batch_sharding(mesh)),
                 out_shardings=(state_sharding, replicated), donate_argnums=0)


# Checkpoints ---------------------------------------------------------------------------


def level_name(sigma):
  """Directory name of a noise level: sigma_0 (noiseless), sigma_0.01, ..."""
  return f"sigma_{float(sigma):g}"


def checkpoint_dir(workdir, family, sigma):
  return os.path.join(os.path.abspath(workdir), "checkpoints", family, level_name(sigma))


def checkpoint_manager(directory, max_to_keep, create=True):
  """create=False to only read: a missing directory then stays missing (no latest step)."""
  return ocp.CheckpointManager(
      os.path.abspath(directory),
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create),
      item_handlers=ocp.StandardCheckpointHandler())


def _key_name(entry):
  for attribute in ("key", "name", "idx"):
    if hasattr(entry, attribute):
      return str(getattr(entry, attribute))
  return str(entry)


def _shapes_by_path(tree):
  """{'params/block_0_flow_0/actnorm/loc': shape, ...}, the same for dataclasses,
  named tuples and the plain dicts and lists of orbax metadata."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {"/".join(_key_name(e) for e in path): tuple(leaf.shape) for path, leaf in flat}


def check_checkpoint_shapes(manager, step, abstract_state):
  """Raises a ValueError naming the checkpoint and the first mismatched leaves when the
  checkpoint was written by a model of another shape."""
  stored = manager.item_metadata(step)
  stored_shapes = _shapes_by_path(stored)
  wanted_shapes = _shapes_by_path(abstract_state)
  missing = sorted(set(wanted_shapes) - set(stored_shapes))
  extra = sorted(set(stored_shapes) - set(wanted_shapes))
  params_first = lambda k: (not k.startswith("params/"), k)
  differ = [k for k in sorted(set(wanted_shapes) & set(stored_shapes), key=params_first)
            if wanted_shapes[k] != stored_shapes[k]]
  if missing or extra or differ:
    details = [f"{k}: checkpoint {stored_shapes[k]}, config {wanted_shapes[k]}"
               for k in differ[:3]]
    details += [f"{k}: not in the checkpoint" for k in missing[:3]]
    details += [f"{k}: only in the checkpoint" for k in extra[:3]]
    raise ValueError(
        f"The checkpoint {manager.directory}/{step} was written by a model of another "
        f"shape than config.model describes ({len(differ)} shapes differ, {len(missing)} "
        f"leaves missing, {len(extra)} extra): " + "; ".join(details) +
        ". Use a new --workdir, or the config that wrote this one.")


def restore_state(manager, step, abstract_state):
  """Restores `step` into the abstract target (shapes checked first)."""
  check_checkpoint_shapes(manager, step, abstract_state)
  return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))


@jax.jit
def _all_finite(tree):
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def all_finite(tree):
  """One compiled reduction: on XLA:CPU, a train mesh of more devices than cores can hang
  in a burst of small eager cross-device reductions (one per leaf)."""
  return bool(_all_finite(tree))


def save_state(manager, state):
  """Saves state at its step; refuses non-finite params (they are never checkpointed)."""
  if not all_finite(state.params):
    raise FloatingPointError(f"Non-finite parameters at step {int(state.step)}; not saved.")
  manager.save(int(state.step), args=ocp.args.StandardSave(state), force=True)


def write_config(config, workdir):
  """Writes the resolved config to <workdir>/configs/<family>.json (atomically; process 0)."""
  if not distributed.is_primary():
    return
  directory = os.path.join(workdir, "configs")
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, f"{config.model.family}.json")
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(tmp, path)


# Evaluation ----------------------------------------------------------------------------


def make_eval_fn(prior, mesh):
  """params [K, ...], host x [B, K, T] -> log p per example and source [B, K] (nats, numpy),
  the examples split over the `data` axis of `mesh` (in training, the K priors stay where
  the training mesh keeps them)."""
  return distributed.map_rows(
      lambda params, x: jnp.sum(priors.stacked_log_prob(prior, params, x), axis=2), mesh)


def evaluate(eval_fn, params, test_data, batch_size):
  """Mean test log-likelihood per source [K], nats per sample."""
  total = 0.0
  for start in range(0, test_data.shape[0], batch_size):
    total = total + np.sum(eval_fn(params, test_data[start:start + batch_size]), axis=0)
  return total / (test_data.shape[0] * test_data.shape[2])


# The loop ------------------------------------------------------------------------------


def _abstract_state(prior, optimizer, key, batch_shape, mesh):
  """The state's shapes, laid out on `mesh` (the restore target on every process)."""
  dummy = jax.ShapeDtypeStruct(batch_shape, jnp.float32)
  shapes = jax.eval_shape(lambda x: create_train_state(prior, optimizer, key, x), dummy)
  return jax.tree.map(lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                                               sharding=sharding),
                      shapes, state_shardings(shapes, mesh))


def _format_seconds(seconds):
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def train_keys(seed):
  """(init, noise, sample) keys of training: their own branch of key(seed), apart from
  the data's (`pipeline.data_key`), so that no stream's data equals any of them."""
  base_key = pipeline.seed_key(seed, pipeline.KEY_TAG_TRAIN)
  return tuple(jax.random.fold_in(base_key, i) for i in range(3))


def check_run_config(config):
  """Clear errors, before a train or finetune run writes anything, for a config.data that
  cannot give batches and for step counts and intervals below 1."""
  pipeline.check_data_config(config.data)
  for section, fields in (("training", ("num_steps", "batch_size", "log_every", "eval_every",
                                        "checkpoint_every", "max_checkpoints")),
                          ("finetune", ("num_steps",))):
    for field in fields:
      value = config[section][field]
      if value < 1:
        raise ValueError(f"config.{section}.{field} must be >= 1, got {value}.")


def train_and_evaluate(config, workdir, sigma=0.0, init_params=None, stream=0):
  """Trains config.model.family's K priors on config.data; returns the final TrainState.

  sigma > 0: one noise fine-tuning level (config.finetune.num_steps steps of x + sigma * eps,
  from init_params). stream: the level's index (0: noiseless training), which gives it
  its own data and noise draws. Resumes from the latest checkpoint of its level directory.
  """
  check_run_config(config)
  family = config.model.family
  prior = priors.build(config.model)
  num_steps = config.training.num_steps if sigma == 0.0 else config.finetune.num_steps
  optimizer = make_optimizer(config.optim, num_steps)
  mesh = make_train_mesh(config)
  write_config(config, workdir)
  init_key, noise_key, sample_key = train_keys(config.seed)
  noise_key = jax.random.fold_in(noise_key, stream)  # each fine-tuning level its own noise

  directory = checkpoint_dir(workdir, family, sigma)
  manager = checkpoint_manager(directory, config.training.max_checkpoints)
  batch_shape = (config.training.batch_size, len(config.data.source_names),
                 config.data.crop_length)
  start_step = manager.latest_step() or 0
  batches = pipeline.train_batches(config, start_step, mesh, stream)
  abstract_state = _abstract_state(prior, optimizer, init_key, batch_shape, mesh)
  if manager.latest_step() is not None:
    state = restore_state(manager, start_step, abstract_state)
    logging.info("Resumed %s at step %d from %s", family, start_step, directory)
  else:
    first_batch = next(batches)  # ActNorm's init batch, then step 0's batch.
    batches = itertools.chain([first_batch], batches)
    init_state = jax.jit(
        lambda batch, params: create_train_state(prior, optimizer, init_key, batch, params),
        out_shardings=state_shardings(abstract_state, mesh))
    state = init_state(first_batch, init_params)
  noise = Noise(sigma, config.finetune.legacy_noise)
  train_step = compile_train_step(step_from_config(prior, optimizer, config, noise, noise_key),
                                  mesh, abstract_state)
  schedule = learning_rate_schedule(config.optim, num_steps)

  names = tuple(config.data.source_names)
  test_data = pipeline.test_set(config)
  eval_fn = make_eval_fn(prior, mesh)
  sample_fn = jax.jit(lambda params, key: priors.stacked_sample(
      prior, params, key, config.training.num_audio_samples, config.data.test_length),
      out_shardings=NamedSharding(mesh, PartitionSpec()))
  writer = metric_writer.MetricWriter(
      os.path.join(workdir, "tb", family, level_name(sigma)))
  if start_step == 0:
    writer.write_hparams(config.to_dict())

  def run_eval(step):
    test_ll = evaluate(eval_fn, state.params, test_data, config.training.eval_batch_size)
    writer.write_scalars(step, {f"test_nats_per_sample/{n}": v for n, v in zip(names, test_ll)})
    logging.info("[%s %s] step %d test nats/sample: %s", family, level_name(sigma), step,
                 ", ".join(f"{n} {v:.3f}" for n, v in zip(names, test_ll)))
    if config.training.num_audio_samples:
      audio = np.asarray(sample_fn(state.params, jax.random.fold_in(sample_key, step)))
      writer.write_audios(step, {f"sample/{n}": audio[:, k] for k, n in enumerate(names)},
                          config.data.sample_rate)
    return test_ll

  last_time, last_step = time.time(), start_step
  try:
    for step in range(start_step, num_steps):
      state, metrics = train_step(state, next(batches))
      done = step + 1
      if done % config.training.log_every == 0 or done == num_steps:
        metrics = jax.device_get(metrics)
        now = time.time()
        rate = (done - last_step) / max(now - last_time, 1e-9)
        last_time, last_step = now, done
        scalars = {"lr": float(schedule(step)), "steps_per_sec": rate}
        for k, n in enumerate(names):
          scalars[f"loss/{n}"] = metrics["loss"][k]
          scalars[f"nats_per_sample/{n}"] = -metrics["loss"][k]
          scalars[f"grad_norm/{n}"] = metrics["grad_norm"][k]
          scalars[f"skipped/{n}"] = metrics["skipped"][k]
          scalars[f"param_norm/{n}"] = metrics["param_norm"][k]
        scalars["loss"] = float(np.mean(metrics["loss"]))
        writer.write_scalars(done, scalars)
        logging.info("[%s %s] step %d/%d | loss %.4f | %.2f steps/s | ETA %s | skipped %s",
                     family, level_name(sigma), done, num_steps, scalars["loss"], rate,
                     _format_seconds((num_steps - done) / max(rate, 1e-9)),
                     metrics["skipped"].tolist())
      if done % config.training.eval_every == 0 or done == num_steps:
        run_eval(done)
      if done % config.training.checkpoint_every == 0 or done == num_steps:
        save_state(manager, state)
  finally:
    # A run stopped by an error still finishes the checkpoints it started.
    manager.wait_until_finished()
    writer.close()
  return state


def finetune(config, workdir):
  """Noise fine-tuning, serially: level i starts from level i - 1 (the first from sigma 0).

  Returns the params of the last level [K, ...].
  """
  sigmas = tuple(config.finetune.sigmas)
  if any(s <= 0 for s in sigmas):
    raise ValueError(f"config.finetune.sigmas must be positive, got {sigmas}.")
  check_run_config(config)
  directory = checkpoint_dir(workdir, config.model.family, 0.0)
  if os.path.isdir(directory):
    trained = checkpoint_manager(directory, config.training.max_checkpoints,
                                 create=False).latest_step()
    if trained is not None and trained < config.training.num_steps:
      raise ValueError(
          f"The noiseless {config.model.family} checkpoint in {directory} is at step "
          f"{trained} of config.training.num_steps={config.training.num_steps}: finish it "
          "with --mode=train (it resumes there) before --mode=finetune.")
  params = load_params(config, workdir, 0.0)
  for level, sigma in enumerate(sigmas, start=1):
    params = train_and_evaluate(config, workdir, sigma=sigma, init_params=params,
                                stream=level).params
  return params


def load_params(config, workdir, sigma):
  """The params [K, ...] of the latest checkpoint of one level, replicated on the data mesh
  of config.training.num_devices (what evaluation, diagnostics and separation split their
  rows over)."""
  prior = priors.build(config.model)
  family = config.model.family
  directory = checkpoint_dir(workdir, family, sigma)
  manager = checkpoint_manager(directory, config.training.max_checkpoints, create=False)
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(
        f"No checkpoint of the {family} priors at {level_name(sigma)} in {directory}; "
        f"run --mode=train (and --mode=finetune for sigma > 0) first.")
  num_steps = config.training.num_steps if sigma == 0.0 else config.finetune.num_steps
  optimizer = make_optimizer(config.optim, num_steps)
  batch_shape = (config.training.batch_size, len(config.data.source_names),
                 config.data.crop_length)
  abstract = _abstract_state(prior, optimizer, train_keys(config.seed)[0], batch_shape,
                             make_mesh(config.training.num_devices))
  return restore_state(manager, step, abstract).params


def load_level_params(config, workdir, sigmas):
  """Params of several levels stacked [L, K, ...], in the order of `sigmas`."""
  per_level = [load_params(config, workdir, s) for s in sigmas]
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *per_level)


def evaluate_checkpoint(config, workdir, sigma=0.0):
  """Test nats/sample per source of the latest checkpoint: {source: value}."""
  prior = priors.build(config.model)
  params = load_params(config, workdir, sigma)
  eval_fn = make_eval_fn(prior, make_mesh(config.training.num_devices))
  test_ll = evaluate(eval_fn, params, pipeline.test_set(config),
                     config.training.eval_batch_size)
  result = {n: float(v) for n, v in zip(config.data.source_names, test_ll)}
  logging.info("Test nats/sample (%s, %s): %s", config.model.family, level_name(sigma),
               json.dumps(result))
  return result

