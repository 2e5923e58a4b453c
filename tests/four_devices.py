"""Runs a Python script in a subprocess that sees 4 CPU devices (the test process has one)."""
import os
import subprocess
import sys

TIMEOUT_S = 300


def run_script(script):
  """script: Python source -> the finished subprocess (stdout and stderr captured)."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                        text=True, timeout=TIMEOUT_S)
