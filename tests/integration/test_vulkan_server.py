"""The real Vulkan llama-server, on one and on two devices: it serves, and every buffer its
log reports lands where the command asked (weights, KV cache, compute, output).

Without a GPU the devices are Mesa's lavapipe (``GGML_VK_VISIBLE_DEVICES=0`` gives one
2048 MiB device, ``0,0`` two). The tests skip, saying why, where no Vulkan llama-server runs
(see ``tests/vulkan_server.py``). Shapes this build is known to fail on are avoided: no
layer without KV heads, no quantized weights kept on the CPU.
"""

from __future__ import annotations

import pytest
from gguf import GGUFReader
from oracles.llamalog import MIB, LoadLog, parse_load_log

N_LAYER = 4  # enough layers to split over two devices
SHAPE = {"n_layer": N_LAYER}


def _served(server) -> LoadLog:
    """Send one completion (it must produce the tokens asked for), then parse the log."""
    out = server.post_json(
        "/completion", {"prompt": "hello world", "n_predict": 4, "ignore_eos": True}
    )
    assert out["tokens_predicted"] == 4 and isinstance(out["content"], str)
    return parse_load_log(server.log_text())


def _tensor_mib(path, name: str) -> float:
    (tensor,) = [t for t in GGUFReader(path).tensors if t.name == name]
    return int(tensor.n_bytes) / MIB


def _on(bufs, device: str) -> float:
    return bufs.get(device, 0.0)


def test_one_device_all_layers_holds_the_repeating_layers_and_the_host_keeps_token_embd(
    vulkan_server, tiny_model
):
    path = tiny_model("llama", **SHAPE)
    log = _served(vulkan_server(path, "-c", "1024", "-np", "1", "-ngl", "99", devices="0"))
    assert [d.name for d in log.devices] == ["Vulkan0"]
    assert (log.offloaded_layers, log.offloadable_layers) == (N_LAYER + 1, N_LAYER + 1)
    # every layer, the output included, is on the device; only the input embedding is not
    host = {k: v for k, v in log.model_buffers_mib.items() if k != "Vulkan0"}
    assert set(host) <= {"CPU", "CPU_Mapped", "CPU_REPACK", "Vulkan_Host"}
    assert sum(host.values()) == pytest.approx(_tensor_mib(path, "token_embd.weight"), abs=0.011)
    assert log.model_buffers_mib["Vulkan0"] > sum(host.values())
    assert set(log.kv_buffers_mib) == {"Vulkan0"}
    assert log.kv_buffers_mib["Vulkan0"] == pytest.approx(log.kv_total_mib, abs=0.011)
    assert _on(log.compute_buffers_mib, "Vulkan0") > 0
    assert log.output_buffer_type == "Vulkan_Host"


def test_one_device_ngl_0_keeps_every_weight_and_the_kv_cache_off_the_device(
    vulkan_server, tiny_model
):
    path = tiny_model("llama", **SHAPE)
    log = _served(vulkan_server(path, "-c", "1024", "-np", "1", "-ngl", "0", devices="0"))
    assert (log.offloaded_layers, log.offloadable_layers) == (0, N_LAYER + 1)
    assert "Vulkan0" not in log.model_buffers_mib and log.model_total_mib > 0
    assert "Vulkan0" not in log.kv_buffers_mib and log.kv_total_mib > 0


def test_two_devices_split_the_layers_and_their_kv_cache(vulkan_server, tiny_model):
    path = tiny_model("llama", **SHAPE)
    log = _served(vulkan_server(path, "-c", "1024", "-np", "1", "-ngl", "99", devices="0,0"))
    assert [d.name for d in log.devices] == ["Vulkan0", "Vulkan1"]
    devices = {
        name for name in log.buffer_names if name.startswith("Vulkan") and name[6:].isdigit()
    }
    assert devices == {"Vulkan0", "Vulkan1"}
    for device in ("Vulkan0", "Vulkan1"):
        assert _on(log.model_buffers_mib, device) > 0 and _on(log.kv_buffers_mib, device) > 0
    # each layer's cache is on one device: the parts add up to the whole
    assert sum(log.kv_buffers_mib.values()) == pytest.approx(log.kv_total_mib, abs=0.011)


def test_dev_puts_everything_on_the_device_named_of_two(vulkan_server, tiny_model):
    path = tiny_model("llama", **SHAPE)
    log = _served(vulkan_server(path, "-c", "1024", "-np", "1", "-dev", "Vulkan1", devices="0,0"))
    assert [d.name for d in log.devices] == ["Vulkan1"]
    assert "Vulkan0" not in log.buffer_names
    assert _on(log.model_buffers_mib, "Vulkan1") > 0 and _on(log.kv_buffers_mib, "Vulkan1") > 0


def test_a_device_the_environment_hides_is_refused(run_vulkan_until_exit, tiny_model):
    path = tiny_model("llama", **SHAPE)
    code, text = run_vulkan_until_exit(path, "-c", "1024", "-dev", "Vulkan1", devices="0")
    assert code not in (None, 0), "llama-server started on a device GGML_VK_VISIBLE_DEVICES hides"
    assert "invalid device: Vulkan1" in parse_load_log(text).refusal_reason


# wide enough that its 8k-token cache does not fit in what -fitt 1900 leaves of 2048 MiB
WIDE = {"n_layer": 8, "n_embd": 1024, "n_ff": 2048, "n_head": 8, "n_head_kv": 8, "n_ctx_train": 8192}


def test_a_squeezed_fit_still_starts_with_part_of_the_layers_on_the_device(vulkan_server, tiny_model):
    path = tiny_model("llama", **WIDE)
    log = _served(vulkan_server(path, "-np", "1", "-fitt", "1900", devices="0"))
    assert log.fit.outcome == "success" and not log.fit.no_changes
    assert 0 < log.offloaded_layers < log.offloadable_layers
    assert log.fit.layers_per_device == {"Vulkan0": log.offloaded_layers}
    # the layers left on the CPU keep their weights and their KV cache in host memory
    host = log.by_device["Host"]
    assert host.model_mib > _tensor_mib(path, "token_embd.weight") and host.kv_mib > 0
    assert log.n_ctx == log.fit.n_ctx_to <= WIDE["n_ctx_train"]
