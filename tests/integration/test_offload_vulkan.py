"""The offload rows of ``kvwall plan`` against the real Vulkan llama-server (lavapipe): each
row's command, started as it is printed, puts exactly the weights and KV cache on Vulkan0
that the row says (to 0.01 MiB, as llama-server logs them), ``--fit``'s own choice again
for the ``-nkvo`` row, which leaves it on."""

from __future__ import annotations

import re
import shlex

import pytest
from kvwall.budget.cmdline.parse import parse_command_line
from kvwall.budget.whatif import offload_table
from kvwall.monitors.gguf import read_model
from oracles.llamalog import parse_load_log

MiB = 1 << 20


def _free_mib(found) -> int:
    """Vulkan0's free memory, as the server's ``--list-devices`` says it."""
    for line in found.devices:
        m = re.match(r"Vulkan0: .*\((\d+) MiB, (\d+) MiB free\)", line)
        if m:
            return int(m.group(2))
    pytest.skip(f"no free memory in the device list: {found.devices}")


def test_each_offload_lever_puts_on_vulkan0_what_its_row_says(tiny_model, vulkan_server, vulkan_server_found):
    path = str(tiny_model("qwen3moe", n_layer=8, n_embd=256, n_expert=16, n_expert_used=2,
                          n_ff_exp=256, n_ctx_train=8192))
    model = read_model(path)
    free_mib = _free_mib(vulkan_server_found)
    free = {"Vulkan0": free_mib * MiB}
    # -fitt squeezes what --fit may use, so it moves experts of this tiny model to the CPU
    config = parse_command_line(["llama-server", "-m", path, "-c", "4096", "-np", "1", "-fitt",
                                 str(free_mib - 60)])
    rows = offload_table(model, config, memory_bytes=free["Vulkan0"], gpu_names=("Vulkan0",),
                         device_free=free)
    first = {}
    for row in rows:
        first.setdefault(row.label.split()[0], row)  # one row per flag: -ngl, -ncmoe, -ot, -nkvo
    assert set(first) == {"-ngl", "-ncmoe", "-ot", "-nkvo"}, [r.label for r in rows]
    for flag, row in first.items():
        argv = shlex.split(row.command)
        assert argv[1:3] == ["-m", path]
        server = vulkan_server(path, *argv[3:])
        log = parse_load_log(server.log_text())
        server.stop()
        assert log.loaded, (flag, log.errors)
        gpu = next(d for d in row.plan.devices if d.name == "Vulkan0")
        host = next(d for d in row.plan.devices if d.is_host)
        weights = log.model_buffers_mib.get("Vulkan0", 0.0)
        assert weights == pytest.approx(gpu.weights_bytes / MiB, abs=0.01), flag
        assert log.kv_buffers_mib.get("Vulkan0", 0.0) == pytest.approx(gpu.kv_bytes / MiB, abs=0.01), flag
        host_kv = sum(v for k, v in log.kv_buffers_mib.items() if k.startswith("CPU"))
        assert host_kv == pytest.approx(host.kv_bytes / MiB, abs=0.01), flag
