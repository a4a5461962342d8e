"""The llama-server log parser on logs recorded from the real server (tests/fixtures/logs,
re-recorded by tests/fixtures/logs/record.py: the CPU build, and a Vulkan build on one and
two lavapipe devices) and on lines built from llama.cpp's own printf formats for what
those builds never print (CUDA buffers, older spellings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles.llamalog import HOST, LoadLog, buffer_device, parse_load_log, strip_line

LOGS = Path(__file__).resolve().parents[1] / "fixtures" / "logs"
INDEX = json.loads((LOGS / "index.json").read_text())


def load(name: str) -> LoadLog:
    return parse_load_log((LOGS / f"{name}.log").read_text(encoding="utf-8"))


def arg(name: str, flag: str) -> str | None:
    args = INDEX[name]["args"]
    return args[args.index(flag) + 1] if flag in args else None


def device_names(name: str) -> list[str]:
    """The devices GGML_VK_VISIBLE_DEVICES gave the recorded server ([] on the CPU build)."""
    visible = INDEX[name].get("devices")
    return [f"Vulkan{i}" for i in range(len(visible.split(",")))] if visible else []


VULKAN = sorted(n for n in INDEX if INDEX[n].get("backend") == "vulkan")


# ---------------------------------------------------------------- every recorded log


@pytest.mark.parametrize("name", sorted(INDEX))
def test_started_servers_parse_as_loaded_and_refusals_as_refused(name):
    log = load(name)
    started = INDEX[name]["started"]
    assert log.loaded is started
    assert log.refused is (not started)
    if started:
        assert log.refusal_reason is None
        assert log.errors == ()
        assert log.n_ctx is not None and log.n_ctx_seq is not None
        assert log.model_total_mib > 0
        assert log.compute_total_mib > 0
        assert log.kv_caches or log.recurrent
    else:
        assert log.refusal_reason is not None
        assert log.kv_caches == () and log.compute_buffers_mib == {}
    if INDEX[name]["served"] and INDEX[name]["exit_code"] == 0:
        # the exit table of a clean SIGTERM shutdown is there: a row per device, then Host
        rows = [row.name.split(" (")[0] for row in log.memory_breakdown]
        assert rows == [*device_names(name), "Host"]


@pytest.mark.parametrize("name", sorted(n for n in INDEX if INDEX[n]["started"]))
def test_command_line_reaches_the_parsed_context(name):
    log = load(name)
    n_par = int(arg(name, "-np")) if arg(name, "-np") else None
    if n_par is not None:
        assert log.n_seq_max == n_par == log.n_slots
    if arg(name, "-ub"):
        assert log.n_ubatch == int(arg(name, "-ub"))
    if arg(name, "-c") not in (None, "0") and n_par and "-kvu" not in INDEX[name]["args"]:
        # per-slot context: the requested total split over the slots, padded up to 256
        assert log.n_ctx_seq == -(-(int(arg(name, "-c")) // n_par) // 256) * 256
        assert log.n_ctx == log.n_ctx_seq * n_par
    assert log.n_ctx_slot == log.n_ctx_seq


@pytest.mark.parametrize("name", sorted(n for n in INDEX if INDEX[n]["started"]))
def test_size_lines_agree_with_buffer_lines(name):
    log = load(name)
    for kv in log.kv_caches:
        assert kv.size_mib == pytest.approx(kv.k_mib + kv.v_mib, abs=0.011)
    # the KV/RS buffers hold exactly what the size lines announce (0.01 MiB rounding)
    assert sum(log.kv_buffers_mib.values()) == pytest.approx(
        log.kv_total_mib, abs=0.011 * len(log.kv_caches)
    )
    assert sum(log.rs_buffers_mib.values()) == pytest.approx(log.recurrent_total_mib, abs=0.011)


# ---------------------------------------------------------------- slots, unified, padding


def test_split_slots_get_one_stream_each():
    log = load("llama_np2")
    assert (log.n_ctx, log.n_ctx_seq, log.n_seq_max, log.kv_unified) == (1024, 512, 2, False)
    (kv,) = log.kv_caches
    assert (kv.cells, kv.n_stream, kv.n_seq_max, kv.total_cells) == (512, 2, 2, 1024)


def test_unified_slots_share_one_stream():
    log = load("llama_np4_kvu")
    assert log.kv_unified is True
    (kv,) = log.kv_caches
    assert (kv.cells, kv.n_stream, kv.n_seq_max) == (2048, 1, 4)
    assert log.n_ctx_seq == log.n_ctx == 2048


def test_context_not_divisible_by_slots_is_padded_and_warned():
    log = load("llama_np3_pad")
    assert log.n_ctx_seq == 512 and log.n_ctx == 3 * 512
    assert any("n_ctx is not divisible by n_seq_max" in w for w in log.warnings)


def test_c0_means_the_training_context():
    log = load("qwen3_c0")
    assert log.n_ctx == log.n_ctx_train == INDEX["qwen3_c0"]["overrides"]["n_ctx_train"]


def test_unified_context_is_padded_to_256():
    log = load("qwen3_fa_on_np2_kvu")
    assert log.n_ctx == 3072 and log.kv_caches[0].cells == 3072  # -c 3000
    assert (log.flash_attn, log.flash_attn_resolved) == ("enabled", True)


@pytest.mark.parametrize(
    ("cache_type", "bytes_per_32"),
    [
        ("f32", 128),
        ("bf16", 64),
        ("q4_0", 18),
        ("q4_1", 20),
        ("iq4_nl", 18),
        ("q5_0", 22),
        ("q5_1", 24),
    ],
)
def test_every_cache_type_prints_its_own_size(cache_type, bytes_per_32):
    f16 = load("qwen3_np1").kv_caches[0]
    (kv,) = load(f"qwen3_{cache_type}").kv_caches
    assert (kv.type_k, kv.type_v) == (cache_type, cache_type)
    assert kv.k_mib == pytest.approx(f16.k_mib * bytes_per_32 / 64, abs=0.006)


def test_recurrent_state_ignores_the_cache_type():
    assert load("mamba_ctk_q8").recurrent == load("mamba_np1").recurrent


def test_default_context_is_the_training_context_with_four_unified_slots():
    log = load("llama_default_ctx")
    assert log.n_ctx_train == INDEX["llama_default_ctx"]["overrides"]["n_ctx_train"]
    assert log.n_ctx == log.n_ctx_train and log.kv_unified is True and log.n_slots == 4


# ---------------------------------------------------------------- flash attention, cache types


def test_fa_auto_is_resolved_from_resolve_fused_ops():
    log = load("llama_np1")
    assert (log.flash_attn, log.flash_attn_resolved) == ("auto", True)


def test_fa_off_is_disabled_and_costs_compute():
    off, on = load("llama_fa_off"), load("llama_np1")
    assert (off.flash_attn, off.flash_attn_resolved) == ("disabled", False)
    assert off.compute_total_mib > on.compute_total_mib


def test_quantized_v_turns_fa_auto_into_enabled_and_shrinks_kv():
    q8, f16 = load("llama_q8_0"), load("llama_np1")
    assert (q8.flash_attn, q8.flash_attn_resolved) == ("enabled", True)
    (kv,) = q8.kv_caches
    assert (kv.type_k, kv.type_v) == ("q8_0", "q8_0")
    # q8_0 stores 34 bytes per 32 values instead of 64
    assert kv.k_mib == pytest.approx(f16.kv_k_mib * 34 / 64, abs=0.01)


def test_quantized_k_alone_keeps_f16_v():
    (kv,) = load("llama_q4_0_k").kv_caches
    assert (kv.type_k, kv.type_v) == ("q4_0", "f16")
    assert kv.k_mib < kv.v_mib


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("llama_qv_fa_off", "quantized V cache requires flash_attn to be enabled"),
        ("llama_bad_type", 'error while handling argument "-ctk": Unsupported cache type: q3_k'),
        (
            "qwen3_head40_q8",
            "K cache type q8_0 with block size 32 does not divide n_embd_head_k=40",
        ),
        ("deepseek2_kv_diff", "model does not support different K (q8_0) and V (f16) cache types"),
    ],
)
def test_refusals_carry_llama_cpp_reason(name, reason):
    log = load(name)
    assert log.refused
    assert reason in log.refusal_reason
    assert log.n_ctx is None and log.kv_total_mib == 0


# ---------------------------------------------------------------- architectures


def test_iswa_prints_a_full_and_a_sliding_cache():
    log = load("gemma3_np1")
    full, swa = log.kv_caches
    assert (full.role, swa.role) == ("non-swa", "swa")
    assert full.announced_cells == full.cells == 1024
    assert swa.announced_cells == swa.cells < full.cells
    assert log.kv_total_mib == pytest.approx(full.size_mib + swa.size_mib)


def test_swa_full_sizes_the_sliding_cache_like_the_full_one():
    full, swa = load("gemma3_swa_full").kv_caches
    assert swa.cells == full.cells
    assert any("using full-size SWA cache" in w for w in load("gemma3_swa_full").warnings)


def test_mla_caches_k_only_with_and_without_fa():
    for name in ("deepseek2_np1", "deepseek2_fa_off", "deepseek2_q8"):
        (kv,) = load(name).kv_caches
        assert kv.v_mib == 0.0 and kv.k_mib > 0


def test_recurrent_model_has_state_and_no_kv():
    log = load("mamba_np3")
    assert log.kv_caches == ()
    (rs,) = log.recurrent
    assert (rs.cells, rs.n_seq, rs.type_r, rs.type_s) == (3, 3, "f32", "f32")
    assert log.recurrent_total_mib == rs.size_mib > 0


def test_hybrid_model_has_kv_and_recurrent_state():
    log = load("lfm2_np2")
    assert len(log.kv_caches) == 1 and len(log.recurrent) == 1
    assert log.recurrent[0].cells == 2


def test_draft_model_is_an_extra_load_not_the_served_one():
    log = load("qwen3_draft")
    assert log.model_path == "model.gguf"
    (draft,) = log.extra_loads
    assert draft.model_path == "draft.gguf"
    assert log.n_loads == 2
    assert draft.kv_total_mib < log.kv_total_mib
    assert log.n_slots == 1 and draft.n_slots is None


def test_split_model_sums_its_mapped_buffers():
    log = load("llama_split")
    assert log.model_path == "model-00001-of-00002.gguf"
    assert log.model_buffers_mib["CPU_Mapped"] == pytest.approx(
        load("llama_np1").model_total_mib, abs=0.011
    )


# ---------------------------------------------------------------- lines a CPU build never prints

GPU_LOG = """\
0.00.100.000 I llama_model_loader: loaded meta data with 40 key-value pairs and 291 tensors from /m/Qwen3-8B-Q4_K_M.gguf (version GGUF V3 (latest))
0.00.200.000 I load_tensors: offloading output layer to GPU
0.00.200.001 I load_tensors: offloading 36 repeating layers to GPU
0.00.200.002 I load_tensors: offloaded 37/37 layers to GPU
0.00.200.003 I load_tensors:        CUDA0 model buffer size =  4455.35 MiB
0.00.200.004 I load_tensors:    CUDA_Host model buffer size =   333.84 MiB
0.00.300.000 I llama_context: n_seq_max             = 4
0.00.300.001 I llama_context: n_ctx                 = 40960
0.00.300.002 I llama_context: n_ctx_seq             = 40960
0.00.300.003 I llama_context: flash_attn            = auto
0.00.300.004 I llama_context: kv_unified            = true
0.00.300.005 I llama_context:  CUDA_Host  output buffer size =     2.32 MiB
0.00.300.006 I llama_kv_cache:      CUDA0 KV buffer size =  5760.00 MiB
0.00.300.007 I llama_kv_cache: size = 5760.00 MiB ( 40960 cells,  36 layers,  4/1 seqs), K (f16): 2880.00 MiB, V (f16): 2880.00 MiB
0.00.300.008 W resolve_fused_ops: layer 0 is assigned to device CUDA0 but Flash Attention is assigned to device CPU (usually due to missing support)
0.00.300.009 W resolve_fused_ops: Flash Attention not supported, set to disabled
0.00.300.010 I sched_reserve:      CUDA0 compute buffer size =   304.00 MiB
0.00.300.011 I sched_reserve:  CUDA_Host compute buffer size =    88.01 MiB
0.00.400.000 I srv    load_model: initializing, n_slots = 4, n_ctx_slot = 40960, kv_unified = 'true'
0.09.000.000 I common_memory_breakdown_print: | memory breakdown [MiB] | total    free     self   model   context   compute    unaccounted |
0.09.000.001 I common_memory_breakdown_print: |   - CUDA0 (H100 80GB HBM3) | 81079 = 69965 + (10519 = 4455 +    5760 +     304) +         594 |
0.09.000.002 I common_memory_breakdown_print: |   - Host                   |                    424 =   333 +       2 +      88                |
"""


def test_gpu_buffers_offload_and_device_breakdown():
    log = parse_load_log(GPU_LOG)
    assert dict(log.model_buffers_mib) == {"CUDA0": 4455.35, "CUDA_Host": 333.84}
    assert (log.offloaded_layers, log.offloadable_layers) == (37, 37)
    assert dict(log.kv_buffers_mib) == {"CUDA0": 5760.0}
    assert dict(log.compute_buffers_mib) == {"CUDA0": 304.0, "CUDA_Host": 88.01}
    assert dict(log.output_buffers_mib) == {"CUDA_Host": 2.32}
    assert log.flash_attn_resolved is False
    device, host = log.memory_breakdown
    assert device.name == "CUDA0 (H100 80GB HBM3)"
    assert (device.total_mib, device.free_mib, device.self_mib, device.unaccounted_mib) == (
        81079,
        69965,
        10519,
        594,
    )
    assert (device.model_mib, device.context_mib, device.compute_mib) == (4455, 5760, 304)
    assert (host.name, host.total_mib, host.self_mib, host.compute_mib) == ("Host", None, 424, 88)


def test_colours_router_prefix_and_jsonl_are_stripped():
    coloured = "\x1b[34m0.00.010.421\x1b[0m \x1b[32mI \x1b[0mllama_kv_cache:        CPU KV buffer size =     0.25 MiB"
    assert strip_line(coloured) == ("I", "llama_kv_cache:        CPU KV buffer size =     0.25 MiB")
    assert strip_line("[8081] 0.00.018.193 W srv    load_model: x") == ("W", "load_model: x")
    jsonl = json.dumps(
        {"type": "log", "time": 1, "level": "error", "msg": "llama_init_from_model: boom\n"}
    )
    assert strip_line(jsonl) == ("E", "llama_init_from_model: boom")
    log = parse_load_log([coloured.replace("KV buffer size", "XX"), jsonl])
    assert log.errors == ("llama_init_from_model: boom",)


def test_an_unprefixed_log_parses_too():
    text = "\n".join(
        strip_line(line)[1] for line in (LOGS / "llama_np2.log").read_text().splitlines()
    )
    assert parse_load_log(text).kv_caches == load("llama_np2").kv_caches


@pytest.mark.parametrize(
    "text", ["", "\x00\xff garbage", "llama_kv_cache: size = lots", "| a | b |"]
)
def test_garbage_gives_an_empty_log(text):
    log = parse_load_log(text)
    assert log.n_ctx is None and log.kv_caches == () and not log.loaded and not log.refused


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=120), max_size=30))
def test_never_raises(lines):
    parse_load_log(lines)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=2000), st.data())
def test_truncated_logs_never_raise(cut, data):
    text = (
        LOGS / data.draw(st.sampled_from(sorted(p.name for p in LOGS.glob("*.log"))))
    ).read_text()
    parse_load_log(text[: cut * 8])


def test_jsonl_log_gives_the_same_figures_and_the_breakdown_event():
    lines = []
    for raw in GPU_LOG.splitlines():
        level, msg = strip_line(raw)
        if "memory breakdown" in msg or "|   - " in msg:
            continue
        lvl = {"I": "info", "W": "warn", "E": "error"}[level]
        lines.append(
            json.dumps(
                {"type": "log", "time": 0, "level": lvl, "msg": msg + "\n"}, separators=(",", ":")
            )
        )
    rows = [
        {
            "kind": "device",
            "name": "CUDA0",
            "description": "H100 80GB HBM3",
            "total": 81079,
            "free": 69965,
            "self": 10519,
            "model": 4455,
            "context": 5760,
            "compute": 304,
            "unaccounted": 594,
        },
        {"kind": "host", "name": "Host", "self": 424, "model": 333, "context": 2, "compute": 88},
    ]
    lines.append(
        json.dumps({"type": "fit_memory_breakdown", "data": {"unit": "MiB", "rows": rows}})
    )
    assert parse_load_log(lines) == parse_load_log(GPU_LOG)


def test_older_builds_spellings_are_accepted():
    old = """\
