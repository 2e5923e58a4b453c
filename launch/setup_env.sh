#!/usr/bin/env bash
# Creates the virtual environment if there is none and installs the package with the
# extras in $EXTRAS (re-installs only when setup.py or the extras changed), then puts the
# environment on PATH. Run it from the repository root. Meant to be sourced (the launch
# scripts do; by hand: `source launch/setup_env.sh`): it changes no shell option of the
# caller (no `set -e`), and on an error it prints why and returns 2 (exits 2 when run
# with bash instead of sourced).
#   VENV    where the environment lives (default: .venv in the repository); a relative
#           path is taken from the current directory and made absolute
#   PYTHON  the interpreter that creates it (default: python3)
#   EXTRAS  comma-separated extras of setup.py, e.g. "dev,chorales" (default: none)
#   ALLOCATOR  tcmalloc (default): preload libtcmalloc_minimal when it is installed
#           (launch/install_system_deps.sh) and LD_PRELOAD is not set; system: do not
# Every step checks its own status: the caller's options (errexit, nounset, pipefail,
# on or off) change nothing here.

_audiosep_setup_env() {
  local fail="setup_env:"
  case "${ALLOCATOR:-tcmalloc}" in
    tcmalloc|system) ;;
    *) echo "$fail ALLOCATOR must be tcmalloc or system, got '${ALLOCATOR:-}'." >&2
       return 2 ;;
  esac
  if [ ! -f setup.py ] || [ ! -d audiosep_jax ]; then
    echo "$fail run it from the repository root (no setup.py in $PWD)." >&2
    return 2
  fi
  VENV=${VENV:-.venv}
  PYTHON=${PYTHON:-python3}
  EXTRAS=${EXTRAS:-}
  case "$VENV" in
    /*) ;;
    *) VENV="$PWD/$VENV" ;;
  esac
  VENV=${VENV%/}
  if [ ! -x "$VENV/bin/python" ]; then
    echo "Creating the virtual environment $VENV with $PYTHON"
    if ! "$PYTHON" -m venv "$VENV"; then
      echo "$fail '$PYTHON -m venv $VENV' failed (set PYTHON to another interpreter)." >&2
      return 2
    fi
    if ! "$VENV/bin/python" -m pip install -q --upgrade pip; then
      echo "$fail upgrading pip in $VENV failed." >&2
      return 2
    fi
  fi
  local sha stamp wanted
  if ! sha=$(sha256sum setup.py) || [ -z "$sha" ]; then
    echo "$fail sha256sum setup.py failed." >&2
    return 2
  fi
  stamp="$VENV/.audiosep_installed"
  wanted="${sha%% *} extras=[$EXTRAS]"
  if [ ! -f "$stamp" ] || ! grep -qxF "$wanted" "$stamp"; then
    echo "Installing audiosep_jax${EXTRAS:+[$EXTRAS]} into $VENV"
    if ! "$VENV/bin/python" -m pip install -q -e ".${EXTRAS:+[$EXTRAS]}"; then
      echo "$fail pip install -e .${EXTRAS:+[$EXTRAS]} into $VENV failed." >&2
      return 2
    fi
    if ! echo "$wanted" >> "$stamp"; then
      echo "$fail cannot write $stamp." >&2
      return 2
    fi
  fi
  export PATH="$VENV/bin:$PATH"
  if [ "${ALLOCATOR:-tcmalloc}" = tcmalloc ] && [ -z "${LD_PRELOAD:-}" ]; then
    local tcmalloc
    # awk reads all of ldconfig's output (no early exit: no SIGPIPE under pipefail).
    tcmalloc=$(ldconfig -p 2>/dev/null \
      | awk '/libtcmalloc_minimal\.so\.4 / && !found {print $NF; found = 1}')
    if [ -n "$tcmalloc" ]; then
      export LD_PRELOAD="$tcmalloc"
    else
      echo "setup_env: libtcmalloc_minimal not found; the system allocator makes XLA:CPU" \
           "steps slower (launch/install_system_deps.sh installs it)."
    fi
  fi
  return 0
}

# Called in an `||` list, so a caller's errexit does not apply inside the function.
_audiosep_setup_env_status=0
_audiosep_setup_env || _audiosep_setup_env_status=$?
unset -f _audiosep_setup_env
# `return` outside a function works only in a sourced file: sourced, return; run, exit.
if (return 0 2>/dev/null); then
  eval "unset _audiosep_setup_env_status; return $_audiosep_setup_env_status"
fi
exit "$_audiosep_setup_env_status"
