"""``kvwall plan`` against a real Vulkan llama-server, per device: weights and KV cache to the
logged 0.01 MiB, the context exactly, where ``--fit`` puts the layers exactly, and the
compute buffers within 15 % (25 % where a GPU runs the work of layers left on the CPU).

Each case starts the server (``-lv 4``) on lavapipe devices of 2048 MiB
(``GGML_VK_VISIBLE_DEVICES=0`` or ``0,0``), parses its log with ``oracles.llamalog`` and
compares it with ``plan_memory`` for the same command line, with the devices the binary
lists. ``-fitt`` squeezes what ``--fit`` may use, so tiny models exercise its real
decisions: shrinking a context that was not given, filling layers back to front over one
or two devices, keeping MoE experts on the CPU. Shapes this build fails on are avoided (no
layer without KV heads, no quantized weights on the CPU).
"""

from __future__ import annotations

import pytest
from kvwall.budget.cmdline.parse import parse_command_line
from kvwall.budget.memory import plan_memory
from kvwall.monitors.gguf import read_model
from oracles.llamalog import DeviceBuffers, parse_load_log

MiB = 1 << 20
LOG_RESOLUTION_MIB = 0.011  # llama.cpp prints MiB with two decimals
LAVAPIPE_MIB = 2048

BIG = {"n_layer": 8, "n_embd": 512, "n_ff": 2048, "n_head": 8, "n_head_kv": 4,
       "n_ctx_train": 32768, "n_vocab": 2000}  # fmt: skip
BIG_MOE = {"n_layer": 8, "n_embd": 256, "n_head": 8, "n_head_kv": 4, "n_ctx_train": 32768}

# (id, kind, model overrides, devices, llama-server args, compute tolerance)
CASES = [
    ("gqa-all", "llama", {}, "0", ("-c", "1024", "-np", "1"), 0.15),
    ("gqa-ngl0", "llama", {}, "0", ("-c", "1024", "-np", "1", "-ngl", "0"), 0.25),
    ("gqa-ngl-partial", "llama", {}, "0", ("-c", "1024", "-np", "1", "-ngl", "2"), 0.25),
    ("gqa-nkvo", "llama", {}, "0", ("-c", "1024", "-np", "1", "-nkvo"), 0.25),
    ("gqa-fa-off", "llama", {}, "0", ("-c", "1024", "-np", "1", "-fa", "off"), 0.15),
    ("gqa-q8-ub128", "llama", {}, "0", ("-c", "2048", "-np", "2", "-ctk", "q8_0", "-ctv", "q8_0", "-ub", "128"), 0.15),
    ("headlen", "qwen3", {}, "0", ("-c", "2048", "-np", "1"), 0.15),
    ("swa", "gemma3", {}, "0", ("-c", "2048", "-np", "1"), 0.15),
    ("mla-moe", "deepseek2", {}, "0", ("-c", "1024", "-np", "1"), 0.15),
    ("hybrid", "lfm2", {}, "0", ("-c", "1024", "-np", "1"), 0.15),
    ("moe-ot", "qwen3moe", {}, "0", ("-c", "1024", "-np", "1", "-ot", r"blk\.[01]\.ffn_.*=CPU"), 0.25),
    ("moe-cmoe", "qwen3moe", {}, "0", ("-c", "1024", "-np", "1", "-cmoe"), 0.25),
    ("moe-ncmoe", "qwen3moe", {}, "0", ("-c", "1024", "-np", "1", "-ncmoe", "2"), 0.25),
    ("two-by-free-memory", "llama", {}, "0,0", ("-c", "1024", "-np", "1"), 0.25),
    ("two-ts", "llama", {}, "0,0", ("-c", "1024", "-np", "1", "-ts", "3,1"), 0.25),
    ("two-sm-none-mg1", "llama", {}, "0,0", ("-c", "1024", "-np", "1", "-sm", "none", "-mg", "1"), 0.15),
    ("fit-shrinks-context", "llama", BIG, "0", ("-fitt", "1900"), 0.15),
    ("fit-moves-layers", "llama", BIG, "0", ("-fitt", "1900", "-c", "16384", "-np", "1"), 0.25),
    ("fit-two-devices", "llama", BIG, "0,0", ("-fitt", "1950", "-c", "16384", "-np", "1"), 0.25),
    ("fit-moe-experts", "qwen3moe", BIG_MOE, "0", ("-fitt", "2030", "-c", "8192", "-np", "1"), 0.25),
    ("fit-off", "llama", BIG, "0", ("-fit", "off", "-c", "8192", "-np", "1"), 0.15),
]


def _devices(devices: str) -> tuple[str, ...]:
    return tuple(f"Vulkan{i}" for i in range(len(devices.split(","))))


def _plan(path, args, devices):
    names = _devices(devices)
    config = parse_command_line(["llama-server", "-m", str(path), *args])
    return plan_memory(read_model(str(path)), config, gpu_names=names,
                       device_free=dict.fromkeys(names, LAVAPIPE_MIB * MiB))  # fmt: skip


@pytest.mark.parametrize(("kind", "overrides", "devices", "args", "tolerance"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])  # fmt: skip
def test_plan_matches_the_vulkan_server_per_device(
    vulkan_server, tiny_model, kind, overrides, devices, args, tolerance
):
    path = tiny_model(kind, **overrides)
    log = parse_load_log(vulkan_server(path, *args, devices=devices).log_text())
    plan = _plan(path, args, devices)
    assert plan.ok, plan.errors
    assert log.n_ctx == plan.n_ctx  # the context --fit (or -c) gave, exactly
    logged = log.by_device  # a device the log never names holds nothing
    for row in plan.devices:
        got = logged.get(row.name, DeviceBuffers())
        assert row.weights_bytes / MiB == pytest.approx(got.model_mib, abs=LOG_RESOLUTION_MIB), row.name
        assert row.kv_bytes / MiB == pytest.approx(got.kv_mib, abs=LOG_RESOLUTION_MIB), row.name
        assert row.recurrent_bytes / MiB == pytest.approx(got.rs_mib, abs=LOG_RESOLUTION_MIB), row.name
        if got.compute_mib >= 0.5:
            assert row.compute_bytes / MiB == pytest.approx(got.compute_mib, rel=tolerance), row.name
    planned = {row.name for row in plan.devices if row.weights_bytes >= 0.01 * MiB or row.kv_bytes}
    assert planned == {name for name, b in logged.items() if b.model_mib or b.kv_mib}
    if plan.placement and plan.placement.n_gpu_layers is not None and log.offloaded_layers is not None:
        assert plan.placement.n_gpu_layers == log.offloaded_layers


def test_fit_reports_the_layers_it_moved_in_the_users_words(vulkan_server, tiny_model):
    path = tiny_model("llama", **BIG)
    args = ("-fitt", "1900", "-c", "16384", "-np", "1")
    log = parse_load_log(vulkan_server(path, *args, devices="0").log_text())
    plan = _plan(path, args, "0")
    assert plan.placement is not None and plan.placement.fit == "layers"
    on_gpu = dict(plan.placement.layers)["Vulkan0"]
    assert on_gpu == log.offloaded_layers
    assert f"{on_gpu} layers on Vulkan0" in plan.placement.summary
    assert "-c 16384" in plan.placement.summary
    # the pinned placement reproduces the server without --fit
    pinned = dict(plan.placement.pinned)
    assert pinned["n_gpu_layers"] == log.offloaded_layers
