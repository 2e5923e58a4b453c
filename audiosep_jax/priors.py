"""The Prior contract: pure functions over an explicit params pytree.

  init(key, x[B, T]) -> params                  data-dependent init (ActNorm) happens here
  log_prob(params, x[B, T]) -> [B, T]           exact log density, nats per sample, differentiable in x
  sample(params, key, batch, length) -> [B, T]
  level_log_prob(params, x[B, T], sigma) -> [B, T]
                                                the density that params fine-tuned at noise level
                                                sigma assign to noisy audio (flows: log_prob; the
                                                WaveNet: its categorical convolved with N(0, sigma^2))
  latent_log_prob(params, x[B, T]) -> [B, T]    flows only: log N(f(x); 0, I) without the log-det,
                                                the quantity the 2020 paper tabulated; None otherwise
  noisy_log_prob(params, clean[B, T], noisy[B, T]) -> [B, T]
                                                what noise fine-tuning maximises, where it is not
                                                log_prob(noisy): the WaveNet's clean sample x_t
                                                given the noisy history (PnF); None otherwise

K sources: the K priors' params are stacked on a leading axis and evaluated with
`jax.vmap` or one after another (`map_priors`; `stack_init`, `stacked_log_prob`, ...); the
priors stay independent.
Noise levels: params fine-tuned at L levels are stacked on a further axis [L, K, ...].
"""
import math
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from audiosep_jax.models import flow
from audiosep_jax.models import wavenet

# A Python float: no JAX work at import (processes must join a distributed run first).
LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


class Prior(NamedTuple):
  init: Callable
  log_prob: Callable
  sample: Callable
  level_log_prob: Callable
  latent_log_prob: Optional[Callable] = None
  noisy_log_prob: Optional[Callable] = None


def standard_normal_log_density(z):
  """Elementwise log N(z; 0, 1)."""
  return -0.5 * jnp.square(z) - LOG_SQRT_2PI


def flow_module(model_config):
  """The FloWaveNet of a `config.model` (typed fields only, no ConfigDict inside)."""
  for name in ("n_blocks", "n_flows", "n_layers", "width", "kernel_size", "dilation_cycle"):
    if getattr(model_config, name) < 1:
      raise ValueError(f"config.model.{name} must be >= 1, got {getattr(model_config, name)}.")
  if model_config.kernel_size % 2 != 1:
    raise ValueError("config.model.kernel_size must be odd for the flow's centred WaveNets, "
                     f"got {model_config.kernel_size}.")
  wavenet.check_residual_stream(model_config.residual_stream, "config.model.residual_stream")
  return flow.FloWaveNet(
      n_blocks=model_config.n_blocks, n_flows=model_config.n_flows,
      n_layers=model_config.n_layers, width=model_config.width,
      kernel_size=model_config.kernel_size, dilation_cycle=model_config.dilation_cycle,
      actnorm_eps=model_config.actnorm_eps, remat=model_config.remat,
      residual_stream=model_config.residual_stream)


def build_flow(model_config):
  """FloWaveNet prior: log p(x)_t = log N(f(x)_t) + logdet / T (the log-det spread evenly)."""
  module = flow_module(model_config)

  def init(key, x):
    return module.init(key, x)["params"]

  def latent_log_prob(params, x):
    z, _ = module.apply({"params": params}, x)
    return standard_normal_log_density(z)

  def log_prob(params, x):
    z, logdet = module.apply({"params": params}, x)
    return standard_normal_log_density(z) + (logdet / x.shape[-1])[:, None]

  def sample(params, key, batch, length):
    z = jax.random.normal(key, (batch, length))
    x, _ = module.apply({"params": params}, z, reverse=True)
    return x

  def level_log_prob(params, x, sigma):
    del sigma  # A flow fine-tuned at sigma models the noisy data itself.
    return log_prob(params, x)

  return Prior(init, log_prob, sample, level_log_prob, latent_log_prob)


def build(model_config):
  """One source's Prior for `config.model` (family 'flow' or 'wavenet')."""
  family = model_config.family
  if family == "flow":
    return build_flow(model_config)
  if family == "wavenet":
    from audiosep_jax.models import autoregressive  # pylint: disable=g-import-not-at-top
    return autoregressive.build_prior(model_config)
  raise ValueError(f"Unknown config.model.family {family!r}; choose 'flow' or 'wavenet'.")


PRIOR_LOOPS = ("vmap", "map")


