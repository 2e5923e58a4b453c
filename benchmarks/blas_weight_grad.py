"""The convolutions' weight gradients through a BLAS sgemm: an XLA:CPU experiment.

  python benchmarks/blas_weight_grad.py [--cases=wavenet_paper_train,flow_paper_train] \
      [--blas=openblas|mkl] [--blas_threads=1] [--rounds=7] \
      [--out=benchmarks/results/blas_weight_grad.json]

XLA:CPU computes a weight gradient x^T @ dy ([rows, C]^T @ [rows, N], the rows long and C,
N small) several times slower per FLOP than the forward matmul, and first copies x
transposed (benchmarks/README.md). This script swaps in, for every `wavenet.conv1d` of the
priors, a `jax.custom_vjp` whose value and input gradient are XLA's as before and whose
weight gradient is one XLA FFI custom call per tap (kernels/blas_weight_grad.cc): a BLAS
sgemm reading the tap's rows of the padded input in place. It compiles that kernel with
g++ against jaxlib's FFI headers, checks the swapped convolution's gradients against
XLA's, then times one train step of each case on one CPU device (training.prior_loop
'map') as the project compiles it ('xla') and with the swap ('blas'), and PyTorch eager
(`torch_reference` with every core), alternating in one process as `compare_torch.py`
does.

--blas=openblas uses the OpenBLAS that numpy bundles (64-bit integers); --blas=mkl needs
`pip install mkl==2025.3.0` (MKL's libmkl_rt.so.2 in the environment's lib folder, or
--blas_library). --blas_threads is the BLAS's own thread count: with 1 the weight
gradients, which nothing waits for until the optimizer, run on one core while XLA's
threads go on with the input gradients.
"""
import contextlib
import ctypes
import functools
import glob
import os
import subprocess
import sys
import tempfile
from typing import NamedTuple

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import cases  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import common  # pylint: disable=g-import-not-at-top,wrong-import-position

KERNEL_SOURCE = os.path.join(ROOT, "benchmarks", "kernels", "blas_weight_grad.cc")
FFI_TARGET = "blas_weight_grad"

_CASES = flags.DEFINE_list("cases", ["wavenet_paper_train", "flow_paper_train"],
                           "Train-step cases of cases.CASES to time.")
_BLAS = flags.DEFINE_enum("blas", "openblas", ["openblas", "mkl"], "The sgemm to call.")
_BLAS_LIBRARY = flags.DEFINE_string(
    "blas_library", None, "Path of the BLAS shared library (default: numpy's OpenBLAS for "
    "--blas=openblas, <sys.prefix>/lib/libmkl_rt.so.2 for --blas=mkl).")
_BLAS_THREADS = flags.DEFINE_integer("blas_threads", 1, "Threads of the BLAS library.")
_ROUNDS = flags.DEFINE_integer("rounds", 7, "Timed rounds per case (median reported).")
_MIN_MEASURE_S = flags.DEFINE_float(
    "min_measure_s", 1.0, "Each timed measurement repeats the call for at least this long.")
_OUT = flags.DEFINE_string("out", None, "JSON file for the results (default: print only).")


# MKL_Set_Threading_Layer's values (mkl_service.h): one thread, or GNU OpenMP's threads.
MKL_THREADING_SEQUENTIAL = 1
MKL_THREADING_GNU = 3


class Blas(NamedTuple):
  """A BLAS library's sgemm symbol, its integer width and how to set its threads."""
  sgemm: str
  ilp64: bool
  set_threads: str
  set_threading_layer: str = ""  # MKL only, called before any sgemm.


BLAS = {
    "openblas": Blas("scipy_cblas_sgemm64_", True, "scipy_openblas_set_num_threads64_"),
    "mkl": Blas("cblas_sgemm", False, "MKL_Set_Num_Threads", "MKL_Set_Threading_Layer"),
}


