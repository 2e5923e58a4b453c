#!/usr/bin/env bash
# Installs what the tests need (system FluidSynth, the package with [dev,chorales]) and
# runs the test suite. Extra arguments go to pytest, e.g. ./launch/test.sh -k flow
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/install_system_deps.sh
EXTRAS=dev,chorales source launch/setup_env.sh
export JAX_PLATFORMS=cpu
set +e
python -m pytest -n auto --dist loadfile -q "$@" tests
status=$?
set -e
# pytest exits 5 when it collected no test (e.g. a -k that matches nothing): say so,
# and do not fail on it.
if [ "$status" -eq 5 ]; then
  echo "test.sh: no test was collected."
  status=0
fi
exit "$status"
