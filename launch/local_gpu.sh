#!/usr/bin/env bash
# One node, every visible GPU: one process, each batch split over the GPUs (the `data`
# mesh). Choose the GPUs with CUDA_VISIBLE_DEVICES. Arguments go to audiosep_jax.main;
# paths are relative to the repository:
#   ./launch/local_gpu.sh --config=configs/toy_flow.py:paper --workdir=workdirs/toy_flow --mode=all
#   VENV, PYTHON    see launch/setup_env.sh
#   EXTRAS          extras of setup.py to install (default: cuda12, JAX's CUDA 12 plugin)
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${EXTRAS:-cuda12} source launch/setup_env.sh
python - <<'EOF'
import sys
import jax
if jax.default_backend() != "gpu":
  sys.exit(f"local_gpu.sh: JAX sees no GPU (backend {jax.default_backend()!r}); check the "
           "NVIDIA driver, CUDA_VISIBLE_DEVICES and the cuda12 extra.")
print(f"local_gpu.sh: {jax.device_count()} GPUs: {[d.device_kind for d in jax.devices()]}")
EOF
exec python -m audiosep_jax.main --alsologtostderr "$@"