def default_library(blas):
  """Path of the shared library that --blas names, or a ValueError saying what is missing."""
  if blas == "openblas":
    import numpy  # pylint: disable=g-import-not-at-top
    pattern = os.path.join(os.path.dirname(numpy.__file__), os.pardir, "numpy.libs",
                           "libscipy_openblas64_*.so")
    found = glob.glob(pattern)
    if not found:
      raise ValueError(f"--blas=openblas: no {pattern} (numpy built without its bundled "
                       "OpenBLAS); pass --blas_library.")
    return found[0]
  path = os.path.join(sys.prefix, "lib", "libmkl_rt.so.2")
  if not os.path.exists(path):
    raise ValueError(f"--blas=mkl: no {path}; `pip install mkl==2025.3.0` or pass "
                     "--blas_library.")
  return path


def load_sgemm(blas, library, threads):
  """(address of the library's sgemm, ilp64) with the library set to `threads` threads."""
  spec = BLAS[blas]
  lib = ctypes.CDLL(library)
  if spec.set_threading_layer:
    layer = MKL_THREADING_SEQUENTIAL if threads == 1 else MKL_THREADING_GNU
    getattr(lib, spec.set_threading_layer)(ctypes.c_int(layer))
  getattr(lib, spec.set_threads)(ctypes.c_int(threads))
  return ctypes.cast(getattr(lib, spec.sgemm), ctypes.c_void_p).value, spec.ilp64


def build_kernel(build_dir):
  """Compiles kernels/blas_weight_grad.cc into build_dir and registers its handler with
  XLA as the CPU FFI target FFI_TARGET."""
  import jax  # pylint: disable=g-import-not-at-top
  library = os.path.join(build_dir, "libblas_weight_grad.so")
  command = ["g++", "-O2", "-shared", "-fPIC", "-std=c++17", "-w",
             f"-I{jax.ffi.include_dir()}", KERNEL_SOURCE, "-o", library]
  try:
    subprocess.run(command, check=True, capture_output=True, text=True)
  except FileNotFoundError as e:
    raise RuntimeError("g++ is needed to build benchmarks/kernels/blas_weight_grad.cc") from e
  except subprocess.CalledProcessError as e:
    raise RuntimeError(f"Building {KERNEL_SOURCE} failed:\n{e.stderr}") from e
  handler = ctypes.CDLL(library).BlasWeightGrad
  jax.ffi.register_ffi_target(FFI_TARGET, jax.ffi.pycapsule(handler), platform="cpu")


