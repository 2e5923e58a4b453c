"""The BLAS weight-gradient experiment of benchmarks/ computes XLA's gradients.

`benchmarks/blas_weight_grad.py` times the priors' train step with every convolution's
weight gradient taken by a BLAS sgemm in an XLA FFI custom call; its speed-up counts only
if the gradients are the same. Built with g++ against numpy's bundled OpenBLAS.
"""
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audiosep_jax import priors
from audiosep_jax.data import toy
from benchmarks import blas_weight_grad
from configs import toy_flow
from configs import toy_wavenet

pytestmark = pytest.mark.skipif(shutil.which("g++") is None,
                                reason="g++ is needed to build the FFI kernel")


@pytest.fixture(scope="module")
def blas_conv1d():
  sgemm, ilp64 = blas_weight_grad.load_sgemm(
      "openblas", blas_weight_grad.default_library("openblas"), threads=1)
  with tempfile.TemporaryDirectory() as build_dir:
    blas_weight_grad.build_kernel(build_dir)
  return blas_weight_grad.blas_conv1d(sgemm, ilp64)


def test_conv1d_gradients_match_xla(blas_conv1d):
  blas_weight_grad.check_gradients(blas_conv1d)


@pytest.mark.parametrize("family", ["flow", "wavenet"])
def test_prior_parameter_gradients_match_xla(blas_conv1d, family):
  config = (toy_flow if family == "flow" else toy_wavenet).get_config("test")
  config.data.source_names = config.data.source_names[:1]
  prior = priors.build(config.model)
  x = toy.sample_sources(jax.random.key(0), 2, 96, config.data)[:, 0]
  params = prior.init(jax.random.key(1), x)
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape),
                        params)
  # A new function per trace: jax.jit caches traces by function, and the swap acts when
  # the model is traced.
  grad = lambda: jax.jit(jax.grad(lambda p: -jnp.mean(prior.log_prob(p, x))))
  want = grad()(params)
  with blas_weight_grad.swapped_conv1d(blas_conv1d):
    swapped = grad().lower(params)
  assert blas_weight_grad.FFI_TARGET in swapped.as_text()
  got = swapped.compile()(params)
  for (path, w), g in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5,
                               err_msg=jax.tree_util.keystr(path))
