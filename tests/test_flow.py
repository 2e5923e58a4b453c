"""FloWaveNet: invertibility, exact log-det, ActNorm init, identity start."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from audiosep_jax import priors
from audiosep_jax.models import flow
from configs import toy_flow

jax.config.update("jax_enable_x64", False)


def perturbed(params, key, scale):
  """params + scale * N(0, 1) on every leaf, so the couplings are far from identity."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(
      treedef, [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


class FlowTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.module = flow.FloWaveNet(n_blocks=2, n_flows=2, n_layers=3, width=8, dilation_cycle=2)
    self.x = 0.5 * jax.random.normal(jax.random.key(0), (3, 32)) + 0.1
    params = self.module.init(jax.random.key(1), self.x)["params"]
    self.params = perturbed(params, jax.random.key(2), 0.1)

  def test_squeeze_roundtrip(self):
    x = jnp.arange(2 * 8 * 3.0).reshape(2, 8, 3)
    y = flow.squeeze(x)
    chex.assert_shape(y, (2, 4, 6))
    np.testing.assert_array_equal(y[0, 1, :2], [x[0, 2, 0], x[0, 3, 0]])
    np.testing.assert_array_equal(flow.unsqueeze(y), x)

  def test_inverse_of_forward(self):
    z, logdet = self.module.apply({"params": self.params}, self.x)
    x_back, inverse_logdet = self.module.apply({"params": self.params}, z, reverse=True)
    # float32 through 4 non-trivial couplings: 1e-5 absolute on inputs of scale 1.
    np.testing.assert_allclose(x_back, self.x, atol=1e-5)
    np.testing.assert_allclose(inverse_logdet, -logdet, rtol=1e-5, atol=1e-4)

  def test_logdet_equals_brute_force_jacobian(self):
    x = self.x[:1]

    def f(v):
      return self.module.apply({"params": self.params}, v[None])[0][0]

    jacobian = jax.jacfwd(f)(x[0])  # [T, T]
    sign, expected = jnp.linalg.slogdet(jacobian)
    _, logdet = self.module.apply({"params": self.params}, x)
    self.assertEqual(float(sign), 1.0)
    np.testing.assert_allclose(logdet[0], expected, rtol=1e-4, atol=1e-3)

  def test_actnorm_init_standardises_the_init_batch(self):
    key = jax.random.key(3)
    x = jnp.array([3.0, -2.0, 0.5]) + jnp.array([0.1, 4.0, 2.0]) * jax.random.normal(
        key, (4, 64, 3))
    actnorm = flow.ActNorm(init_eps=1e-6)
    variables = actnorm.init(jax.random.key(0), x)
    y, logdet = actnorm.apply(variables, x)
    np.testing.assert_allclose(jnp.mean(y, axis=(0, 1)), 0.0, atol=1e-5)
    np.testing.assert_allclose(jnp.std(y, axis=(0, 1)), 1.0, atol=1e-4)
    expected = -64 * jnp.sum(jnp.log(jnp.std(x, axis=(0, 1))))
    np.testing.assert_allclose(logdet, expected, rtol=5e-4)  # float32 sums of 64 x 3 logs

  def test_identity_flow_gives_standard_normal_density(self):
    config = toy_flow.get_config("test")
    prior = priors.build(config.model)
    x = 0.3 * jax.random.normal(jax.random.key(4), (2, 64))
    params = prior.init(jax.random.key(5), x)
    # Couplings start as the identity (zero head); make the ActNorms identities too.
    params = jax.tree_util.tree_map_with_path(
        lambda path, p: jnp.zeros_like(p) if "actnorm" in jax.tree_util.keystr(path) else p,
        params)
    np.testing.assert_allclose(prior.log_prob(params, x),
                               -0.5 * x ** 2 - 0.5 * np.log(2 * np.pi), atol=1e-6)

  def test_log_prob_sums_to_exact_log_likelihood(self):
    prior = priors.build_flow(toy_flow.get_config("test").model)
    x = self.x[:, :]
    params = perturbed(prior.init(jax.random.key(6), x), jax.random.key(7), 0.05)
    z, logdet = priors.flow_module(toy_flow.get_config("test").model).apply(
        {"params": params}, x)
    expected = jnp.sum(-0.5 * z ** 2 - 0.5 * jnp.log(2 * jnp.pi), axis=1) + logdet
    np.testing.assert_allclose(jnp.sum(prior.log_prob(params, x), axis=1), expected,
                               rtol=1e-5)
    np.testing.assert_allclose(prior.latent_log_prob(params, x),
                               -0.5 * z ** 2 - 0.5 * np.log(2 * np.pi), rtol=1e-6)

  def test_sample_is_inverse_of_noise(self):
    prior = priors.build_flow(toy_flow.get_config("test").model)
    params = prior.init(jax.random.key(8), self.x)
    params = perturbed(params, jax.random.key(10), 0.05)
    samples = prior.sample(params, jax.random.key(9), 2, 32)
    chex.assert_shape(samples, (2, 32))
    z, _ = priors.flow_module(toy_flow.get_config("test").model).apply(
        {"params": params}, samples)
    np.testing.assert_allclose(z, jax.random.normal(jax.random.key(9), (2, 32)), atol=1e-5)
    self.assertGreater(float(jnp.max(jnp.abs(samples - z))), 1e-3)  # not the noise itself

  def test_remat_gives_the_same_values_and_gradients(self):
    remat_module = flow.FloWaveNet(n_blocks=2, n_flows=2, n_layers=3, width=8,
                                   dilation_cycle=2, remat=True)

    def loss(module, params):
      z, logdet = module.apply({"params": params}, self.x)
      return jnp.sum(z ** 2) - jnp.sum(logdet)

    value, grads = jax.value_and_grad(lambda p: loss(self.module, p))(self.params)
    remat_value, remat_grads = jax.value_and_grad(lambda p: loss(remat_module, p))(self.params)
    np.testing.assert_allclose(remat_value, value, rtol=1e-6)
    chex.assert_trees_all_close(remat_grads, grads, rtol=1e-5, atol=1e-6)

  def test_remat_lowers_the_compiled_peak_memory(self):
    # jax.checkpoint alone does not: XLA:CPU merges its recomputation back (flow.py).
    def grad_temp_bytes(remat):
      module = flow.FloWaveNet(n_blocks=2, n_flows=4, n_layers=3, width=8, dilation_cycle=2,
                               remat=remat)
      x = jnp.zeros((4, 4096))
      params = jax.eval_shape(module.init, jax.random.key(0), x)["params"]

      def loss(p, v):
        z, logdet = module.apply({"params": p}, v)
        return jnp.sum(z ** 2) - jnp.sum(logdet)

      compiled = jax.jit(jax.grad(loss)).lower(params, x).compile()
      return compiled.memory_analysis().temp_size_in_bytes

    self.assertLess(grad_temp_bytes(True), 0.5 * grad_temp_bytes(False))

  def test_length_not_divisible_is_a_clear_error(self):
    with self.assertRaisesRegex(ValueError, "divisible by 4"):
      self.module.apply({"params": self.params}, jnp.zeros((1, 30)))
    with self.assertRaisesRegex(ValueError, r"takes x \[B, T\], got shape \(32,\)"):
      self.module.apply({"params": self.params}, jnp.zeros((32,)))

  def test_bad_model_fields_are_clear_errors(self):
    for field, value, message in (("n_blocks", 0, "n_blocks must be >= 1, got 0"),
                                  ("n_layers", 0, "n_layers must be >= 1, got 0"),
                                  ("width", -1, "width must be >= 1, got -1"),
                                  ("kernel_size", 2, "kernel_size must be odd")):
      model_config = toy_flow.get_config("test").model
      model_config[field] = value
      with self.assertRaisesRegex(ValueError, f"config.model.{message}"):
        priors.build_flow(model_config)


if __name__ == "__main__":
  absltest.main()
