"""The PyTorch reference of benchmarks/ computes what the JAX priors compute.

With weights copied from the JAX params, the torch FloWaveNet and autoregressive WaveNet
give the same log-densities, input gradients (the Langevin score) and parameter
gradients (the train step): what makes the speed comparison an honest one.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audiosep_jax import priors
from audiosep_jax.data import toy
from configs import toy_flow
from configs import toy_wavenet

torch = pytest.importorskip(
    "torch", reason="torch is not installed (pip install -e .[bench]); the PyTorch "
    "reference of benchmarks/ cannot be checked")
from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top,wrong-import-position

NUM_SOURCES = 2
# Tiny models: one thread is fastest, and torch's thread barriers stall on a busy CPU.
torch.set_num_threads(1)


def perturbed(params, key, scale):
  """params + scale * N(0, 1) on every leaf, so no coupling is the identity."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(
      treedef, [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


@functools.lru_cache(maxsize=None)
def jax_setting(family, quantization):
  """(config, prior, JAX params [K, ...], x [B, K, T]) of a tiny test model."""
  config = (toy_flow if family == "flow" else toy_wavenet).get_config("test")
  config.data.source_names = config.data.source_names[:NUM_SOURCES]
  if family == "wavenet":
    config.model.quantization = quantization
  prior = priors.build(config.model)
  x = toy.sample_sources(jax.random.key(0), 3, 128, config.data)
  # Noised, but inside the WaveNet's bins: its density is 0 (log -inf) outside [-1, 1].
  x = jnp.clip(x + 0.05 * jax.random.normal(jax.random.key(1), x.shape), -0.99, 0.99)
  init = jax.jit(lambda key, v: perturbed(priors.stack_init(prior, key, v),
                                          jax.random.key(3), 0.1))
  return config, prior, init(jax.random.key(2), x), x


def setting(family, quantization="linear"):
  """jax_setting, plus fresh torch priors holding the same weights and torch x."""
  config, prior, params, x = jax_setting(family, quantization)
  stacked = torch_reference.stacked_from_jax(config.model, jax.device_get(params))
  return config, prior, params, x, stacked, torch.from_numpy(np.array(x))


@pytest.mark.parametrize("family,quantization",
                         [("flow", "linear"), ("wavenet", "linear"), ("wavenet", "mu_law")])
def test_same_log_prob(family, quantization):
  _, prior, params, x, stacked, xt = setting(family, quantization)
  expected = np.asarray(jax.jit(functools.partial(priors.stacked_log_prob, prior))(params, x))
  assert np.std(expected) > 0.1  # Non-trivial densities, not a constant.
  with torch.no_grad():
    got = stacked.log_prob(xt).numpy()
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family,sigma", [("flow", 0.0), ("wavenet", 0.0), ("wavenet", 0.05)])
def test_same_score(family, sigma):
  """d/dx of the summed (level) log density: the Langevin inner step's model work."""
  _, prior, params, x, stacked, xt = setting(family)

  def total(v):
    if sigma:
      return jnp.sum(priors.stacked_level_log_prob(prior, params, v, sigma))
    return jnp.sum(priors.stacked_log_prob(prior, params, v))

  value, grad = jax.jit(jax.value_and_grad(total))(x)
  got_value, got_grad = torch_reference.make_score_fn(stacked, sigma or None)(xt)
  np.testing.assert_allclose(float(got_value), float(value), rtol=1e-5)
  scale = float(jnp.max(jnp.abs(grad)))
  assert scale > 0.0
  np.testing.assert_allclose(got_grad.numpy(), np.asarray(grad), atol=1e-4 * scale)


@pytest.mark.parametrize("family", ["flow", "wavenet"])
def test_same_parameter_gradients(family):
  """Gradients of the per-prior loss (mean negative log density) for every weight."""
  _, prior, params, x, stacked, xt = setting(family)

  def loss(p, v):
    return -jnp.mean(prior.log_prob(p, v))

  grads = jax.jit(jax.vmap(jax.grad(loss), in_axes=(0, 1)))(params, x)
  torch_loss = -stacked.log_prob(xt).mean(dim=(0, 2)).sum()
  torch_loss.backward()
  to_state = (torch_reference.flow_state if family == "flow"
              else torch_reference.autoregressive_state)
  for k, model in enumerate(stacked.priors):
    expected = to_state(torch_reference.unstack(jax.device_get(grads), k))
    named = dict(model.named_parameters())
    assert set(named) == set(expected)
    for name, parameter in named.items():
      want = expected[name].numpy()
      # The last layer's residual branch feeds nothing: no torch grad, a zero JAX grad.
      got = np.zeros_like(want) if parameter.grad is None else parameter.grad.numpy()
      scale = max(float(np.max(np.abs(want))), 1e-3)
      np.testing.assert_allclose(got, want, atol=2e-4 * scale, err_msg=f"prior {k}, {name}")


def test_train_step_lowers_the_loss():
  """The torch step (clipping, Adam) trains: the loss on a fixed batch goes down."""
  config, _, _, _, stacked, xt = setting("flow")
  optim = config.optim
  step = torch_reference.make_train_step(stacked, optim.learning_rate, optim.b1, optim.b2,
                                         optim.eps, optim.clip_norm)
  losses = [step(xt) for _ in range(6)]
  assert torch.all(losses[-1] < losses[0]), (losses[0], losses[-1])
