#!/usr/bin/env bash
# Installs the system libraries the project needs outside PyPI: today only FluidSynth
# (libfluidsynth3, loaded by pyfluidsynth to render the chorales dataset).
# Idempotent and non-interactive; runs as root or through sudo; when apt-get is not
# there it prints what to install by hand and exits 0 (the tests that need FluidSynth
# then skip with a reason that names the library).
set -euo pipefail

have_fluidsynth() {
  if command -v ldconfig >/dev/null 2>&1 && ldconfig -p 2>/dev/null | grep -q "libfluidsynth\.so"; then
    return 0
  fi
  compgen -G "/usr/lib/*/libfluidsynth.so*" >/dev/null || compgen -G "/usr/lib/libfluidsynth.so*" >/dev/null
}

if have_fluidsynth; then
  echo "install_system_deps: FluidSynth is already installed."
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_system_deps: apt-get not found; skipping. Install the FluidSynth library" \
       "(libfluidsynth, e.g. 'brew install fluid-synth' or your distribution's package)" \
       "to render the chorales dataset."
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
else
  echo "install_system_deps: not root and no password-less sudo; skipping. Run" \
       "'sudo apt-get install -y --no-install-recommends libfluidsynth3' to render the chorales dataset."
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
echo "install_system_deps: installing libfluidsynth3 with apt-get."
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends libfluidsynth3
if ! have_fluidsynth; then
  echo "install_system_deps: libfluidsynth3 was installed but the library is not found." >&2
  exit 1
fi
echo "install_system_deps: FluidSynth installed."