def map_priors(fn, in_axes, out_axes=0, loop="vmap", groups=1, rotated=()):
  """`jax.vmap(fn, in_axes, out_axes)` over the K stacked priors, computed one of two ways.

  loop='vmap': the K priors at once, every matmul batched over K.
  loop='map': the K priors split into `groups` groups of K // groups, the groups vmapped
    and the priors of a group one after another (`jax.lax.scan`): each op touches one
    prior's activations, 1/K of vmap's working set (faster on CPUs: benchmarks/README.md).
    groups = the devices of the `prior` mesh axis, so that each device loops over its own
    priors with no communication.
  in_axes: a tuple with, per argument, the K axis of all its leaves (an int) or None;
  out_axes: an int, the K axis of every output leaf. Same values either way.
  rotated: positions of arguments that, with loop='map', travel as the loop's carry and
    turn by one prior per step, so that each prior reads the fixed slice [0] of them and
    not the loop-indexed one: XLA:CPU does not vectorise an elementwise kernel that reads
    a loop-indexed slice (the WaveNet's smoothed density, paper score: 1.20 -> 0.89 s).
    One copy of those arguments per prior: meant for the sources, not parameters.
  """
  if loop == "vmap":
    return jax.vmap(fn, in_axes=in_axes, out_axes=out_axes)
  if loop != "map":
    raise ValueError(f"prior_loop={loop!r}: expected one of {PRIOR_LOOPS}.")

  def mapped(*args):
    positions = [i for i, axis in enumerate(in_axes) if axis is not None]
    first = positions[0]
    num_priors = jax.tree.leaves(args[first])[0].shape[in_axes[first]]
    if num_priors % groups:
      raise ValueError(f"{num_priors} priors do not split into {groups} groups.")

    def grouped(i):
      """Argument i with its K axis split into [groups, K // groups] in front."""
      axis = in_axes[i]
      return jax.tree.map(lambda leaf: jnp.moveaxis(leaf, axis, 0).reshape(
          groups, num_priors // groups, *leaf.shape[:axis], *leaf.shape[axis + 1:]), args[i])

    def loop_group(indexed, turning):
      def step(turning, indexed_slice):
        this_prior = {**indexed_slice, **jax.tree.map(lambda leaf: leaf[0], turning)}
        out = fn(*(this_prior.get(i, a) for i, a in enumerate(args)))
        return jax.tree.map(lambda leaf: jnp.roll(leaf, -1, axis=0), turning), out

      return jax.lax.scan(step, turning, indexed, length=num_priors // groups)[1]

    out = jax.vmap(loop_group)({i: grouped(i) for i in positions if i not in rotated},
                               {i: grouped(i) for i in positions if i in rotated})
    return jax.tree.map(lambda leaf: jnp.moveaxis(
        leaf.reshape(num_priors, *leaf.shape[2:]), 0, out_axes), out)

  return mapped


def stack_init(prior, key, x):
  """K independent inits, one per source: x [B, K, T] -> params stacked [K, ...]."""
  keys = jax.random.split(key, x.shape[1])
  return jax.vmap(prior.init, in_axes=(0, 1))(keys, x)


def stacked_log_prob(prior, params, x):
  """params [K, ...], x [B, K, T] -> [B, K, T]: prior k scores source k."""
  return jax.vmap(prior.log_prob, in_axes=(0, 1), out_axes=1)(params, x)


def stacked_level_log_prob(prior, params, x, sigma, loop="vmap", groups=1):
  """params [K, ...], x [B, K, T], sigma scalar -> [B, K, T] (`map_priors`)."""
  return map_priors(prior.level_log_prob, (0, 1, None), 1, loop, groups, rotated=(1,))(
      params, x, sigma)


def stacked_level_score(prior, params, x, sigma, loop="vmap", groups=1):
  """params [K, ...], x [B, K, T], sigma scalar -> (log_prob [B, K, T], score [B, K, T]).

  score = d/dx of sum log_prob, `stacked_level_log_prob`'s density. Prior k reads only
  source k, so each prior's gradient is taken inside the loop over priors (`map_priors`):
  with loop='map' one prior's forward and backward pass finish before the next prior
  starts. The gradient of the summed loop would instead save every prior's activations
  for a second, backward loop (the paper WaveNet's score: 1.45 against 1.10 s,
  benchmarks/README.md). Same values either way; with loop='vmap' the same program.
  """
  def one_prior(prior_params, source, sigma):
    log_prob, pullback = jax.vjp(lambda v: prior.level_log_prob(prior_params, v, sigma), source)
    return log_prob, pullback(jnp.ones_like(log_prob))[0]

  return map_priors(one_prior, (0, 1, None), 1, loop, groups, rotated=(1,))(params, x, sigma)


def cross_log_prob(prior, params, x):
  """Every prior on every source: params [K, ...], x [B, J, T] -> [B, K, J, T]."""
  per_prior = jax.vmap(prior.log_prob, in_axes=(0, None))  # over K, x [B*J, T]
  b, j, t = x.shape
  out = per_prior(params, x.reshape(b * j, t))  # [K, B*J, T]
  return out.reshape(-1, b, j, t).transpose(1, 0, 2, 3)


def stacked_sample(prior, params, key, batch, length):
  """One draw per source: params [K, ...] -> [B, K, T]."""
  keys = jax.random.split(key, jax.tree.leaves(params)[0].shape[0])
  return jax.vmap(prior.sample, in_axes=(0, 0, None, None), out_axes=1)(
      params, keys, batch, length)


def index_level(stacked_params, level):
  """[L, K, ...] params -> the [K, ...] params of one level (traceable index)."""
  return jax.tree.map(lambda p: p[level], stacked_params)
