"""A gated dilated convolution stack (WaveNet), causal or centred, channels last.

Used by both priors: non-causal inside every FloWaveNet coupling, causal in the
autoregressive prior. Parameter names are part of the contract: the cached sampler in
`autoregressive.py` reads them directly.

  input        Conv 1x1, C_in -> width
  layer_i      dilated Conv (kernel_size, dilation 2 ** (i % dilation_cycle)) width -> 2 width,
               tanh(a) * sigmoid(b); `residual` 1x1 width -> width, `skip` 1x1 width -> width
  head         ReLU, Conv 1x1 `head_hidden` width -> width, ReLU, Conv 1x1 `head_out` -> out
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def dilations(n_layers, dilation_cycle):
  """Dilation of each layer: 1, 2, 4, ..., restarting every `dilation_cycle` layers."""
  return tuple(2 ** (i % dilation_cycle) for i in range(n_layers))


def receptive_field(n_layers, dilation_cycle, kernel_size):
  """Number of input samples that one output sample of the stack depends on."""
  return 1 + (kernel_size - 1) * sum(dilations(n_layers, dilation_cycle))


def gate(h):
  """h: [..., 2 C] -> tanh(first half) * sigmoid(second half): [..., C]."""
  filt, gate_in = jnp.split(h, 2, axis=-1)
  return jnp.tanh(filt) * jax.nn.sigmoid(gate_in)


class ResidualLayer(nn.Module):
  """One gated dilated layer. h: [B, T, width] -> (h_next [B, T, width], skip [B, T, width])."""
  width: int
  kernel_size: int
  dilation: int
  causal: bool

  @nn.compact
  def __call__(self, h):
    span = self.dilation * (self.kernel_size - 1)
    if self.causal:
      padding = [(span, 0)]
    else:
      if self.kernel_size % 2 != 1:
        raise ValueError(f"A centred WaveNet needs an odd kernel_size, got {self.kernel_size}.")
      padding = [(span // 2, span // 2)]
    z = nn.Conv(2 * self.width, (self.kernel_size,), kernel_dilation=(self.dilation,),
                padding=padding, name="dilated")(h)
    z = gate(z)
    residual = nn.Conv(self.width, (1,), name="residual")(z)
    skip = nn.Conv(self.width, (1,), name="skip")(z)
    return (h + residual) * math.sqrt(0.5), skip


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

  @nn.compact
  def __call__(self, x):
    h = nn.Conv(self.width, (1,), name="input")(x)
    skip_sum = jnp.zeros_like(h)
    for i, dilation in enumerate(dilations(self.n_layers, self.dilation_cycle)):
      h, skip = ResidualLayer(self.width, self.kernel_size, dilation, self.causal,
                              name=f"layer_{i}")(h)
      skip_sum = skip_sum + skip
    out = nn.relu(skip_sum)
    out = nn.relu(nn.Conv(self.width, (1,), name="head_hidden")(out))
    last_init = nn.initializers.zeros if self.zero_init_head else nn.linear.default_kernel_init
    return nn.Conv(self.out_channels, (1,), kernel_init=last_init, name="head_out")(out)
