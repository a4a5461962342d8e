"""The offload rows of ``kvwall plan`` against a real Vulkan llama-server (lavapipe): each
row's command, started as it is printed, puts exactly the weights and KV cache on Vulkan0
that the row says (to 0.01 MiB, as llama-server logs them; the weights of the ``-nkvo``
row, which leaves ``--fit`` on, depend on its compute-buffer estimates and are not
compared).

Needs a Vulkan llama-server that runs on this CPU: ``KVWALL_TEST_VULKAN_SERVER`` (e.g. a
b11434 build from source); skipped otherwise (the b10434 wheel's CPU backend needs
AVX-512, see docs/llamacpp-notes.md).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from kvwall.budget.cmdline.parse import parse_command_line
from kvwall.budget.whatif import offload_table
from kvwall.monitors.gguf import read_model
from oracles.llamalog import parse_load_log
from ports import free_port

MiB = 1 << 20
EXE = os.environ.get("KVWALL_TEST_VULKAN_SERVER", "")
ENV = {"GGML_VK_VISIBLE_DEVICES": "0"}  # one lavapipe device: Vulkan0

pytestmark = pytest.mark.skipif(
    not (EXE and os.access(EXE, os.X_OK)),
    reason="set KVWALL_TEST_VULKAN_SERVER to a Vulkan llama-server that runs on this CPU "
           "(the b10434 wheel dies with SIGILL without AVX-512)",
)


def _env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("LLAMA_")}, **ENV}


def _free_mib() -> int:
    """Vulkan0's free memory, as llama-server lists it."""
    out = subprocess.run([EXE, "--list-devices"], env=_env(), capture_output=True, text=True,
                         timeout=60).stdout
    found = re.search(r"Vulkan0: .*\((\d+) MiB, (\d+) MiB free\)", out)
    if found is None:
        pytest.skip(f"no Vulkan0 device (install mesa-vulkan-drivers): {out[-300:]!r}")
    return int(found.group(2))


def _start_and_log(command: str, tmp_path, deadline_s: float = 120.0) -> str:
    """Start ``command`` (its argv as printed) until /health answers, then stop it."""
    port = free_port()
    argv = [EXE, *shlex.split(command)[1:], "--host", "127.0.0.1", "--port", str(port), "-lv", "4"]
    log = tmp_path / f"server-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=_env())
    try:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1.0) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            try:
                proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=20)
    return log.read_text(errors="replace")


def test_each_offload_lever_puts_on_vulkan0_what_its_row_says(tiny_model, tmp_path):
    path = str(tiny_model("qwen3moe", n_layer=8, n_embd=256, n_expert=16, n_expert_used=2,
                          n_ff_exp=256, n_ctx_train=8192))
    model = read_model(path)
    free = {"Vulkan0": _free_mib() * MiB}
    # -fitt squeezes what --fit may use, so it moves experts of this tiny model to the CPU
    config = parse_command_line(["llama-server", "-m", path, "-c", "4096", "-np", "1", "-fitt",
                                 str(_free_mib() - 60)])
    rows = offload_table(model, config, memory_bytes=free["Vulkan0"], gpu_names=("Vulkan0",),
                         device_free=free)
    first = {}
    for row in rows:
        first.setdefault(row.label.split()[0], row)  # one row per flag: -ngl, -ncmoe, -ot, -nkvo
    assert set(first) == {"-ngl", "-ncmoe", "-ot", "-nkvo"}, [r.label for r in rows]
    for flag, row in first.items():
        log = parse_load_log(_start_and_log(row.command, tmp_path))
        assert log.loaded, (flag, log.errors)
        gpu = next(d for d in row.plan.devices if d.name == "Vulkan0")
        if flag != "-nkvo":  # -nkvo leaves --fit on: it re-places by compute estimates (15%)
            weights = log.model_buffers_mib.get("Vulkan0", 0.0)
            assert weights == pytest.approx(gpu.weights_bytes / MiB, abs=0.01), flag
        assert log.kv_buffers_mib.get("Vulkan0", 0.0) == pytest.approx(gpu.kv_bytes / MiB, abs=0.01), flag
        host_kv = sum(v for k, v in log.kv_buffers_mib.items() if k.startswith("CPU"))
        assert host_kv == pytest.approx(next(d for d in row.plan.devices if d.is_host).kv_bytes / MiB, abs=0.01)
