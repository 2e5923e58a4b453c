"""FloWaveNet (Kim et al. 2019) without conditioning: a normalizing flow on waveforms.

x [B, T] -> n_blocks x (squeeze, n_flows x (ActNorm, affine coupling, flip)) -> z [B, T].

  squeeze   [B, T, C] -> [B, T / 2, 2 C]: even and odd samples become channels.
  ActNorm   per-channel y = (x + loc) * exp(log_scale); data-dependent init (mean 0,
            std 1 on the batch given to `init`), done by the param initialisers, which
            only run inside `Prior.init(key, x)`: no hidden "initialized" state.
  coupling  a, b = halves; log_s, t = WaveNet(a); b' = (b - t) * exp(-log_s);
            log-det = -sum(log_s). The WaveNet is centred and its head zero-initialised,
            so every coupling starts as the identity.
  flip      swap the channel halves, so the other half is transformed next.

Every module maps (x, reverse) -> (y, logdet[B]); `reverse=True` runs the inverse and
returns the inverse's log-det. The latent `z` is returned in the time layout of `x`
(the squeezes undone), so `log N(z_t)` is a per-sample quantity.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from audiosep_jax.models import wavenet


def squeeze(x):
  """[B, T, C] -> [B, T / 2, 2 C]; channel 2c + j holds sample 2t + j of channel c."""
  b, t, c = x.shape
  if t % 2:
    raise ValueError(f"squeeze needs an even length, got {t}.")
  return x.reshape(b, t // 2, 2, c).transpose(0, 1, 3, 2).reshape(b, t // 2, 2 * c)


def unsqueeze(x):
  """Inverse of `squeeze`: [B, T, 2 C] -> [B, 2 T, C]."""
  b, t, c2 = x.shape
  return x.reshape(b, t, c2 // 2, 2).transpose(0, 1, 3, 2).reshape(b, 2 * t, c2 // 2)


def flip(x):
  """Swap the channel halves of [B, T, C] (its own inverse)."""
  a, b = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([b, a], axis=-1)


class ActNorm(nn.Module):
  """Per-channel affine, initialised on the init batch to mean 0 and std 1."""
  init_eps: float

  @nn.compact
  def __call__(self, x, reverse=False):
    """x: [B, T, C] -> (y [B, T, C], logdet [B])."""
    loc = self.param("loc", lambda _: -jnp.mean(x, axis=(0, 1)))
    log_scale = self.param(
        "log_scale", lambda _: -jnp.log(jnp.std(x, axis=(0, 1)) + self.init_eps))
    logdet = x.shape[1] * jnp.sum(log_scale) * jnp.ones(x.shape[0], x.dtype)
    if reverse:
      return x * jnp.exp(-log_scale) - loc, -logdet
    return (x + loc) * jnp.exp(log_scale), logdet


class AffineCoupling(nn.Module):
  """(a, b) -> (a, (b - t) * exp(-log_s)), (log_s, t) = WaveNet(a); x: [B, T, C], C even."""
  width: int
  n_layers: int
  kernel_size: int
  dilation_cycle: int
  residual_stream: str = "add"  # See wavenet.ResidualLayer.

  @nn.compact
  def __call__(self, x, reverse=False):
    a, b = jnp.split(x, 2, axis=-1)
    h = wavenet.WaveNet(out_channels=2 * a.shape[-1], width=self.width,
                        n_layers=self.n_layers, kernel_size=self.kernel_size,
                        dilation_cycle=self.dilation_cycle, causal=False,
                        zero_init_head=True, residual_stream=self.residual_stream,
                        name="wavenet")(a)
    log_s, shift = jnp.split(h, 2, axis=-1)
    logdet = -jnp.sum(log_s, axis=(1, 2))
    if reverse:
      return jnp.concatenate([a, b * jnp.exp(log_s) + shift], axis=-1), -logdet
    return jnp.concatenate([a, (b - shift) * jnp.exp(-log_s)], axis=-1), logdet


class FlowStep(nn.Module):
  """ActNorm, affine coupling, flip (and back in reverse)."""
  width: int
  n_layers: int
  kernel_size: int
  dilation_cycle: int
  actnorm_eps: float
  residual_stream: str = "add"

  @nn.compact
  def __call__(self, x, reverse=False):
    actnorm = ActNorm(self.actnorm_eps, name="actnorm")
    coupling = AffineCoupling(self.width, self.n_layers, self.kernel_size,
                              self.dilation_cycle, self.residual_stream, name="coupling")
    if reverse:
      x, logdet_c = coupling(flip(x), reverse=True)
      x, logdet_a = actnorm(x, reverse=True)
      return x, logdet_a + logdet_c
    x, logdet_a = actnorm(x)
    x, logdet_c = coupling(x)
    return flip(x), logdet_a + logdet_c


def remat_after_cotangent(fn):
  """fn(params, x) -> outputs, differentiable with only (params, x) kept for the backward
  pass, where fn is run again once the outputs' cotangent has arrived.

  The memory saving `jax.checkpoint` promises does not survive XLA:CPU: its optimization
  barriers are gone before common-subexpression elimination, which merges the recomputed
  forward pass back into the original one (same peak memory; benchmarks/README.md).
  Here the recomputation reads x + 0 * (a cotangent element), which XLA can neither
  merge with the forward pass nor schedule before that cotangent exists. A non-finite
  cotangent makes the gradients non-finite, as it would without rematerialisation.
  Reverse-mode only (custom_vjp): no jvp through it.
  """
  @jax.custom_vjp
  def rematerialised(params, x):
    return fn(params, x)

  def forward(params, x):
    return fn(params, x), (params, x)

  def backward(saved, cotangent):
    params, x = saved
    anchor = jnp.ravel(jax.tree.leaves(cotangent)[0])[0]
    x = jax.tree.map(lambda v: v + 0.0 * anchor, x)
    _, vjp = jax.vjp(fn, params, x)
    return vjp(cotangent)

  rematerialised.defvjp(forward, backward)
  return rematerialised


class FloWaveNet(nn.Module):
  """x: [B, T] -> (z [B, T], logdet [B]); T must be divisible by 2 ** n_blocks."""
  n_blocks: int
  n_flows: int
  n_layers: int
  width: int
  kernel_size: int = 3
  dilation_cycle: int = 10
  actnorm_eps: float = 1e-6
  remat: bool = False
  residual_stream: str = "add"  # See wavenet.ResidualLayer.

  def _steps(self):
    return [[FlowStep(self.width, self.n_layers, self.kernel_size, self.dilation_cycle,
                      self.actnorm_eps, self.residual_stream, name=f"block_{i}_flow_{j}")
             for j in range(self.n_flows)] for i in range(self.n_blocks)]

  def _run_step(self, step, h, reverse):
    """step(h, reverse) -> (h, logdet); with `remat`, through `remat_after_cotangent`."""
    if not self.remat or self.is_initializing():
      return step(h, reverse)
    unbound = step.clone(parent=None)
    apply = lambda params, v: unbound.apply({"params": params}, v, reverse)
    return remat_after_cotangent(apply)(self.variables["params"][step.name], h)

  def check_length(self, length):
    factor = 2 ** self.n_blocks
    if length % factor:
      raise ValueError(
          f"FloWaveNet with n_blocks={self.n_blocks} needs a length divisible by "
          f"{factor}, got {length}.")

  @nn.compact
  def __call__(self, x, reverse=False):
    """Forward x [B, T] -> (z [B, T], logdet [B]), or with reverse=True z -> (x, logdet of
    the inverse)."""
    if x.ndim != 2:
      raise ValueError(f"FloWaveNet takes x [B, T], got shape {x.shape}.")
    self.check_length(x.shape[-1])
    blocks = self._steps()
    h = x[..., None]
    logdet = jnp.zeros(x.shape[0], x.dtype)
    if reverse:
      for _ in range(self.n_blocks):
        h = squeeze(h)
      for steps in reversed(blocks):
        for step in reversed(steps):
          h, ld = self._run_step(step, h, True)
          logdet = logdet + ld
        h = unsqueeze(h)
      return h[..., 0], logdet
    for steps in blocks:
      h = squeeze(h)
      for step in steps:
        h, ld = self._run_step(step, h, False)
        logdet = logdet + ld
    for _ in range(self.n_blocks):
      h = unsqueeze(h)
    return h[..., 0], logdet
