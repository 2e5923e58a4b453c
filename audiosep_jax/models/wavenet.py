"""A gated dilated convolution stack (WaveNet), causal or centred, channels last.

Used by both priors: non-causal inside every FloWaveNet coupling, causal in the
autoregressive prior. Parameter names are part of the contract: the cached sampler in
`autoregressive.py` reads them directly.

  input        Conv 1x1, C_in -> width
  layer_i      dilated Conv (kernel_size, dilation 2 ** (i % dilation_cycle)) width -> 2 width,
               tanh(a) * sigmoid(b); `residual` 1x1 width -> width, `skip` 1x1 width -> width
  head         ReLU, Conv 1x1 `head_hidden` width -> width, ReLU, Conv 1x1 `head_out` -> out

Every convolution holds its parameters as `nn.Conv` does (kernel [k, C_in, C_out], bias)
and runs as a matmul over shifted taps (`conv1d`).
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

# How ResidualLayer forms h_next = sqrt(0.5) (h + residual): the same function and params
# each way, different programs for the compiler (ResidualLayer's docstring).
RESIDUAL_STREAMS = ("add", "matmul", "divide")


def check_residual_stream(value, name="residual_stream"):
  """Raises a ValueError naming `name` unless value is one of RESIDUAL_STREAMS."""
  if value not in RESIDUAL_STREAMS:
    raise ValueError(f"{name} must be one of {RESIDUAL_STREAMS}, got {value!r}.")


def dilations(n_layers, dilation_cycle):
  """Dilation of each layer: 1, 2, 4, ..., restarting every `dilation_cycle` layers."""
  return tuple(2 ** (i % dilation_cycle) for i in range(n_layers))


def receptive_field(n_layers, dilation_cycle, kernel_size):
  """Number of input samples that one output sample of the stack depends on."""
  return 1 + (kernel_size - 1) * sum(dilations(n_layers, dilation_cycle))


def gate(filt, gate_in):
  """filt, gate_in: [..., C] -> tanh(filt) * sigmoid(gate_in): [..., C]."""
  return jnp.tanh(filt) * jax.nn.sigmoid(gate_in)


def conv1d(x, kernel, bias, dilation=1, padding=(0, 0)):
  """A 1-D convolution computed as one matmul per tap, summed.

  x: [B, T, C_in], kernel: [k, C_in, C_out] (nn.Conv's layout), bias: [C_out], padding:
  (before, after) samples -> [B, T + before + after - dilation (k - 1), C_out]. Tap j reads
  input sample t - before + j * dilation. Written as sum_j (x shifted by j dilation) @
  kernel[j] rather than `lax.conv_general_dilated`: on XLA:CPU the vmapped (grouped)
  convolutions of K stacked priors spend more time in layout copies than in arithmetic,
  and convolutions inside compiled loops fall back to naive kernels (jax issue 12868);
  batched dots do neither. Summing per-tap matmuls rather than concatenating the taps
  into one matmul saves writing the concatenation (benchmarks/README.md).
  """
  k = kernel.shape[0]
  if any(padding):
    x = jnp.pad(x, ((0, 0), tuple(padding), (0, 0)))
  length = x.shape[1] - dilation * (k - 1)
  out = bias
  for j in range(k):
    out = out + x[:, j * dilation:j * dilation + length] @ kernel[j]
  return out


class ConvParams(nn.Module):
  """The parameters of a 1-D convolution as `nn.Conv` names, shapes and initialises them:
  () -> (kernel [kernel_size, in_features, features], bias [features])."""
  in_features: int
  features: int
  kernel_size: int = 1
  kernel_init: nn.initializers.Initializer = nn.linear.default_kernel_init

  @nn.compact
  def __call__(self):
    kernel = self.param("kernel", self.kernel_init,
                        (self.kernel_size, self.in_features, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    return kernel, bias


class ResidualLayer(nn.Module):
  """One gated dilated layer. h: [B, T, width] -> (h_next [B, T, width], skip [B, T, width]).

  The residual and skip 1x1 convolutions read the same gated activations but run as two
  matmuls: as one matmul against their kernels side by side, the backward pass would
  concatenate their two cotangents, which costs more than it saves
  (benchmarks/README.md); and the compiler drops the last layer's residual branch, whose
  output nothing reads.

  residual_stream picks how h_next = sqrt(0.5) (h + residual) is computed; all three are
  the same function of the same params. XLA:CPU fuses a cheap elementwise producer into
  each of its consumers, so the plain chain of additions is recomputed inside every later
  layer, work quadratic in the depth (benchmarks/README.md). 'add': h sqrt(0.5) +
  residual, as written. 'matmul': h @ (sqrt(0.5) I) + residual, a width x width matmul
  more, whose output XLA materialises. 'divide': (h + z @ W_res + b_res) / sqrt(2), with
  sqrt(2) behind `lax.optimization_barrier` so that the compiler cannot turn the division
  into a multiplication; XLA counts a floating-point division as expensive and
  materialises it rather than duplicating it into its consumers, the backward pass
  (cotangent / sqrt(2)) too. 'divide' is the fastest on a CPU.

  split_gate=True computes the tanh and the sigmoid inputs as two matmuls against the two
  halves of the dilated kernel (the same parameters and function): the backward pass then
  adds their input gradients instead of concatenating their output gradients, which
  makes the autoregressive WaveNet's Langevin score faster on a CPU and the flow slower
  (benchmarks/README.md).
  """
  width: int
  kernel_size: int
  dilation: int
  causal: bool
  residual_stream: str = "add"
  split_gate: bool = False

  @nn.compact
  def __call__(self, h):
    check_residual_stream(self.residual_stream)
    span = self.dilation * (self.kernel_size - 1)
    if self.causal:
      padding = (span, 0)
    else:
      if self.kernel_size % 2 != 1:
        raise ValueError(f"A centred WaveNet needs an odd kernel_size, got {self.kernel_size}.")
      padding = (span // 2, span // 2)
    kernel, bias = ConvParams(self.width, 2 * self.width, self.kernel_size, name="dilated")()
    if self.split_gate:
      filt, gate_in = (conv1d(h, kernel[..., half], bias[half], self.dilation, padding)
                       for half in (slice(None, self.width), slice(self.width, None)))
    else:
      filt, gate_in = jnp.split(conv1d(h, kernel, bias, self.dilation, padding), 2, axis=-1)
    z = gate(filt, gate_in)
    res_kernel, res_bias = ConvParams(self.width, self.width, name="residual")()
    skip_kernel, skip_bias = ConvParams(self.width, self.width, name="skip")()
    skip = conv1d(z, skip_kernel, skip_bias)
    if self.residual_stream == "divide":
      sqrt_two = jax.lax.optimization_barrier(jnp.asarray(math.sqrt(2.0), h.dtype))
      return (h + conv1d(z, res_kernel, res_bias)) / sqrt_two, skip
    scale = math.sqrt(0.5)
    residual = conv1d(z, scale * res_kernel, scale * res_bias)
    if self.residual_stream == "matmul":
      return h @ (scale * jnp.eye(self.width, dtype=h.dtype)) + residual, skip
    return h * scale + residual, skip


class WaveNet(nn.Module):
  """x: [B, T, C_in] -> [B, T, out_channels].

  causal=True: the output at t depends on inputs at t' <= t only (shift the input
  by one sample outside to predict x_t from x_{<t}). zero_init_head=True makes the
  last convolution output exactly zero at initialisation (identity couplings).
  """
  out_channels: int
  width: int
  n_layers: int
  kernel_size: int = 3
  dilation_cycle: int = 10
  causal: bool = False
  zero_init_head: bool = False
  residual_stream: str = "add"  # See ResidualLayer (config.model.residual_stream).
  split_gate: bool = False  # See ResidualLayer (config.model.split_gate, WaveNet prior).

  @nn.compact
  def __call__(self, x):
    h = conv1d(x, *ConvParams(x.shape[-1], self.width, name="input")())
    skip_sum = jnp.zeros_like(h)
    for i, dilation in enumerate(dilations(self.n_layers, self.dilation_cycle)):
      h, skip = ResidualLayer(self.width, self.kernel_size, dilation, self.causal,
                              self.residual_stream, self.split_gate, name=f"layer_{i}")(h)
      skip_sum = skip_sum + skip
    out = nn.relu(skip_sum)
    out = nn.relu(conv1d(out, *ConvParams(self.width, self.width, name="head_hidden")()))
    last_init = nn.initializers.zeros if self.zero_init_head else nn.linear.default_kernel_init
    head_out = ConvParams(self.width, self.out_channels, kernel_init=last_init, name="head_out")
    return conv1d(out, *head_out())
