#!/usr/bin/env bash
# Sourced by the launch scripts: creates the virtual environment if there is none and
# installs the package with the extras in $EXTRAS (re-installs only when setup.py changed).
#   VENV    where the environment lives (default: .venv in the repository)
#   PYTHON  the interpreter that creates it (default: python3)
#   EXTRAS  comma-separated extras of setup.py, e.g. "dev,chorales" (default: none)
#   ALLOCATOR  tcmalloc (default): preload libtcmalloc_minimal when it is installed
#           (launch/install_system_deps.sh) and LD_PRELOAD is not set; system: do not
set -euo pipefail
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS:-}
if [ ! -x "$VENV/bin/python" ]; then
  echo "Creating the virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
stamp="$VENV/.audiosep_installed"
wanted="$(sha256sum setup.py | cut -d' ' -f1) extras=[$EXTRAS]"
if [ ! -f "$stamp" ] || ! grep -qxF "$wanted" "$stamp"; then
  echo "Installing audiosep_jax${EXTRAS:+[$EXTRAS]} into $VENV"
  if [ -n "$EXTRAS" ]; then
    "$VENV/bin/pip" install -q -e ".[$EXTRAS]"
  else
    "$VENV/bin/pip" install -q -e .
  fi
  echo "$wanted" >> "$stamp"
fi
export PATH="$PWD/$VENV/bin:$PATH"
case "${ALLOCATOR:-tcmalloc}" in
  tcmalloc|system) ;;
  *) echo "setup_env: ALLOCATOR must be tcmalloc or system, got '${ALLOCATOR}'." >&2; exit 2 ;;
esac
if [ "${ALLOCATOR:-tcmalloc}" = tcmalloc ] && [ -z "${LD_PRELOAD:-}" ]; then
  tcmalloc=$( (ldconfig -p 2>/dev/null || true) | awk '/libtcmalloc_minimal\.so\.4 /{print $NF; exit}')
  if [ -n "$tcmalloc" ]; then
    export LD_PRELOAD="$tcmalloc"
  else
    echo "setup_env: libtcmalloc_minimal not found; the system allocator makes XLA:CPU" \
         "steps slower (launch/install_system_deps.sh installs it)."
  fi
fi
