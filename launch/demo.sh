#!/usr/bin/env bash
# The main job, on the CPU: sets up the environment, then for the FloWaveNet and the
# WaveNet priors on the toy oscillators trains, fine-tunes at the noise levels, runs the
# diagnostics, separates a few mixes and writes the report.
#   WORKDIR  output folder (default: workdirs/toy_demo)
#   VARIANT  config variant: demo (default, ~20 min on 2 cores) | test (seconds) | paper
# Extra arguments go to every run, e.g. ./launch/demo.sh --config.seed=3
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/install_system_deps.sh
source launch/setup_env.sh
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
WORKDIR=${WORKDIR:-workdirs/toy_demo}
VARIANT=${VARIANT:-demo}
for family in flow wavenet; do
  echo "=== toy_${family}:${VARIANT} -> ${WORKDIR}"
  python -m audiosep_jax.main --config="configs/toy_${family}.py:${VARIANT}" \
    --workdir="$WORKDIR" --mode=all --alsologtostderr "$@"
done
echo
echo "Done. The report: $WORKDIR/report/index.md (figures beside it);"
echo "TensorBoard: tensorboard --logdir $WORKDIR/tb"
