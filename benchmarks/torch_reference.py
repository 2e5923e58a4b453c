"""PyTorch FloWaveNet and WaveNet, layer for layer the same as audiosep_jax/models.

What a researcher would otherwise write in PyTorch eager, used by `compare_torch.py` to
time both frameworks on the same architecture and data. It imports no JAX: weights come
from the JAX params (numpy arrays) through `load_flow_params` / `load_wavenet_params`,
and tests/test_torch_reference.py checks that both give the same log-densities.

Layout: channels first (NCW), torch's native conv layout. K priors: one module per
source (`Stacked`), looped over in Python, each with its own gradient clipping; one Adam
(foreach) over all of them, which is elementwise and so the same as K optimizers.

  WaveNet   input 1x1 conv; n_layers x (dilated conv width -> 2 width, tanh * sigmoid gate,
            residual 1x1 and skip 1x1; h <- (h + residual) * sqrt(0.5), skips summed);
            head ReLU, 1x1, ReLU, 1x1 (zero-initialised in couplings). Centred or causal.
  FloWaveNet n_blocks x (squeeze, n_flows x (ActNorm, affine coupling, flip)).
  AR prior  causal WaveNet on the input shifted by one sample, a 256-way categorical over
            linear (or mu-law) bins of [-1, 1]; log density = log P(bin) - log(bin width);
            the noise-level density convolves it with N(0, sigma^2) (PnF).
"""
import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def dilations(n_layers, dilation_cycle):
  """1, 2, 4, ..., restarting every `dilation_cycle` layers."""
  return tuple(2 ** (i % dilation_cycle) for i in range(n_layers))


