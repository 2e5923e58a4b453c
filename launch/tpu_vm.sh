#!/usr/bin/env bash
# All workers of a Cloud TPU VM slice: run from your own machine; it starts the same
# command on every worker over `gcloud ... ssh --worker=all`, and JAX joins them (its TPU
# cluster detection). The repository must be at REPO_DIR on every worker (a clone on
# each, or a shared disk), and the workdir (and a stems data root) on a file system that
# every worker sees at the same path (NFS, Filestore, a gcsfuse mount): the checkpoints
# are written by all workers together. Arguments go to audiosep_jax.main:
#   TPU_NAME=my-v4-32 ZONE=us-central2-b ./launch/tpu_vm.sh \
#       --config=configs/musdb_flow.py:paper --workdir=/mnt/shared/musdb --mode=all
#   TPU_NAME   the TPU VM (required)
#   ZONE       its zone (default: gcloud's configured zone)
#   PROJECT    its project (default: gcloud's configured project)
#   REPO_DIR   the repository on the workers, no spaces (default: ~/audiosep_jax)
#   VENV, PYTHON, EXTRAS (default tpu)  as in launch/setup_env.sh, on the workers (the
#              package needs Python >= 3.11: e.g. PYTHON=python3.11 on older images)
set -euo pipefail
: "${TPU_NAME:?tpu_vm.sh: set TPU_NAME to the TPU VM}"
REPO_DIR=${REPO_DIR:-'~/audiosep_jax'}
gcloud_args=(compute tpus tpu-vm ssh "$TPU_NAME" --worker=all)
if [ -n "${ZONE:-}" ]; then
  gcloud_args+=(--zone="$ZONE")
fi
if [ -n "${PROJECT:-}" ]; then
  gcloud_args+=(--project="$PROJECT")
fi
# The remote command: the environment variables that the workers need, then the run.
remote="cd $REPO_DIR && export EXTRAS=$(printf '%q' "${EXTRAS:-tpu}")"
for name in VENV PYTHON; do
  if [ -n "${!name:-}" ]; then
    remote+=" $name=$(printf '%q' "${!name}")"
  fi
done
remote+=" AUDIOSEP_DISTRIBUTED=auto && source launch/setup_env.sh"
remote+=" && python -m audiosep_jax.main --alsologtostderr"
for arg in "$@"; do
  remote+=" $(printf '%q' "$arg")"
done
exec gcloud "${gcloud_args[@]}" --command="bash -c $(printf '%q' "$remote")"