llama_model_loader: loaded meta data with 30 key-value pairs and 291 tensors from m.gguf (version GGUF V3 (latest))
llama_context: n_ctx_per_seq = 8192
llama_kv_cache_unified:        CPU KV buffer size =  1024.00 MiB
llama_kv_cache_unified: size = 1024.00 MiB (  8192 cells,  32 layers,  1/ 1 seqs), K (f16):  512.00 MiB, V (f16):  512.00 MiB
llama_memory_breakdown_print: | memory breakdown [MiB] | total   free    self   model   context   compute    unaccounted |
llama_memory_breakdown_print: |   - Host               |                 1500 =   400 +    1024 +      76                |
"""
    log = parse_load_log(old)
    assert log.n_ctx_seq == 8192
    assert log.kv_caches[0].cells == 8192 and log.kv_total_mib == 1024.0
    assert log.memory_breakdown[0].context_mib == 1024


# ---------------------------------------------------------------- Vulkan logs (b11434, lavapipe)


@pytest.mark.parametrize("name", VULKAN)
def test_vulkan_logs_name_the_visible_devices_and_key_buffers_by_them(name):
    log = load(name)
    devices = device_names(name)
    assert [d.name for d in log.devices] == devices
    assert all(d.free_mib > 0 and d.description for d in log.devices)
    assert {buffer_device(b) for b in log.buffer_names} <= {*devices, HOST}
    assert (log.offloaded_layers is not None) and log.offloadable_layers is not None
    assert list(log.by_device)[-1] == HOST and set(log.by_device) <= {*devices, HOST}
    assert log.fit.ran and log.fit.seconds is not None


@pytest.mark.parametrize("name", [n for n in VULKAN if INDEX[n]["exit_code"] == 0])
def test_buffers_per_device_add_up_to_the_exit_breakdown(name):
    """Two prints of the same memory: the buffer lines grouped by device, and llama.cpp's
    own table (integer MiB of summed bytes, so within 1 MiB of the summed 0.01 MiB lines)."""
    log = load(name)
    rows = {row.name.split(" (")[0]: row for row in log.memory_breakdown}
    assert set(rows) == set(log.by_device) | set(device_names(name))
    for device, row in rows.items():
        bufs = log.by_device.get(device)
        if bufs is None:  # a device holding nothing
            assert row.self_mib == 0
            continue
        assert abs(row.model_mib - bufs.model_mib) <= 1, device
        assert abs(row.context_mib - bufs.context_mib) <= 1, device
        assert abs(row.compute_mib - bufs.compute_mib) <= 1, device


def test_all_layers_on_one_device_keep_token_embd_mapped_on_the_host():
    log = load("vulkan_llama_1dev")
    n_layer = INDEX["vulkan_llama_1dev"]["overrides"]["n_layer"]
    assert (log.offloaded_layers, log.offloadable_layers) == (n_layer + 1, n_layer + 1)
    assert set(log.model_buffers_mib) == {"CPU_Mapped", "Vulkan0"}
    assert set(log.kv_buffers_mib) == {"Vulkan0"}
    assert set(log.compute_buffers_mib) == {"Vulkan0", "Vulkan_Host"}
    assert log.output_buffer_type == "Vulkan_Host"


def test_ngl_0_keeps_weights_and_kv_on_the_host_but_computes_on_the_device():
    log = load("vulkan_llama_ngl0")
    assert log.offloaded_layers == 0
    assert set(log.model_buffers_mib) == {"CPU_Mapped"} and set(log.kv_buffers_mib) == {"CPU"}
    assert log.output_buffer_type == "CPU"
    assert log.compute_buffers_mib["Vulkan0"] > 0  # large batches still run on the device


def test_recurrent_state_lands_on_the_device():
    log = load("vulkan_mamba_1dev")
    assert set(log.rs_buffers_mib) == {"Vulkan0"} and log.kv_buffers_mib == {}
    assert log.rs_buffers_mib["Vulkan0"] == pytest.approx(log.recurrent_total_mib, abs=0.011)


@pytest.mark.parametrize("name", ["vulkan_llama_2dev", "vulkan_gemma3_2dev"])
def test_two_devices_each_hold_weights_kv_and_compute(name):
    log = load(name)
    for device in ("Vulkan0", "Vulkan1"):
        held = log.by_device[device]
        assert held.model_mib > 0 and held.kv_mib > 0 and held.compute_mib > 0
    assert log.fit.no_changes and [p.name for p in log.fit.initial] == ["Vulkan0", "Vulkan1"]
    assert sum(log.kv_buffers_mib.values()) == pytest.approx(
        log.kv_total_mib, abs=0.011 * len(log.kv_caches)
    )


def test_lv5_layer_lines_and_fit_trial_loads_are_not_the_served_model():
    log = load("vulkan_llama_2dev_lv5")
    text = (LOGS / "vulkan_llama_2dev_lv5.log").read_text()
    assert text.count("llama_model_loader: loaded meta data") == 2  # a --fit trial, then the load
    assert log.n_loads == 1 and log.extra_loads == ()
    n_layer = INDEX["vulkan_llama_2dev_lv5"]["overrides"]["n_layer"]
    assert sorted(log.layer_devices) == list(range(n_layer + 1))  # n_layer: the output layer
    # each device holds the KV cache of the repeating layers assigned to it
    (kv,) = log.kv_caches
    per_layer = kv.size_mib / kv.layers
    for device in ("Vulkan0", "Vulkan1"):
        n_kv = sum(1 for il, d in log.layer_devices.items() if d == device and il < n_layer)
        assert log.kv_buffers_mib[device] == pytest.approx(n_kv * per_layer, abs=0.011)


# ---------------------------------------------------------------- what --fit decided


def _fitt(name: str) -> int:
    return int(arg(name, "-fitt"))


def _kv_layers_per_device(log: LoadLog) -> dict[str, float]:
    (kv,) = log.kv_caches
    per_layer = kv.size_mib / kv.layers
    return {d: mib / per_layer for d, mib in log.kv_buffers_mib.items()}


def test_squeezed_fit_without_c_shrinks_the_context_then_the_layers():
    name = "vulkan_fit_squeezed"
    log = load(name)
    fit = log.fit
    assert (fit.outcome, fit.no_changes, fit.on_host) == ("success", False, False)
    # the command as given does not fit in what -fitt leaves
    (device,) = log.devices
    assert fit.targets_mib == (device.free_mib - _fitt(name),)
    assert fit.projected_used_mib > fit.targets_mib[0]
    assert fit.deficit_mib == pytest.approx(fit.projected_used_mib - fit.targets_mib[0], abs=1)
    # the training context first, down to the minimum --fit may set, then layers
    assert fit.n_ctx_from == log.n_ctx_train == INDEX[name]["overrides"]["n_ctx_train"]
    assert fit.n_ctx_to == log.n_ctx < fit.n_ctx_from
    assert fit.n_ctx_user is None and not fit.fit_by_context
    assert fit.layers_per_device == {"Vulkan0": log.offloaded_layers}
    assert fit.n_gpu_layers == log.offloaded_layers < log.offloadable_layers
    assert fit.devices[0].used_mib <= fit.targets_mib[0]
    # the layers it kept on the CPU hold their KV cache there (the output layer has none)
    layers = _kv_layers_per_device(log)
    assert layers["Vulkan0"] == pytest.approx(fit.n_gpu_layers - 1, abs=0.01)
    assert layers["CPU"] == pytest.approx(log.offloadable_layers - fit.n_gpu_layers, abs=0.01)


def test_squeezed_fit_with_c_keeps_the_context_and_moves_more_layers():
    log, without_c = load("vulkan_fit_squeezed_c"), load("vulkan_fit_squeezed")
    assert log.fit.n_ctx_user == log.n_ctx == int(arg("vulkan_fit_squeezed_c", "-c"))
    assert log.fit.n_ctx_from is None
    assert log.fit.n_gpu_layers == log.offloaded_layers < without_c.offloaded_layers


def test_squeezed_fit_on_two_devices_fills_the_last_device_first():
    name = "vulkan_fit_squeezed_2dev"
    log = load(name)
    fit = log.fit
    assert [p.name for p in fit.initial] == ["Vulkan0", "Vulkan1"]
    assert {p.target_mib for p in fit.initial} == {_fitt(name)}
    assert fit.targets_mib == tuple(d.free_mib - _fitt(name) for d in log.devices)
    assert [d.name for d in fit.devices] == ["Vulkan0", "Vulkan1"]
    assert fit.n_gpu_layers == log.offloaded_layers
    assert all(d.used_mib <= t for d, t in zip(fit.devices, fit.targets_mib, strict=True))
    # each device's KV cache is that of the layers --fit gave it; Vulkan1, the last,
    # also holds the output layer, which has no KV
    layers = _kv_layers_per_device(log)
    v0, v1 = fit.layers_per_device["Vulkan0"], fit.layers_per_device["Vulkan1"]
    assert (layers["Vulkan0"], layers["Vulkan1"]) == pytest.approx((v0, v1 - 1), abs=0.01)


def test_fit_gives_up_when_ngl_is_set_but_keeps_the_context_it_shrank():
    log = load("vulkan_fit_ngl_set")
    fit = log.fit
    assert fit.outcome == "failure" and "n_gpu_layers already set by user" in fit.message
    assert fit.devices == () and fit.n_gpu_layers is None
    assert log.offloaded_layers == log.offloadable_layers  # -ngl 99 as given
    assert fit.n_ctx_to == log.n_ctx < fit.n_ctx_from  # the context step ran before it gave up
    assert any("failed to fit params" in w for w in log.warnings)


def test_squeezed_moe_fit_moves_experts_to_the_cpu():
    log = load("vulkan_moe_fit_squeezed")
    fit = log.fit
    assert fit.outcome == "success" and fit.dense_only_surplus_mib > 0
    (device,) = fit.devices
    assert 0 < device.n_part <= device.n_layer == log.offloaded_layers
    assert fit.overflow_types.keys() <= {0}
    # the experts it moved are mapped from the file on the host
    assert log.model_buffers_mib["CPU_Mapped"] > log.model_buffers_mib["Vulkan0"]


def test_fit_error_lines_are_an_error_outcome():
    fit = load("llama_qv_fa_off").fit
    assert fit.outcome == "error" and fit.message == "failed to create llama_context from model"


def test_fit_lines_of_older_builds_and_devices_printed_before_the_model():
    old = """llama_model_load_from_file_impl: using device CUDA0 (NVIDIA RTX 4090) - 23500 MiB free
llama_model_loader: loaded meta data with 30 key-value pairs and 291 tensors from m.gguf (version GGUF V3 (latest))
load_tensors: offloaded 20/33 layers to GPU
llama_params_fit_impl:   - CUDA0 (NVIDIA RTX 4090)   : 20 layers,  22000 MiB used,   1500 MiB free
llama_params_fit: successfully fit params to free device memory
"""
    log = parse_load_log(old)
    assert [(d.name, d.description, d.free_mib) for d in log.devices] == [
        ("CUDA0", "NVIDIA RTX 4090", 23500)
    ]
    assert log.fit.outcome == "success" and log.fit.layers_per_device == {"CUDA0": 20}


@pytest.mark.parametrize(
    ("buffer", "memory"),
    [
        ("Vulkan0", "Vulkan0"),
        ("CUDA1", "CUDA1"),
        ("CPU", HOST),
        ("CPU_Mapped", HOST),
        ("CPU_REPACK", HOST),
        ("Vulkan_Host", HOST),
        ("CUDA_Host", HOST),
    ],
)
def test_buffer_names_map_to_the_memory_they_are_in(buffer, memory):
    assert buffer_device(buffer) == memory
