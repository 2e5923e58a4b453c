#!/usr/bin/env bash
# One CPU host, one JAX process per group of cores: the K priors split over the processes
# (the `prior` mesh axis over whole processes, `train.make_mesh`), each process pinned to
# its own cores with a thread pool of their size, so that each trains its own priors
# with no kernel split across cores. On a CPU this beats one process whose every kernel
# is split over all cores (paper WaveNet train step: benchmarks/README.md). Arguments go
# to audiosep_jax.main on every process; paths are relative to the repository:
#   ./launch/cpu_processes.sh --config=configs/toy_wavenet.py:paper --workdir=workdirs/toy_wavenet --mode=all
#   PROCESSES  processes (default: one per core this shell may use); the cores are split
#              into that many equal contiguous groups, and unless the arguments set
#              config.training.prior_devices, it is PROCESSES (which must divide the K
#              sources: 4 cores per process on a 16-core host for the 4 toy priors)
#   PORT       the coordinator's port on 127.0.0.1 (default: a free one)
#   VENV, PYTHON, EXTRAS  see launch/setup_env.sh
# Process 0 logs to the terminal; the others print only warnings and errors. If one
# process fails, the others are stopped and the script exits with its status.
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "cpu_processes.sh: $*" >&2; exit 2; }
command -v taskset >/dev/null || fail "needs taskset (util-linux) to pin the processes."
read -r -a cores <<< "$("${PYTHON:-python3}" -c 'import os; print(*sorted(os.sched_getaffinity(0)))')"
PROCESSES=${PROCESSES:-${#cores[@]}}
[[ "$PROCESSES" =~ ^[1-9][0-9]*$ ]] || fail "PROCESSES=$PROCESSES is not a positive integer."
(( PROCESSES <= ${#cores[@]} )) || fail "PROCESSES=$PROCESSES, but this shell may use only ${#cores[@]} cores."
source launch/setup_env.sh
PORT=${PORT:-$(python -c 'from audiosep_jax import distributed; print(distributed.free_local_port())')}
per_process=$(( ${#cores[@]} / PROCESSES ))
args=("$@")
if [[ " $* " != *" --config.training.prior_devices"* ]]; then
  args+=("--config.training.prior_devices=$PROCESSES")
fi
pids=()
stop_all() { kill "${pids[@]}" 2>/dev/null || true; }
trap stop_all EXIT INT TERM
for (( i = 0; i < PROCESSES; i++ )); do
  group=$(IFS=,; echo "${cores[*]:i * per_process:per_process}")
  logging=(--alsologtostderr)
  (( i > 0 )) && logging=(--verbosity=-1)
  echo "cpu_processes.sh: process $i of $PROCESSES on cores $group"
  JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES=1 NPROC=$per_process \
    JAX_COORDINATOR_ADDRESS="127.0.0.1:$PORT" JAX_NUM_PROCESSES=$PROCESSES JAX_PROCESS_ID=$i \
    taskset -c "$group" python -m audiosep_jax.main "${logging[@]}" "${args[@]}" &
  pids+=($!)
done
for (( left = PROCESSES; left > 0; left-- )); do
  status=0
  wait -n || status=$?
  if (( status != 0 )); then
    echo "cpu_processes.sh: a process exited with status $status; stopping the others." >&2
    exit "$status"
  fi
done
trap - EXIT INT TERM
