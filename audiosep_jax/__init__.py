"""Probabilistic audio source separation with deep generative priors, in JAX."""
