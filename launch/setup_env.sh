#!/usr/bin/env bash
# Sourced by the launch scripts: creates the virtual environment if there is none and
# installs the package with the extras in $EXTRAS (re-installs only when setup.py changed).
#   VENV    where the environment lives (default: .venv in the repository)
#   PYTHON  the interpreter that creates it (default: python3)
#   EXTRAS  comma-separated extras of setup.py, e.g. "dev,chorales" (default: none)
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