class ResidualLayer(nn.Module):
  """h: [B, width, T] -> (h_next [B, width, T], skip [B, width, T])."""

  def __init__(self, width, kernel_size, dilation, causal):
    super().__init__()
    span = dilation * (kernel_size - 1)
    if not causal and kernel_size % 2 != 1:
      raise ValueError(f"A centred WaveNet needs an odd kernel_size, got {kernel_size}.")
    self.causal_pad = span if causal else 0
    self.dilated = nn.Conv1d(width, 2 * width, kernel_size, dilation=dilation,
                             padding=0 if causal else span // 2)
    self.residual = nn.Conv1d(width, width, 1)
    self.skip = nn.Conv1d(width, width, 1)

  def forward(self, h, last=False):
    """last=True skips the residual branch, whose output nothing reads."""
    z = h
    if self.causal_pad:
      z = F.pad(z, (self.causal_pad, 0))
    filt, gate_in = self.dilated(z).chunk(2, dim=1)
    z = torch.tanh(filt) * torch.sigmoid(gate_in)
    if last:
      return None, self.skip(z)
    return (h + self.residual(z)) * math.sqrt(0.5), self.skip(z)


class WaveNet(nn.Module):
  """x: [B, C_in, T] -> [B, out_channels, T]."""

  def __init__(self, in_channels, out_channels, width, n_layers, kernel_size=3,
               dilation_cycle=10, causal=False, zero_init_head=False):
    super().__init__()
    self.input = nn.Conv1d(in_channels, width, 1)
    self.layers = nn.ModuleList(
        ResidualLayer(width, kernel_size, d, causal)
        for d in dilations(n_layers, dilation_cycle))
    self.head_hidden = nn.Conv1d(width, width, 1)
    self.head_out = nn.Conv1d(width, out_channels, 1)
    if zero_init_head:
      nn.init.zeros_(self.head_out.weight)
      nn.init.zeros_(self.head_out.bias)

  def forward(self, x):
    h = self.input(x)
    skip_sum = torch.zeros_like(h)
    for i, layer in enumerate(self.layers):
      h, skip = layer(h, last=i == len(self.layers) - 1)
      skip_sum = skip_sum + skip
    out = F.relu(self.head_hidden(F.relu(skip_sum)))
    return self.head_out(out)


def squeeze(x):
  """[B, C, T] -> [B, 2 C, T / 2]; channel 2c + j holds sample 2t + j of channel c."""
  b, c, t = x.shape
  return x.reshape(b, c, t // 2, 2).transpose(2, 3).reshape(b, 2 * c, t // 2)


def unsqueeze(x):
  """Inverse of `squeeze`: [B, 2 C, T] -> [B, C, 2 T]."""
  b, c2, t = x.shape
  return x.reshape(b, c2 // 2, 2, t).transpose(2, 3).reshape(b, c2 // 2, 2 * t)


def flip(x):
  """Swap the channel halves of [B, C, T]."""
  a, b = x.chunk(2, dim=1)
  return torch.cat([b, a], dim=1)


class ActNorm(nn.Module):
  """y = (x + loc) * exp(log_scale) per channel; x: [B, C, T] -> (y, logdet [B])."""

  def __init__(self, channels):
    super().__init__()
    self.loc = nn.Parameter(torch.zeros(1, channels, 1))
    self.log_scale = nn.Parameter(torch.zeros(1, channels, 1))

  def forward(self, x):
    logdet = x.shape[2] * self.log_scale.sum()
    return (x + self.loc) * torch.exp(self.log_scale), logdet.expand(x.shape[0])


class AffineCoupling(nn.Module):
  """(a, b) -> (a, (b - t) * exp(-log_s)), (log_s, t) = WaveNet(a); x: [B, C, T]."""

  def __init__(self, channels, width, n_layers, kernel_size, dilation_cycle):
    super().__init__()
    self.wavenet = WaveNet(channels // 2, channels, width, n_layers, kernel_size,
                           dilation_cycle, causal=False, zero_init_head=True)

  def forward(self, x):
    a, b = x.chunk(2, dim=1)
    log_s, shift = self.wavenet(a).chunk(2, dim=1)
    return torch.cat([a, (b - shift) * torch.exp(-log_s)], dim=1), -log_s.sum(dim=(1, 2))


class FlowStep(nn.Module):
  """ActNorm, affine coupling, flip."""

  def __init__(self, channels, width, n_layers, kernel_size, dilation_cycle):
    super().__init__()
    self.actnorm = ActNorm(channels)
    self.coupling = AffineCoupling(channels, width, n_layers, kernel_size, dilation_cycle)

  def forward(self, x):
    x, logdet_a = self.actnorm(x)
    x, logdet_c = self.coupling(x)
    return flip(x), logdet_a + logdet_c


class FloWaveNet(nn.Module):
  """x: [B, T] -> (z [B, T], logdet [B]); T divisible by 2 ** n_blocks."""

  def __init__(self, n_blocks, n_flows, n_layers, width, kernel_size=3, dilation_cycle=10):
    super().__init__()
    self.n_blocks = n_blocks
    self.blocks = nn.ModuleList(
        nn.ModuleList(FlowStep(2 ** (i + 1), width, n_layers, kernel_size, dilation_cycle)
                      for _ in range(n_flows))
        for i in range(n_blocks))

  def forward(self, x):
    if x.shape[-1] % 2 ** self.n_blocks:
      raise ValueError(f"FloWaveNet with n_blocks={self.n_blocks} needs a length divisible "
                       f"by {2 ** self.n_blocks}, got {x.shape[-1]}.")
    h = x[:, None, :]
    logdet = x.new_zeros(x.shape[0])
    for steps in self.blocks:
      h = squeeze(h)
      for step in steps:
        h, ld = step(h)
        logdet = logdet + ld
    for _ in range(self.n_blocks):
      h = unsqueeze(h)
    return h[:, 0], logdet

  def log_prob(self, x):
    """x: [B, T] -> [B, T], nats per sample: log N(z_t) + logdet / T."""
    z, logdet = self(x)
    return -0.5 * z.square() - LOG_SQRT_2PI + (logdet / x.shape[-1])[:, None]

  def level_log_prob(self, x, sigma):
    """A flow fine-tuned at sigma models the noisy data itself: log_prob(x)."""
    del sigma
    return self.log_prob(x)


def bin_edges(num_bins, quantization, mu):
  """num_bins + 1 increasing edges on [-1, 1] (float64): equal widths in the waveform
  ('linear') or in mu-law space ('mu_law')."""
  if quantization not in ("linear", "mu_law"):
    raise ValueError(f"quantization must be 'linear' or 'mu_law', got {quantization!r}.")
  edges = np.linspace(-1.0, 1.0, num_bins + 1)
  if quantization == "mu_law":
    edges = np.sign(edges) * np.expm1(np.abs(edges) * np.log1p(mu)) / mu
  return edges


class AutoregressiveWaveNet(nn.Module):
  """Causal WaveNet prior: p(x_t | x_{<t}) categorical over `num_bins` bins of [-1, 1].

  x: [B, T] -> log_prob [B, T], nats per sample: log P(bin of x_t) - log(width of the bin
  in the waveform). The input is the continuous waveform shifted right by one sample.
  `level_log_prob(x, sigma)`: that piecewise-uniform density convolved with N(0, sigma^2).
  """

  def __init__(self, n_layers, width, kernel_size=2, dilation_cycle=10, num_bins=256,
               quantization="linear", mu=255.0):
    super().__init__()
    self.num_bins = num_bins
    self.quantization = quantization
    self.mu = mu
    edges = bin_edges(num_bins, quantization, mu)
    self.register_buffer("lower", _tensor(edges[:-1]), persistent=False)
    self.register_buffer("upper", _tensor(edges[1:]), persistent=False)
    self.register_buffer("log_width", _tensor(np.log(edges[1:] - edges[:-1])), persistent=False)
    self.wavenet = WaveNet(1, num_bins, width, n_layers, kernel_size, dilation_cycle,
                           causal=True)

  def bin_index(self, x):
    """x: [B, T] -> the bin of each sample [B, T] (long); outside [-1, 1]: the edge bins."""
    y = x.clamp(-1.0, 1.0)
    if self.quantization == "mu_law":
      y = torch.sign(y) * torch.log1p(self.mu * torch.abs(y)) / math.log1p(self.mu)
    return ((y + 1.0) * (0.5 * self.num_bins)).floor().clamp(0, self.num_bins - 1).long()

  def log_probs(self, x):
    """x: [B, T] -> normalised log P(bin | x_{<t}) [B, num_bins, T]."""
    shifted = F.pad(x[:, :-1], (1, 0))
    return F.log_softmax(self.wavenet(shifted[:, None, :]), dim=1)

  def log_prob(self, x):
    index = self.bin_index(x)
    picked = torch.gather(self.log_probs(x), 1, index[:, None, :])[:, 0]
    return picked - self.log_width[index]

  def level_log_prob(self, x, sigma):
    """log sum_b P(b) (Phi((hi_b - x) / s) - Phi((lo_b - x) / s)) / width_b: [B, T]."""
    y = x[:, None, :]
    a = (self.lower[None, :, None] - y) / sigma
    b = (self.upper[None, :, None] - y) / sigma
    flipped = a > 0  # Keep both CDFs in the lower tail.
    lo = torch.where(flipped, -b, a)
    hi = torch.where(flipped, -a, b)
    log_hi = torch.special.log_ndtr(hi)
    delta = torch.clamp(torch.special.log_ndtr(lo) - log_hi, max=-1e-30)
    log_mass = log_hi + torch.log(-torch.expm1(delta))
    terms = self.log_probs(x) - self.log_width[None, :, None] + log_mass
    return torch.logsumexp(terms, dim=1)


class Stacked(nn.Module):
  """K independent priors, one module per source: x [B, K, T] -> [B, K, T]."""

  def __init__(self, models):
    super().__init__()
    self.priors = nn.ModuleList(models)

  def log_prob(self, x):
    return torch.stack([m.log_prob(x[:, k]) for k, m in enumerate(self.priors)], dim=1)

  def level_log_prob(self, x, sigma):
    return torch.stack([m.level_log_prob(x[:, k], sigma) for k, m in enumerate(self.priors)],
                       dim=1)


def from_config(model_config):
  """One source's torch prior for a `config.model` (family 'flow' or 'wavenet')."""
  m = model_config
  if m.family == "flow":
    return FloWaveNet(m.n_blocks, m.n_flows, m.n_layers, m.width, m.kernel_size,
                      m.dilation_cycle)
  if m.family == "wavenet":
    return AutoregressiveWaveNet(m.n_layers, m.width, m.kernel_size, m.dilation_cycle,
                                 m.num_bins, m.quantization, m.mu)
  raise ValueError(f"Unknown config.model.family {m.family!r}; choose 'flow' or 'wavenet'.")


def stacked_from_jax(model_config, params):
  """The K torch priors holding the JAX params stacked [K, ...] (nested dicts of arrays)."""
  load = load_flow_params if model_config.family == "flow" else load_wavenet_params
  num_priors = len(np.asarray(_first_leaf(params)))
  return Stacked([load(from_config(model_config), unstack(params, k))
                  for k in range(num_priors)])


# Weights from the JAX params ------------------------------------------------------------


def _tensor(array):
  return torch.from_numpy(np.array(array, dtype=np.float32))


def _conv_state(prefix, conv_params):
  """Flax Conv {kernel [k, in, out], bias [out]} -> torch Conv1d weight [out, in, k], bias."""
  return {f"{prefix}.weight": _tensor(np.asarray(conv_params["kernel"]).transpose(2, 1, 0)),
          f"{prefix}.bias": _tensor(conv_params["bias"])}


def wavenet_state(prefix, params):
  """Flax `wavenet.WaveNet` params -> the state dict entries of a torch `WaveNet`."""
  state = {}
  state.update(_conv_state(f"{prefix}input", params["input"]))
  i = 0
  while f"layer_{i}" in params:
    layer = params[f"layer_{i}"]
    for name in ("dilated", "residual", "skip"):
      state.update(_conv_state(f"{prefix}layers.{i}.{name}", layer[name]))
    i += 1
  state.update(_conv_state(f"{prefix}head_hidden", params["head_hidden"]))
  state.update(_conv_state(f"{prefix}head_out", params["head_out"]))
  return state


def flow_state(params):
  """One prior's JAX FloWaveNet params (nested dicts of arrays) -> a torch state dict."""
  state = {}
  i = 0
  while f"block_{i}_flow_0" in params:
    j = 0
    while f"block_{i}_flow_{j}" in params:
      p = params[f"block_{i}_flow_{j}"]
      prefix = f"blocks.{i}.{j}."
      state[prefix + "actnorm.loc"] = _tensor(p["actnorm"]["loc"]).reshape(1, -1, 1)
      state[prefix + "actnorm.log_scale"] = _tensor(p["actnorm"]["log_scale"]).reshape(1, -1, 1)
      state.update(wavenet_state(prefix + "coupling.wavenet.", p["coupling"]["wavenet"]))
      j += 1
    i += 1
  return state


def autoregressive_state(params):
  """One prior's JAX autoregressive WaveNet params -> a torch state dict."""
  return wavenet_state("wavenet.", params["wavenet"])


def load_flow_params(model, params):
  """Copies one prior's JAX FloWaveNet params into the torch `model` (all keys must match)."""
  model.load_state_dict(flow_state(params), strict=True)
  return model


def load_wavenet_params(model, params):
  """Copies one prior's JAX autoregressive WaveNet params into the torch `model`."""
  model.load_state_dict(autoregressive_state(params), strict=True)
  return model


def unstack(params, k):
  """The k-th prior's params of a JAX params pytree stacked [K, ...] (nested dicts)."""
  if hasattr(params, "items"):
    return {name: unstack(value, k) for name, value in params.items()}
  return np.asarray(params[k])


def _first_leaf(params):
  while hasattr(params, "items"):
    params = next(iter(params.values()))
  return params


# Steps ----------------------------------------------------------------------------------


def make_train_step(stacked, learning_rate, b1, b2, eps, clip_norm):
  """step(batch [B, K, T]) -> losses [K]: forward, backward, per-prior clipping, Adam.

  Loss of prior k: mean negative log-likelihood (nats per sample) of source k.
  """
  optimizer = torch.optim.Adam(stacked.parameters(), lr=learning_rate, betas=(b1, b2),
                               eps=eps, foreach=True)

  def step(batch):
    optimizer.zero_grad(set_to_none=True)
    losses = -stacked.log_prob(batch).mean(dim=(0, 2))
    losses.sum().backward()
    for prior in stacked.priors:
      torch.nn.utils.clip_grad_norm_(prior.parameters(), clip_norm, foreach=True)
    optimizer.step()
    return losses.detach()

  return step


def make_score_fn(stacked, sigma=None):
  """The Langevin inner step's model work: x [B, K, T] -> (sum log p, d/dx [B, K, T]).

  sigma None: `log_prob`; a float: `level_log_prob(x, sigma)` (the noise-level density).
  """
  for p in stacked.parameters():
    p.requires_grad_(False)

  def score(x):
    x = x.detach().requires_grad_(True)
    log_p = stacked.log_prob(x) if sigma is None else stacked.level_log_prob(x, sigma)
    total = log_p.sum()
    (grad,) = torch.autograd.grad(total, x)
    return total.detach(), grad

  return score