def blas_conv1d(sgemm, ilp64):
  """`wavenet.conv1d` with the same value and input gradient, and each tap's weight
  gradient from the FFI target: (x [B, T, C_in], kernel [k, C_in, C_out], bias, dilation,
  padding) -> [B, T', C_out]."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from audiosep_jax.models import wavenet  # pylint: disable=g-import-not-at-top

  xla_conv1d = wavenet.conv1d

  def tap_weight_grad(padded, dy, offset):
    """padded: [B, T_pad, C_in], dy: [B, T', C_out] -> [C_in, C_out]."""
    out = jax.ShapeDtypeStruct((padded.shape[-1], dy.shape[-1]), jnp.float32)
    return jax.ffi.ffi_call(FFI_TARGET, out, vmap_method="sequential")(
        padded, dy, sgemm=np.int64(sgemm), ilp64=ilp64, offset=np.int64(offset))

  @functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
  def conv1d(x, kernel, bias, dilation, padding):
    return xla_conv1d(x, kernel, bias, dilation, padding)

  def forward(x, kernel, bias, dilation, padding):
    return xla_conv1d(x, kernel, bias, dilation, padding), (x, kernel)

  def backward(dilation, padding, saved, dy):
    x, kernel = saved
    _, x_vjp = jax.vjp(lambda x: xla_conv1d(x, kernel, 0.0, dilation, padding), x)
    padded = jnp.pad(x, ((0, 0), padding, (0, 0))) if any(padding) else x
    kernel_grad = jnp.stack([tap_weight_grad(padded, dy, j * dilation)
                             for j in range(kernel.shape[0])])
    return x_vjp(dy)[0], kernel_grad, jnp.sum(dy, axis=(0, 1))

  conv1d.defvjp(forward, backward)
  return lambda x, kernel, bias, dilation=1, padding=(0, 0): conv1d(
      x, kernel, bias, dilation, tuple(padding))


@contextlib.contextmanager
def swapped_conv1d(conv1d):
  """Every WaveNet traced inside uses conv1d in place of `wavenet.conv1d`."""
  from audiosep_jax.models import wavenet  # pylint: disable=g-import-not-at-top
  original = wavenet.conv1d
  wavenet.conv1d = conv1d
  try:
    yield
  finally:
    wavenet.conv1d = original


def check_gradients(conv1d):
  """Raises if conv1d's gradients differ from `wavenet.conv1d`'s on small convolutions:
  causal dilated, centred dilated and 1x1 (float32 sums: 1e-4 relative)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from audiosep_jax.models import wavenet  # pylint: disable=g-import-not-at-top

  keys = jax.random.split(jax.random.key(0), 3)
  for k, dilation, padding in ((2, 4, (4, 0)), (3, 2, (2, 2)), (1, 1, (0, 0))):
    x = jax.random.normal(keys[0], (2, 50, 8))
    kernel = jax.random.normal(keys[1], (k, 8, 6))
    bias = jax.random.normal(keys[2], (6,))
    grads = [jax.grad(lambda *a, f=f: jnp.sum(jnp.sin(f(*a, dilation, padding))),
                      argnums=(0, 1, 2))(x, kernel, bias) for f in (wavenet.conv1d, conv1d)]
    for name, want, got in zip(("x", "kernel", "bias"), *grads):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4,
                                 err_msg=f"d/d{name}, kernel {k}, dilation {dilation}")


def run_case(name, conv1d, rounds, min_measure_s):
  """{'xla_s', 'blas_s', 'torch_s', their rounds, ratios}: one case's train step timed
  alternately in this process."""
  from benchmarks import jax_steps  # pylint: disable=g-import-not-at-top

  case = cases.CASES[name]
  config = cases.get_config(case)
  config.training.prior_loop = "map"
  batch = cases.sample_batch(case, config)
  prior, optimizer, host_state = jax_steps.train_inputs(config, batch, config.seed)
  runners = {"xla": jax_steps.train_step(config, prior, optimizer, host_state, batch)[0]}
  with swapped_conv1d(conv1d):
    runners["blas"] = jax_steps.train_step(config, prior, optimizer, host_state, batch)[0]
  torch_runs = cases.torch_runners(case, config, batch, host_state.params, 0.0)
  runners["torch"] = torch_runs[f"torch_{common.num_cores()}t"]
  times = cases.time_alternately(runners, rounds, min_measure_s)
  result = {"case": name, **case._asdict()}
  result.update(cases.medians(times))
  result["xla_over_blas"] = result["xla_s"] / result["blas_s"]
  result["torch_over_xla"] = result["torch_s"] / result["xla_s"]
  result["torch_over_blas"] = result["torch_s"] / result["blas_s"]
  return result


def main(argv):
  del argv
  common.warn_without_tcmalloc()
  train_cases = [name for name, case in cases.CASES.items() if case.kind == "train"]
  unknown = [name for name in _CASES.value if name not in train_cases]
  if unknown:
    raise ValueError(f"--cases: {unknown} are not train cases; known: {', '.join(train_cases)}.")
  library = _BLAS_LIBRARY.value or default_library(_BLAS.value)
  sgemm, ilp64 = load_sgemm(_BLAS.value, library, _BLAS_THREADS.value)
  machine = {**cases.machine_info(), "blas": _BLAS.value, "blas_library": library,
             "blas_threads": _BLAS_THREADS.value}
  results = []
  with tempfile.TemporaryDirectory() as build_dir:
    build_kernel(build_dir)
    conv1d = blas_conv1d(sgemm, ilp64)
    check_gradients(conv1d)
    for name in _CASES.value:
      result = run_case(name, conv1d, _ROUNDS.value, _MIN_MEASURE_S.value)
      results.append(result)
      print(f"{name:22s} xla {result['xla_s']:.3f} s  blas {result['blas_s']:.3f} s  "
            f"torch {result['torch_s']:.3f} s  xla/blas {result['xla_over_blas']:.2f}  "
            f"torch/xla {result['torch_over_xla']:.2f}  "
            f"torch/blas {result['torch_over_blas']:.2f}", flush=True)
      if _OUT.value:
        common.write_json(_OUT.value, {"machine": machine, "results": results})


if __name__ == "__main__":
  app.run(main)
