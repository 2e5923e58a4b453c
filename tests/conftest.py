"""Shared test set-up: the repository root on sys.path (for `configs`), CPU JAX, and a
persistent compilation cache so that the same train step compiled by several tests (and
by their subprocesses, through the environment) compiles once per test session, and no
LLVM optimisation of the compiled code: the suite's time is mostly XLA:CPU compiling tiny
programs, which jax_disable_most_optimizations shortens (the suite from a cold cache on 2
cores: 696 s without it, 495 s with it; XLA's HLO passes, whose results some tests check,
still run)."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(ROOT, ".pytest_cache", "jax_compilation_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
