"""The WaveNet's convolutions: `conv1d` (a matmul over shifted taps) is the convolution
XLA computes, and the layers keep nn.Conv's parameters."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audiosep_jax.models import wavenet


@pytest.mark.parametrize("kernel_size,dilation,padding", [
    (1, 1, (0, 0)), (2, 1, (1, 0)), (2, 8, (8, 0)), (3, 4, (4, 4)), (3, 2, (0, 0)),
    (3, 16, (32, 0))])
def test_conv1d_equals_the_xla_convolution(kernel_size, dilation, padding):
  x = jax.random.normal(jax.random.key(0), (2, 64, 5))
  kernel = jax.random.normal(jax.random.key(1), (kernel_size, 5, 7))
  bias = jax.random.normal(jax.random.key(2), (7,))
  expected = jax.lax.conv_general_dilated(
      x, kernel, window_strides=(1,), padding=[padding], rhs_dilation=(dilation,),
      dimension_numbers=("NWC", "WIO", "NWC")) + bias
  got = wavenet.conv1d(x, kernel, bias, dilation=dilation, padding=padding)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_conv_params_initialise_as_nn_conv():
  x = jnp.ones((1, 16, 5))
  ours = wavenet.ConvParams(5, 7, kernel_size=3).init(jax.random.key(3))["params"]
  theirs = nn.Conv(7, (3,)).init(jax.random.key(3), x)["params"]
  assert jax.tree.map(jnp.shape, ours) == jax.tree.map(jnp.shape, theirs)
  np.testing.assert_array_equal(ours["kernel"], theirs["kernel"])
  np.testing.assert_array_equal(ours["bias"], theirs["bias"])


@pytest.mark.parametrize("layout", [{"residual_stream": "matmul"},
                                    {"residual_stream": "divide"}, {"split_gate": True}])
@pytest.mark.parametrize("causal,kernel_size", [(True, 2), (False, 3)])
def test_layout_fields_keep_the_parameters_and_the_function(layout, causal, kernel_size):
  x = jax.random.normal(jax.random.key(4), (2, 64, 1))
  make = lambda **fields: wavenet.WaveNet(out_channels=3, width=8, n_layers=5,
                                          kernel_size=kernel_size, dilation_cycle=3,
                                          causal=causal, **fields)
  plain, variant = make(), make(**layout)
  params = plain.init(jax.random.key(5), x)
  assert jax.tree.map(jnp.shape, variant.init(jax.random.key(5), x)) == jax.tree.map(
      jnp.shape, params)
  np.testing.assert_allclose(variant.apply(params, x), plain.apply(params, x),
                             rtol=1e-5, atol=1e-5)
  input_grads = [jax.grad(lambda v, m=m: jnp.sum(jnp.sin(m.apply(params, v))))(x)
                 for m in (variant, plain)]
  np.testing.assert_allclose(*input_grads, rtol=1e-4, atol=1e-5)


def test_divided_residual_stream_keeps_its_divisions_in_the_compiled_program():
  """residual_stream='divide' works only while XLA cannot rewrite the division by sqrt(2)
  into a multiplication, which it would fuse into every later layer: each layer whose
  output is read divides, in the forward pass and in the backward pass."""
  n_layers = 6
  x = jnp.ones((1, 32, 1))

  def compiled_divisions(residual_stream):
    net = wavenet.WaveNet(out_channels=2, width=8, n_layers=n_layers, causal=True,
                          residual_stream=residual_stream)
    params = net.init(jax.random.key(0), x)
    loss = lambda p: jnp.sum(jnp.sin(net.apply(p, x)))
    return jax.jit(jax.grad(loss)).lower(params).compile().as_text().count(" divide(")

  assert compiled_divisions("divide") - compiled_divisions("add") >= 2 * (n_layers - 1)


def test_unknown_residual_stream_is_refused():
  net = wavenet.WaveNet(out_channels=2, width=8, n_layers=2, residual_stream="concat")
  with pytest.raises(ValueError, match="residual_stream must be one of"):
    net.init(jax.random.key(0), jnp.ones((1, 8, 1)))