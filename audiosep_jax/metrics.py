"""Separation metrics in jnp: SI-SDR, SI-SDRi and SDR, in dB over the last axis.

Every function broadcasts over leading axes (`[...,  T] -> [...]`), so one call scores
all mixes and sources `[B, K, T]` at once, and is jit-able and differentiable.

  si_sdr   scale-invariant SDR (Le Roux et al. 2019): both signals are made zero-mean,
           the reference is scaled by the least-squares factor
           alpha = <s_hat, s> / ||s||^2, and
           SI-SDR = 10 log10(||alpha s||^2 / ||alpha s - s_hat||^2).
           Invariant to scaling and offsetting the estimate (while its error energy
           stays >> eps).
  si_sdr_improvement   SI-SDR(estimate) - SI-SDR(mix as the estimate), per source.
  sdr      the plain signal-to-error ratio 10 log10(||s||^2 / ||s - s_hat||^2): no mean
           removal, no scaling, and NOT BSS-Eval's SDR (which first allows a 512-tap
           distortion filter on the reference).

eps: every ratio is 10 log10(signal / (error + eps) + eps), so exact estimates and silent
signals give finite numbers: an exact estimate scores 10 log10(||s||^2 / eps + eps), a
silent (or constant) estimate, whose SI-SDR target alpha s is 0, scores 10 log10(eps) =
-80 dB, below any real separation, so a separator that collapsed to silence shows as
such. eps is negligible for audio-scale signals (energies >> 1e-8).
"""
import jax.numpy as jnp

EPS = 1e-8


def _db_ratio(signal_energy, error_energy, eps):
  return 10.0 * jnp.log10(signal_energy / (error_energy + eps) + eps)


def si_sdr(estimate, reference, eps=EPS):
  """Scale-invariant SDR in dB. estimate, reference: [..., T] (broadcastable) -> [...]."""
  estimate = estimate - jnp.mean(estimate, axis=-1, keepdims=True)
  reference = reference - jnp.mean(reference, axis=-1, keepdims=True)
  reference_energy = jnp.sum(jnp.square(reference), axis=-1, keepdims=True)
  alpha = jnp.sum(estimate * reference, axis=-1, keepdims=True) / (reference_energy + eps)
  target = alpha * reference
  error = estimate - target
  return _db_ratio(jnp.sum(jnp.square(target), axis=-1),
                   jnp.sum(jnp.square(error), axis=-1), eps)


def si_sdr_improvement(estimate, reference, mix, eps=EPS):
  """SI-SDRi in dB: estimate, reference [..., K, T], mix [..., T] -> [..., K]."""
  return si_sdr(estimate, reference, eps) - si_sdr(mix[..., None, :], reference, eps)


def sdr(estimate, reference, eps=EPS):
  """Plain signal-to-error ratio in dB (see the module docstring): [..., T] -> [...]."""
  return _db_ratio(jnp.sum(jnp.square(reference), axis=-1),
                   jnp.sum(jnp.square(reference - estimate), axis=-1), eps)


def separation_metrics(estimates, references, mix, eps=EPS):
  """All metrics of one batch of separations.

  estimates, references: [B, K, T]; mix: [B, T]. Returns a dict of
    si_sdr, si_sdri, sdr, mix_si_sdr (the mix-as-estimate baseline): [B, K] each,
  and their means over the batch, mean_<name>: [K].
  """
  if estimates.shape != references.shape:
    raise ValueError(f"estimates {estimates.shape} and references {references.shape} "
                     "must have the same shape [B, K, T].")
  if mix.shape != (references.shape[0], references.shape[2]):
    raise ValueError(f"mix {mix.shape} must be [B, T] for references {references.shape}.")
  per_mix = {
      "si_sdr": si_sdr(estimates, references, eps),
      "si_sdri": si_sdr_improvement(estimates, references, mix, eps),
      "sdr": sdr(estimates, references, eps),
      "mix_si_sdr": si_sdr(mix[:, None, :], references, eps),
  }
  means = {f"mean_{name}": jnp.mean(value, axis=0) for name, value in per_mix.items()}
  return {**per_mix, **means}
