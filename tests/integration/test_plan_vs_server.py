"""``kvwall plan`` against the real llama-server: the KV cache to the logged 0.01 MiB, the
weights to 0.1 %, the compute buffers to 15 %, and the same refusals.

Each case starts llama-server (``-lv 4``, so it logs its buffers) on a tiny generated model
of one architecture (plain GQA, explicit key/value length, SWA, MLA, recurrent, hybrid,
MoE), parses the log with ``oracles.llamalog`` and compares it with
``plan_memory`` for the same command line. ``--fit`` is modelled as on this CPU-only
machine: llama.cpp compares against the host's total RAM.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import psutil
import pytest
from kvwall.budget.cmdline.parse import parse_command_line
from kvwall.budget.config import ConfigError
from kvwall.budget.memory import plan_memory
from kvwall.monitors.gguf import read_model
from oracles.llamalog import parse_load_log

MiB = 1 << 20
LOG_RESOLUTION_MIB = 0.005  # llama.cpp prints MiB with two decimals

# (id, kind, model overrides, llama-server args)
STARTS = [
    ("gqa-defaults", "llama", {}, ()),  # -np auto (4 unified), -c unset -> --fit, -fa auto
    ("gqa-pad-split-np3", "llama", {}, ("-c", "1000", "-np", "3")),  # 1000/3 -> 512 per slot
    ("gqa-split-np2-fa-off", "llama", {}, ("-c", "5000", "-np", "2", "-fa", "off")),
    ("gqa-q8-ub128", "llama", {}, ("-c", "3000", "-np", "1", "-ctk", "q8_0", "-ctv", "q8_0", "-ub", "128")),
    ("gqa-q4_0", "llama", {}, ("-c", "2048", "-ctk", "q4_0", "-ctv", "q4_0")),
    ("gqa-q5_1-np2", "llama", {}, ("-c", "2048", "-np", "2", "-ctk", "q5_1", "-ctv", "q5_1")),
    ("gqa-bf16-f32", "llama", {}, ("-c", "2048", "-ctk", "bf16", "-ctv", "f32", "-fa", "on")),
    ("gqa-qK-fa-off", "llama", {}, ("-c", "2048", "-ctk", "q8_0", "-fa", "off")),
    ("gqa-iq4nl-q4_1", "llama", {}, ("-c", "2048", "-ctk", "iq4_nl", "-ctv", "q4_1")),
    ("gqa-kvu-np2", "llama", {}, ("-c", "3000", "-np", "2", "-kvu")),
    ("gqa-per-slot", "llama", {}, ("--kv-unified-per-slot", "1000")),
    ("gqa-c0-np2", "llama", {}, ("-c", "0", "-np", "2")),
    ("gqa-fit-off-np2", "llama", {}, ("-np", "2", "-fit", "off")),
    ("gqa-wide", "llama", {"n_embd": 256, "n_ff": 768, "n_head": 8, "n_head_kv": 4, "n_vocab": 2048},
     ("-c", "8192", "-np", "1")),
    ("gqa-wide-fa-off", "llama", {"n_embd": 256, "n_ff": 768, "n_head": 8, "n_head_kv": 4, "n_vocab": 2048},
     ("-c", "8192", "-np", "4", "-fa", "off", "-ub", "256")),
    ("headlen-fit-np2", "qwen3", {}, ("-np", "2")),  # explicit key/value length
    ("headlen-np3-fa-off", "qwen3", {}, ("-c", "5000", "-np", "3", "-fa", "off")),
    ("swa-np1", "gemma3", {}, ("-c", "4096", "-np", "1")),
    ("swa-np2-ub128", "gemma3", {}, ("-c", "4096", "-np", "2", "-ub", "128")),
    ("swa-full", "gemma3", {}, ("-c", "4096", "--swa-full")),
    ("swa-fa-off-ub64", "gemma3", {}, ("-c", "4096", "-np", "2", "-fa", "off", "-ub", "64")),
    ("swa-q8", "gemma3", {}, ("-c", "3000", "-ctk", "q8_0", "-ctv", "q8_0")),
    ("mla", "deepseek2", {}, ("-c", "1024", "-np", "1")),
    ("mla-fa-off", "deepseek2", {}, ("-c", "1024", "-np", "1", "-fa", "off")),
    ("mla-q8", "deepseek2", {}, ("-c", "2048", "-ctk", "q8_0", "-ctv", "q8_0")),
    ("recurrent", "mamba", {}, ()),
    ("recurrent-np3", "mamba", {}, ("-np", "3")),
    ("hybrid-np2", "lfm2", {}, ("-c", "2048", "-np", "2")),
    ("hybrid-fa-off", "lfm2", {}, ("-fa", "off")),
    ("moe", "qwen3moe", {}, ("-c", "2048", "-np", "1")),
    # edge cases: a context under one pad step, over the trained context, more slots than cells
    ("gqa-c-under-256", "llama", {}, ("-c", "100")),
    ("gqa-c-over-train", "llama", {}, ("-c", "10000", "-np", "1")),  # slot context capped at 4096
    ("gqa-np8-c512", "llama", {}, ("-c", "512", "-np", "8")),  # 64 per slot -> padded to 256
    ("gqa-ub-over-b", "llama", {}, ("-c", "2048", "-b", "256", "-ub", "1024")),
    ("gqa-ub-over-ctx", "llama", {}, ("-c", "300", "-np", "1", "-ub", "1024")),
    ("gqa-per-slot-np2", "llama", {}, ("-np", "2", "--kv-unified-per-slot", "1000")),
    ("swa-kvu-np8", "gemma3", {}, ("-c", "4096", "-np", "8", "-kvu")),
    ("swa-split-np6", "gemma3", {}, ("-c", "3000", "-np", "6")),
    ("hybrid-q8", "lfm2", {}, ("-c", "2048", "-ctk", "q8_0", "-ctv", "q8_0")),
    ("hybrid-granite-np2", "granitehybrid", {}, ("-c", "2048", "-np", "2")),
    ("recurrent-np4-c2048", "mamba", {}, ("-c", "2048", "-np", "4")),
]

# configurations llama.cpp refuses when it creates the context
REFUSED = [
    ("quantized-v-fa-off", "llama", {}, ("-c", "2048", "-ctv", "q8_0", "-fa", "off"), "quantized V cache requires flash_attn"),
    ("block-size-head", "qwen3", {"head_k": 40, "head_v": 40}, ("-c", "2048", "-ctk", "q8_0", "-ctv", "q8_0"),
     "does not divide n_embd_head_k=40"),
    ("mla-k-ne-v", "deepseek2", {}, ("-c", "1024", "-ctk", "q8_0"), "does not support different K (q8_0) and V (f16)"),
    ("block-size-row-fa-off", "qwen3", {"head_k": 40, "head_v": 40}, ("-c", "2048", "-ctk", "q8_0", "-fa", "off"),
     "multiple of its block size"),
    ("negative-ctx", "llama", {}, ("-c", "-5"), "a negative context size"),  # llama.cpp aborts
    ("batch-zero", "llama", {}, ("-c", "2048", "-b", "0"), "a batch of 0 tokens"),  # llama.cpp aborts
    ("split-tensor-cpu-only", "llama", {}, ("-c", "2048", "-sm", "tensor"), "LLAMA_SPLIT_MODE_TENSOR needs >= 1 devices"),
]

# values llama-server rejects while parsing its arguments
REJECTED_FLAGS = [
    ("np-zero", ("-np", "0")),
    ("bad-cache-type", ("-ctk", "q3_k")),
    ("bad-fa", ("-fa", "sometimes")),
    ("bad-number", ("-c", "lots")),
    ("bad-split-mode", ("-sm", "bogus")),
    ("too-many-splits", ("-ts", ",".join(["1"] * 16))),
]


def _start(llama_server, model, args):
    """(exit code or None if it started, log text)."""
    try:
        server = llama_server(model, *args)
    except Exception as exc:  # conftest.ServerExited: it refused and exited
        if hasattr(exc, "returncode") and hasattr(exc, "log"):
            return exc.returncode, exc.log
        raise
    log = server.log_text()
    server.stop()
    return None, log


def _plan(model_path, args):
    config = parse_command_line(["llama-server", "-m", str(model_path), *args])
    return plan_memory(read_model(str(model_path)), config, free_bytes=psutil.virtual_memory().total)


def _close(pred_bytes: int, logged_mib: float) -> bool:
    return abs(pred_bytes / MiB - logged_mib) <= LOG_RESOLUTION_MIB + 1e-9


def _kv_lines_match(kv_base_bytes: int, kv_swa_bytes: int, log) -> bool:
    """Each ``llama_kv_cache: size =`` line (rounded to 0.01 MiB on its own) matches."""
    swa = sum(c.size_mib for c in log.kv_caches if c.role == "swa")
    base = sum(c.size_mib for c in log.kv_caches if c.role != "swa")
    return _close(kv_base_bytes, base) and _close(kv_swa_bytes, swa)


@pytest.mark.parametrize(("kind", "overrides", "args"), [c[1:] for c in STARTS], ids=[c[0] for c in STARTS])
def test_plan_matches_what_llama_server_allocates(llama_server, tiny_model, kind, overrides, args):
    path = tiny_model(kind, **overrides)
    code, text = _start(llama_server, path, args)
    assert code is None, f"llama-server refused {args}:\n{text[-2000:]}"
    log = parse_load_log(text)
    plan = _plan(path, args)
    assert plan.ok, plan.errors

    # context resolution: -np auto, --fit, padding, per-slot context
    assert (plan.n_ctx, plan.n_ctx_seq, plan.n_seq) == (log.n_ctx, log.n_ctx_seq, log.n_seq_max)
    assert plan.kv_unified == log.kv_unified and plan.n_ctx_slot == log.n_ctx_slot
    assert plan.n_ubatch == log.n_ubatch

    # KV cache: every cache line (iSWA prints a non-SWA and a SWA one) to the printed 0.01 MiB
    swa_lines = [c for c in log.kv_caches if c.role == "swa"]
    assert _kv_lines_match(plan.kv_bytes - plan.kv_swa_bytes, plan.kv_swa_bytes, log)
    if not swa_lines:
        assert _close(plan.kv_k_bytes, log.kv_k_mib) and _close(plan.kv_v_bytes, log.kv_v_mib)
    if swa_lines:
        assert plan.kv_cells_swa == swa_lines[0].cells
    assert plan.kv_layers == sum(c.layers for c in log.kv_caches)
    assert _close(plan.recurrent_bytes, log.recurrent_total_mib)

    # weights within 0.1 % (or the log's resolution for sub-MiB tiny models)
    logged_w = log.model_total_mib
    assert abs(plan.weights_bytes / MiB - logged_w) <= max(0.001 * logged_w, LOG_RESOLUTION_MIB)
    # compute buffers (an estimate) within 15 %
    logged_c = log.compute_total_mib
    assert abs(plan.compute_bytes / MiB - logged_c) <= 0.15 * logged_c, (plan.compute_bytes / MiB, logged_c)
    assert _close(plan.output_bytes, sum(log.output_buffers_mib.values()))


@pytest.mark.parametrize(
    ("kind", "overrides", "args", "reason"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED]
)
def test_plan_refuses_what_llama_server_refuses(llama_server, tiny_model, kind, overrides, args, reason):
    path = tiny_model(kind, **overrides)
    code, text = _start(llama_server, path, args)
    assert code is not None and code != 0, "llama-server started, but kvwall expects a refusal"
    plan = _plan(path, args)
    assert not plan.ok and reason in plan.errors[0]
    log = parse_load_log(text)
    if "GGML_ASSERT" not in text:  # a refusal, not a crash: llama.cpp's words are ours
        assert any(plan.errors[0] in e or reason in e for e in log.errors), log.errors


@pytest.mark.parametrize("args", [c[1] for c in REJECTED_FLAGS], ids=[c[0] for c in REJECTED_FLAGS])
def test_flag_values_rejected_by_both(llama_server, tiny_model, args):
    path = tiny_model("llama")
    code, _text = _start(llama_server, path, args)
    assert code is not None and code != 0
    with pytest.raises(ConfigError) as err:
        parse_command_line(["llama-server", "-m", str(path), *args])
    assert args[0] in str(err.value)


@pytest.mark.parametrize("args", [("--frobnicate",), ("-c", "2048", "stray")], ids=["unknown-flag", "stray-word"])
def test_arguments_llama_server_does_not_know_exit_2_in_plan(llama_server, tiny_model, args):
    path = tiny_model("llama")
    code, text = _start(llama_server, path, args)
    assert code is not None and code != 0 and f"invalid argument: {args[-1]}" in text
    done = subprocess.run(
        [sys.executable, "-m", "kvwall.app", "plan", str(path), *args, "--memory", "1G"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and done.stdout == "" and args[-1] in done.stderr


def test_kvwall_plan_json_matches_the_server(llama_server, tiny_model, tmp_path):
    path = tiny_model("gemma3")
    args = ("-c", "3000", "-np", "2")
    done = subprocess.run(
        [sys.executable, "-m", "kvwall.app", "plan", str(path), *args, "--json", "--memory", "1G"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    obj = json.loads(done.stdout)
    code, text = _start(llama_server, path, args)
    assert code is None
    log = parse_load_log(text)
    assert (obj["config"]["n_ctx"], obj["config"]["n_ctx_seq"]) == (log.n_ctx, log.n_ctx_seq)
    budget = obj["budget"]
    assert _kv_lines_match(budget["kv_bytes"] - budget["kv_swa_bytes"], budget["kv_swa_bytes"], log)
    # the what-if command for q8_0 starts a server whose KV is what the row says
    row = next(r for r in obj["what_if"] if r["label"] == "q8_0 cache")
    q8_args = row["command"].split()[3:]  # after "llama-server -m PATH"
    code, text = _start(llama_server, path, q8_args)
    assert code is None
    q8 = parse_load_log(text)
    assert {c.type_k for c in q8.kv_caches} == {c.type_v for c in q8.kv_caches} == {"q8_0"}
    assert abs(row["kv_bytes"] / MiB - q8.kv_total_mib) <= 2 * LOG_RESOLUTION_MIB  # two lines


def _plan_json(path, *args):
    done = subprocess.run(
        [sys.executable, "-m", "kvwall.app", "plan", str(path), *args, "--json", "--memory", "1G"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize(
    ("kind", "args", "label"),
    [
        ("llama", ("-c", "2048"), "2 slots"),  # unified pool kept with -np 2 -kvu
        ("llama", ("-c", "3000", "-np", "4"), "q4_0 cache, 1 slot"),  # split slots keep their context
        ("gemma3", ("-c", "2048", "-np", "2", "-fa", "off"), "q8_0 cache, 1 slot"),  # SWA; turns -fa on
        ("lfm2", ("-c", "1024", "-np", "2"), "q8_0 cache"),  # hybrid: KV + recurrent state
    ],
)
def test_what_if_commands_start_servers_with_the_promised_kv(llama_server, tiny_model, kind, args, label):
    path = tiny_model(kind)
    obj = _plan_json(path, *args)
    row = next(r for r in obj["what_if"] if r["label"].startswith(label))
    assert not row["refused"]
    argv = shlex.split(row["command"])
    assert argv[:3] == ["llama-server", "-m", str(path)]
    code, text = _start(llama_server, path, argv[3:])
    assert code is None, f"llama-server refused the what-if command {row['command']}:\n{text[-2000:]}"
    log = parse_load_log(text)
    assert (log.n_ctx, log.n_seq_max) == (row["n_ctx"], row["n_seq"])
    assert log.n_ctx_slot == row["n_ctx_slot"]
    assert {c.type_k for c in log.kv_caches} == {row["cache_type_k"]}
    # each cache line is rounded to 0.01 MiB on its own
    assert abs(row["kv_bytes"] / MiB - log.kv_total_mib) <= len(log.kv_caches) * LOG_RESOLUTION_MIB


def test_what_if_refuses_a_cache_type_the_head_size_forbids_like_the_server(llama_server, tiny_model):
    path = tiny_model("qwen3", head_k=40, head_v=40)  # 40 is not a multiple of q8_0's 32-value block
    obj = _plan_json(path, "-c", "2048")
    q8 = [r for r in obj["what_if"] if r["cache_type_k"] == "q8_0"]
    assert len(q8) == 1 and q8[0]["refused"] and "n_embd_head_k=40" in q8[0]["error"]
    assert q8[0]["max_ctx"] == 0 and q8[0]["kv_bytes"] is None
    code, text = _start(llama_server, path, ("-c", "2048", "-ctk", "q8_0", "-ctv", "q8_0"))
    assert code is not None and code != 0, "llama-server started a configuration plan refused"
    assert any("n_embd_head_k=40" in e for e in parse_load_log(text).errors)
