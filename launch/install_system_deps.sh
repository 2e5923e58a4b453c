#!/usr/bin/env bash
# Installs the system libraries the project uses outside PyPI:
#   libfluidsynth3          loaded by pyfluidsynth to render the chorales dataset
#   libtcmalloc-minimal4    the allocator launch/setup_env.sh preloads: XLA:CPU allocates
#                           and frees large buffers every step, and glibc's malloc hands
#                           them back to the kernel each time (page faults: the flow train
#                           step ran 1.7x slower, benchmarks/README.md)
# Idempotent and non-interactive; runs as root or through sudo; when apt-get is not there
# it prints what to install by hand and exits 0 (the chorales tests then skip with a
# reason that names the library, and setup_env.sh keeps the system allocator).
set -euo pipefail

have_library() {  # have_library NAME: is lib NAME.so* on the loader's path?
  if command -v ldconfig >/dev/null 2>&1 && ldconfig -p 2>/dev/null | grep -q "$1\.so"; then
    return 0
  fi
  compgen -G "/usr/lib/*/$1.so*" >/dev/null || compgen -G "/usr/lib/$1.so*" >/dev/null
}

missing=()
have_library libfluidsynth || missing+=(libfluidsynth3)
have_library libtcmalloc_minimal || missing+=(libtcmalloc-minimal4)
if [ "${#missing[@]}" -eq 0 ]; then
  echo "install_system_deps: FluidSynth and tcmalloc are already installed."
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_system_deps: apt-get not found; skipping. Install ${missing[*]} (or your" \
       "distribution's FluidSynth and gperftools tcmalloc packages) by hand."
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
else
  echo "install_system_deps: not root and no password-less sudo; skipping. Run" \
       "'sudo apt-get install -y --no-install-recommends ${missing[*]}'."
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
echo "install_system_deps: installing ${missing[*]} with apt-get."
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
for library in libfluidsynth libtcmalloc_minimal; do
  if ! have_library "$library"; then
    echo "install_system_deps: apt-get ran but $library is not found." >&2
    exit 1
  fi
done
echo "install_system_deps: installed ${missing[*]}."
